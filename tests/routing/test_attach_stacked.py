"""stack_adapters and attach_stacked: one finiteness check per stack, shared stacks, mismatches."""

from __future__ import annotations

import copy

import pytest
import torch

from seqr.errors import InvalidInputError
from seqr.routing import AdapterFactors, ModuleFactors, attach_routing
from seqr.routing import library as library_module
from seqr.routing.attach import attach_stacked, stack_adapters
from seqr.routing.factors import all_finite

INPUT_IDS = torch.tensor([[5, 9, 17, 3, 44, 8]])
V_PROJ = "model.layers.1.self_attn.v_proj"


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def _with_value(library, adapter_id: str, name: str, value: float) -> dict[str, AdapterFactors]:
    """Return the library's adapters with one entry of ``adapter_id``'s R at ``name`` set to ``value``."""
    adapters = dict(library.adapters)
    module = adapters[adapter_id].modules[name]
    r = module.r.clone()
    r[0, 1] = value
    adapters[adapter_id] = AdapterFactors({**adapters[adapter_id].modules, name: ModuleFactors(q=module.q, r=r)})
    return adapters


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_bad_value_names_adapter_and_module(tiny_llama, library, value: float) -> None:
    adapters = _with_value(library, "silo-2", V_PROJ, value)

    with pytest.raises(InvalidInputError, match=rf"adapter 'silo-2' at '{V_PROJ}' \(R\) contains NaN or Inf"):
        stack_adapters(tiny_llama, library.shared_a, adapters)


def test_one_check_per_stack(tiny_llama, library, monkeypatch) -> None:
    calls: list[tuple[int, ...]] = []

    def counting(tensor: torch.Tensor) -> bool:
        calls.append(tuple(tensor.shape))
        return all_finite(tensor)

    monkeypatch.setattr(library_module, "all_finite", counting)
    stacks = stack_adapters(tiny_llama, library.shared_a, library.adapters)

    assert len(calls) == 2 * len(stacks)
    assert all(shape[0] == len(library.adapters) for shape in calls)


def test_unchecked_stacking_skips_values(tiny_llama, library, monkeypatch) -> None:
    monkeypatch.setattr(library_module, "all_finite", lambda tensor: pytest.fail("values were checked"))

    stacks = stack_adapters(tiny_llama, library.shared_a, library.adapters, check_values=False)

    assert set(stacks) == set(library.shared_a)


def test_unchecked_stacking_still_checks_shapes(tiny_llama, library) -> None:
    adapters = dict(library.adapters)
    module = adapters["silo-0"].modules[V_PROJ]
    adapters["silo-0"] = AdapterFactors({
        **adapters["silo-0"].modules, V_PROJ: ModuleFactors.from_b(torch.randn(module.out_features, 3)),
    })

    with pytest.raises(InvalidInputError, match="has rank 3"):
        stack_adapters(tiny_llama, library.shared_a, adapters, check_values=False)


def test_stacked_q_keeps_transposed_layout(tiny_llama, library) -> None:
    stacks = stack_adapters(tiny_llama, library.shared_a, library.adapters)

    for stack in stacks.values():
        assert stack.q.transpose(1, 2).is_contiguous()


def test_shared_stacks_match_attach_routing(tiny_llama, library) -> None:
    stacks = stack_adapters(tiny_llama, library.shared_a, library.adapters)
    other = copy.deepcopy(tiny_llama)
    ids = tuple(library.adapters)

    with attach_routing(copy.deepcopy(tiny_llama), library.shared_a, library.adapters, scaling=library.scaling) as routed:
        expected = _logits(routed.model)
    first = attach_stacked(tiny_llama, stacks, ids, scaling=library.scaling)
    second = attach_stacked(other, stacks, ids, scaling=library.scaling)

    assert torch.equal(_logits(tiny_llama), expected)
    assert torch.equal(_logits(other), expected)
    assert first.layers[V_PROJ].router.factors.q is second.layers[V_PROJ].router.factors.q
    first.detach()
    assert torch.equal(_logits(other), expected)


def test_stack_for_other_candidates_rejected(tiny_llama, library) -> None:
    stacks = stack_adapters(tiny_llama, library.shared_a, library.adapters)

    with pytest.raises(InvalidInputError, match="contain 4 adapters"):
        attach_stacked(tiny_llama, stacks, ("silo-0", "silo-1"), scaling=library.scaling)
    assert not tiny_llama._forward_hooks


def test_all_finite_cases() -> None:
    assert all_finite(torch.tensor([1.0, -2.0]))
    assert all_finite(torch.full((3,), 3e38))  # the sum overflows, the values do not
    assert all_finite(torch.zeros(0))
    assert all_finite(torch.tensor([1, 2]))
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), float("-inf")]))

"""attach_routing on a tiny Llama: restoring, overrides, per-token routing and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seqr.errors import InvalidInputError, ModelError
from seqr.routing import AdapterFactors, ModuleFactors, RoutedLinear, RoutingMethod, attach_routing, make_router

INPUT_IDS = torch.tensor([[5, 9, 17, 3, 44, 8], [1, 2, 3, 4, 5, 6]])


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def test_detach_restores_model_bit_for_bit(tiny_llama, library) -> None:
    before_modules = {name: tiny_llama.get_submodule(name) for name in library.shared_a}
    before_state = {key: value.clone() for key, value in tiny_llama.state_dict().items()}
    before_logits = _logits(tiny_llama)

    routed = attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling)
    routed_logits = _logits(tiny_llama)
    routed.detach()

    assert not torch.equal(routed_logits, before_logits)
    for name, module in before_modules.items():
        assert tiny_llama.get_submodule(name) is module
    after_state = tiny_llama.state_dict()
    assert list(after_state) == list(before_state)
    assert all(torch.equal(after_state[key], value) for key, value in before_state.items())
    assert torch.equal(_logits(tiny_llama), before_logits)
    assert not tiny_llama._forward_pre_hooks
    assert not tiny_llama._forward_hooks


def test_context_manager_detaches(tiny_llama, library) -> None:
    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        assert isinstance(tiny_llama.get_submodule(next(iter(library.shared_a))), RoutedLinear)

    assert not routed.attached
    assert not any(isinstance(module, RoutedLinear) for module in tiny_llama.modules())


def test_base_override_equals_base_model(tiny_llama, library) -> None:
    expected = _logits(tiny_llama)

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        with routed.base():
            logits = _logits(tiny_llama)

    assert torch.equal(logits, expected)


def test_forced_adapter_equals_merged_weights(tiny_llama, library) -> None:
    merged = make_merged_copy(tiny_llama, library, "silo-2")

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        with routed.forced("silo-2"):
            logits = _logits(tiny_llama)

    torch.testing.assert_close(logits, _logits(merged), rtol=1e-4, atol=1e-4)


def make_merged_copy(model: nn.Module, library, adapter_id: str) -> nn.Module:
    """Return a copy of ``model`` with W + scaling * B A merged into every adapted module."""
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for name, a in library.shared_a.items():
            merged.get_submodule(name).weight += library.scaling * library.b[adapter_id][name] @ a
    return merged


def test_per_token_layer_output_matches_router(tiny_llama, library) -> None:
    name = "model.layers.1.self_attn.v_proj"
    layer_input = torch.randn(2, 5, tiny_llama.get_submodule(name).in_features)
    base_output = tiny_llama.get_submodule(name)(layer_input)
    b = torch.stack([library.b[adapter_id][name] for adapter_id in library.adapters])
    chosen = make_router("seqr", library.shared_a[name], b).select(layer_input.view(10, -1))

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling):
        output = tiny_llama.get_submodule(name)(layer_input)

    a = library.shared_a[name]
    expected = base_output.view(10, -1) + library.scaling * torch.stack(
        [b[i] @ (a @ layer_input.view(10, -1)[t]) for t, i in enumerate(chosen.tolist())]
    )
    torch.testing.assert_close(output.view(10, -1), expected, rtol=1e-4, atol=1e-5)


def test_capture_records_every_module_and_token(tiny_llama, library) -> None:
    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        with routed.capture(reference_methods=["naive"]) as trace:
            _logits(tiny_llama)

    assert set(trace.modules) == set(library.shared_a)
    for name in trace.modules:
        (record,) = trace.records[name]
        assert record.indices.shape == (2, 6, 1)
        assert record.scores is not None and record.scores.shape == (2, 6, 4)
        assert torch.equal(record.top1, record.scores.argmax(-1))
        naive = record.extra_scores[RoutingMethod.NAIVE]
        torch.testing.assert_close(record.scores, naive, rtol=1e-4, atol=1e-5)
    assert trace.top1_ids(trace.modules[0])[0][0] in library.adapters


def test_capture_of_forced_run_has_no_scores(tiny_llama, library) -> None:
    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        with routed.forced("silo-1"), routed.capture() as trace:
            _logits(tiny_llama)

    name = trace.modules[0]
    assert trace.top1(name).unique().tolist() == [1]
    assert trace.records[name][0].scores is None
    with pytest.raises(InvalidInputError, match="forced adapter"):
        trace.scores(name)


def test_top_k_and_mu_attach_run(tiny_llama, library) -> None:
    for options in ({"method": "seqr", "top_k": 2}, {"method": "mu"}, {"method": "lag", "lag_k": 2}, {"method": "arrow"}):
        with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, **options) as routed:
            with routed.capture() as trace:
                logits = _logits(tiny_llama)
        assert torch.isfinite(logits).all(), options
        assert trace.records[trace.modules[0]][0].indices.shape[-1] == options.get("top_k", 1)


def test_bfloat16_model_routes_with_float32_scores(tiny_llama, library) -> None:
    model = tiny_llama.to(torch.bfloat16)

    with attach_routing(model, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        with routed.capture() as trace:
            logits = _logits(model)

    assert logits.dtype == torch.bfloat16
    assert trace.scores(trace.modules[0]).dtype == torch.float32


def test_unknown_forced_adapter_rejected(tiny_llama, library) -> None:
    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        with pytest.raises(InvalidInputError, match="'silo-9' is not in the candidate set"):
            with routed.forced("silo-9"):
                pass


def _replace_module(library, name: str, factors: ModuleFactors, adapter_id: str = "silo-0") -> dict[str, AdapterFactors]:
    adapters = dict(library.adapters)
    modules = dict(adapters[adapter_id].modules)
    modules[name] = factors
    adapters[adapter_id] = AdapterFactors(modules)
    return adapters


Q_PROJ = "model.layers.0.self_attn.q_proj"
K_PROJ = "model.layers.0.self_attn.k_proj"


def test_missing_module_rejected(tiny_llama, library) -> None:
    shared_a = dict(library.shared_a) | {"model.layers.7.self_attn.q_proj": torch.randn(4, 64)}

    with pytest.raises(ModelError, match="no module named 'model.layers.7"):
        attach_routing(tiny_llama, shared_a, library.adapters, scaling=2.0)


def test_non_linear_module_rejected(tiny_llama, library) -> None:
    shared_a = {"model.layers.0.self_attn": torch.randn(4, 64)}
    adapters = {"silo-0": AdapterFactors({"model.layers.0.self_attn": library.adapters["silo-0"].modules[Q_PROJ]})}

    with pytest.raises(ModelError, match="not an nn.Linear"):
        attach_routing(tiny_llama, shared_a, adapters, scaling=2.0)


def test_wrong_in_features_rejected(tiny_llama, library) -> None:
    shared_a = dict(library.shared_a) | {Q_PROJ: torch.randn(4, 32)}

    with pytest.raises(InvalidInputError, match="n=32 but the module has in_features=64"):
        attach_routing(tiny_llama, shared_a, library.adapters, scaling=2.0)


def test_wrong_out_features_rejected(tiny_llama, library) -> None:
    adapters = _replace_module(library, K_PROJ, ModuleFactors.from_b(torch.randn(64, 4)))  # k_proj has m=32

    with pytest.raises(InvalidInputError, match="'silo-0' at 'model.layers.0.self_attn.k_proj' has m=64"):
        attach_routing(tiny_llama, library.shared_a, adapters, scaling=2.0)


def test_wrong_rank_rejected(tiny_llama, library) -> None:
    adapters = _replace_module(library, Q_PROJ, ModuleFactors.from_b(torch.randn(64, 3)))

    with pytest.raises(InvalidInputError, match="has rank 3"):
        attach_routing(tiny_llama, library.shared_a, adapters, scaling=2.0)


def test_nan_factors_rejected(tiny_llama, library) -> None:
    good = library.adapters["silo-0"].modules[Q_PROJ]
    adapters = _replace_module(library, Q_PROJ, ModuleFactors(q=good.q, r=good.r * float("nan")))

    with pytest.raises(InvalidInputError, match="contains NaN"):
        attach_routing(tiny_llama, library.shared_a, adapters, scaling=2.0)


def test_adapter_without_module_rejected(tiny_llama, library) -> None:
    adapters = dict(library.adapters)
    adapters["silo-0"] = AdapterFactors({k: v for k, v in adapters["silo-0"].modules.items() if k != Q_PROJ})

    with pytest.raises(InvalidInputError, match="'silo-0' has no factors for modules"):
        attach_routing(tiny_llama, library.shared_a, adapters, scaling=2.0)


def test_mixed_calibration_rejected(tiny_llama, library_factory) -> None:
    calibrated = library_factory(tiny_llama, 2, calibrated=True)
    raw = library_factory(tiny_llama, 2, seed=1)
    adapters = {"calibrated": calibrated.adapters["silo-0"], "raw": raw.adapters["silo-1"]}

    with pytest.raises(InvalidInputError, match="no calibration statistics"):
        attach_routing(tiny_llama, calibrated.shared_a, adapters, scaling=2.0)

    with attach_routing(tiny_llama, calibrated.shared_a, adapters, scaling=2.0, use_calibration=False):
        pass


def test_empty_candidate_set_rejected(tiny_llama, library) -> None:
    with pytest.raises(InvalidInputError, match="candidate set is empty"):
        attach_routing(tiny_llama, library.shared_a, {}, scaling=2.0)


def test_second_attach_rejected(tiny_llama, library) -> None:
    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=2.0):
        with pytest.raises(ModelError, match="already routed"):
            attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=2.0)


def test_failed_attach_leaves_model_untouched(tiny_llama, library) -> None:
    shared_a = dict(library.shared_a) | {"model.layers.1.self_attn.o_proj": torch.randn(4, 32)}

    with pytest.raises(InvalidInputError):
        attach_routing(tiny_llama, shared_a, library.adapters, scaling=2.0)

    assert not any(isinstance(module, RoutedLinear) for module in tiny_llama.modules())


def test_calibrated_scores_are_z_scores(tiny_llama, library_factory) -> None:
    library = library_factory(tiny_llama, 3, calibrated=True)
    name = Q_PROJ

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=2.0) as routed:
        with routed.capture() as trace:
            _logits(tiny_llama)
        raw_router = routed.layers[name].router

    mu = torch.tensor([library.adapters[i].modules[name].mu for i in library.adapters])
    assert raw_router.factors.mu is not None
    torch.testing.assert_close(raw_router.factors.mu, mu)
    assert trace.scores(name).min() < 0  # z-scores, not norms


@pytest.mark.parametrize("method", ["seqr", "arrow", "spectr", "lag", "naive", "mu"])
def test_routing_stays_float32_under_autocast(tiny_llama, library, method: str) -> None:
    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, method=method, lag_k=2) as routed:
        with routed.capture() as trace, torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            logits = _logits(tiny_llama)

    assert torch.isfinite(logits).all()
    assert trace.scores(trace.modules[0]).dtype == torch.float32


@pytest.mark.parametrize("method", ["seqr", "arrow", "spectr", "lag", "naive"])
def test_router_ignores_caller_autocast(method: str) -> None:
    generator = torch.Generator().manual_seed(5)
    a, b, x = torch.randn(4, 32, generator=generator), torch.randn(20, 16, 4, generator=generator), torch.randn(9, 32, generator=generator)
    router = make_router(method, a, b, k=3 if method == "lag" else None)
    expected_scores, expected_choice = router.scores(x), router.select(x)

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        scores, choice = router.scores(x), router.select(x)

    assert scores.dtype == torch.float32
    assert torch.equal(scores, expected_scores)
    assert torch.equal(choice, expected_choice)

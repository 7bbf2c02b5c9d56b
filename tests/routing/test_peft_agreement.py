"""Agreement with PEFT (a dev extra): its Arrow layer, and its plain LoRA model for a forced adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seqr.routing import attach_routing, make_router

peft = pytest.importorskip("peft")
from peft.tuners.lora.arrow import ArrowLoraLinearLayer  # noqa: E402
from peft.tuners.lora.config import ArrowConfig  # noqa: E402

N_ADAPTERS, RANK, N, M, TOKENS = 12, 4, 48, 40, 64
SCALING = 2.0


def _library(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return A (r, n), B (N, m, r) with a clear top singular value (so power iteration converges), x (T, n)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(N, RANK, generator=generator)).Q.T.contiguous()
    spectrum = torch.tensor([4.0, 1.0, 0.6, 0.3])
    b = torch.stack(
        [
            torch.linalg.qr(torch.randn(M, RANK, generator=generator)).Q
            @ torch.diag(spectrum * (0.5 + torch.rand(1, generator=generator)))
            @ torch.linalg.qr(torch.randn(RANK, RANK, generator=generator)).Q
            for _ in range(N_ADAPTERS)
        ]
    )
    return a, b, torch.randn(TOKENS, N, generator=generator)


def _peft_arrow(a: torch.Tensor, b: torch.Tensor, top_k: int) -> tuple[ArrowLoraLinearLayer, nn.ModuleDict, nn.ModuleDict]:
    names = [f"task_{i}" for i in range(b.shape[0])]
    lora_a = nn.ModuleDict({name: nn.Linear(N, RANK, bias=False) for name in names})
    lora_b = nn.ModuleDict({name: nn.Linear(RANK, M, bias=False) for name in names})
    with torch.no_grad():
        for i, name in enumerate(names):
            lora_a[name].weight.copy_(a)
            lora_b[name].weight.copy_(b[i])
    config = ArrowConfig(top_k=top_k, rng_seed=0)
    config.task_adapter_names = names
    config.gks_adapter_names = []
    layer = ArrowLoraLinearLayer(in_features=N, arrow_config=config)
    layer.build_prototypes(lora_a, lora_b)
    return layer, lora_a, lora_b


@pytest.mark.parametrize("top_k", [1, 3])
def test_arrow_matches_peft_arrow_layer(top_k: int) -> None:
    a, b, x = _library()
    peft_layer, lora_a, lora_b = _peft_arrow(a, b, top_k)
    scaling = {name: SCALING for name in lora_a}

    with torch.no_grad():
        peft_delta = peft_layer(x, lora_a, lora_b, nn.Identity(), scaling)
        peft_choice = (x @ peft_layer.prototypes.T).abs().argmax(-1)
    router = make_router("arrow", a, b, k=top_k)
    decision = router.route(x)
    ours = SCALING * router.update(x, decision)

    assert torch.equal(decision.indices[:, 0], peft_choice)
    torch.testing.assert_close(ours, peft_delta, rtol=1e-4, atol=1e-4)


def test_forced_adapter_matches_peft_lora(tiny_llama, library) -> None:
    from peft import LoraConfig, get_peft_model

    adapter_id = "silo-1"
    reference = get_peft_model(
        copy.deepcopy(tiny_llama),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0),
    )
    with torch.no_grad():
        for name, a in library.shared_a.items():
            module = reference.base_model.model.get_submodule(name)
            module.lora_A["default"].weight.copy_(a)
            module.lora_B["default"].weight.copy_(library.b[adapter_id][name])
    input_ids = torch.tensor([[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]])

    with torch.no_grad():
        expected = reference(input_ids=input_ids).logits
        with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
            with routed.forced(adapter_id):
                logits = tiny_llama(input_ids=input_ids).logits

    assert reference.peft_config["default"].lora_alpha / reference.peft_config["default"].r == library.scaling
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)

"""Routed layers on the test device ($SEQR_ROUTING_DEVICE, cpu by default): factors follow the model."""

from __future__ import annotations

import pytest
import torch

from seqr.routing import attach_routing


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
def test_generate_on_device(tiny_llama, library, device: torch.device, dtype: torch.dtype) -> None:
    model = tiny_llama.to(device=device, dtype=dtype)
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]], device=device)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], device=device)

    with attach_routing(model, library.shared_a, library.adapters, scaling=library.scaling, granularity="sequence") as routed:
        layer = next(iter(routed.layers.values()))
        with routed.capture() as trace, torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)

    assert layer.router.factors.q.device.type == device.type
    assert out.shape == (2, 8)
    scores = trace.scores(trace.modules[0])
    assert scores.dtype == torch.float32
    assert scores.device.type == device.type
    assert torch.isfinite(scores).all()

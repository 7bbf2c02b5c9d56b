"""Routing inside model.generate: per-sequence choices, left padding and the KV cache."""

from __future__ import annotations

import pytest
import torch

from seqr.routing import Phase, attach_routing
from seqr.routing.router import masked_mean

PROMPTS = [[7, 30, 2], [11, 12, 13, 14, 15], [90, 4, 61, 33]]
PAD = 0


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _generate(model, ids: torch.Tensor, mask: torch.Tensor, **options) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=PAD, **options
        )


def test_sequence_choice_is_kept_for_generated_tokens(tiny_llama, library) -> None:
    ids, mask = _left_padded(PROMPTS)

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, granularity="sequence") as routed:
        with routed.capture() as trace:
            _generate(tiny_llama, ids, mask)

    for name in trace.modules:
        records = trace.records[name]
        assert [r.phase for r in records] == [Phase.PREFILL] + [Phase.DECODE] * 3
        prefill = records[0]
        assert prefill.sequence_scores is not None and prefill.scores is not None
        expected = masked_mean(prefill.scores, mask.float()).argmax(-1)
        torch.testing.assert_close(prefill.sequence_scores, masked_mean(prefill.scores, mask.float()))
        chosen = trace.top1(name)  # (3, 3 + 4 - 1 + padding)
        assert torch.equal(chosen, expected.unsqueeze(-1).expand_as(chosen))


def test_left_padding_does_not_change_choice(tiny_llama, library) -> None:
    ids, mask = _left_padded(PROMPTS)
    other_padding = ids.masked_fill(mask == 0, 77)

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, granularity="sequence") as routed:
        with routed.capture() as first:
            out_first = _generate(tiny_llama, ids, mask)
        with routed.capture() as second:
            out_second = _generate(tiny_llama, other_padding, mask)

    width = ids.shape[1]
    assert torch.equal(out_first[:, width:], out_second[:, width:])
    for name in first.modules:
        torch.testing.assert_close(first.records[name][0].sequence_scores, second.records[name][0].sequence_scores)


def test_batched_generation_equals_one_by_one(tiny_llama, library) -> None:
    ids, mask = _left_padded(PROMPTS)
    name = "model.layers.1.self_attn.o_proj"

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, granularity="sequence") as routed:
        with routed.capture() as batched_trace:
            batched = _generate(tiny_llama, ids, mask)
        singles = []
        single_choices = []
        for prompt in PROMPTS:
            with routed.capture() as trace:
                singles.append(_generate(tiny_llama, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long)))
            single_choices.append(trace.top1(name)[0, 0].item())

    width = ids.shape[1]
    for row, single in enumerate(singles):
        assert batched[row, width:].tolist() == single[0, len(PROMPTS[row]) :].tolist()
    assert batched_trace.top1(name)[:, -1].tolist() == single_choices


def test_choose_from_prompt_matches_generation_choice(tiny_llama, library) -> None:
    ids, mask = _left_padded(PROMPTS)
    answer = torch.tensor([[3, 5], [8, 9], [1, 1]])
    full_ids = torch.cat([ids, answer], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(answer)], dim=1)
    prompt_only = torch.cat([mask, torch.zeros_like(answer)], dim=1)
    name = "model.layers.0.self_attn.q_proj"

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, granularity="sequence") as routed:
        with routed.capture() as generation:
            _generate(tiny_llama, ids, mask)
        with routed.choose_from(prompt_only), routed.capture() as scoring, torch.no_grad():
            tiny_llama(input_ids=full_ids, attention_mask=full_mask)

    # Only layer 0 sees identical inputs in both runs: later layers see answer tokens routed differently.
    assert torch.equal(scoring.top1(name)[:, 0], generation.top1(name)[:, 0])


def test_per_token_routing_agrees_with_and_without_cache(tiny_llama, library) -> None:
    ids, mask = _left_padded(PROMPTS)

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling) as routed:
        cached = _generate(tiny_llama, ids, mask)
        uncached = _generate(tiny_llama, ids, mask, use_cache=False)
        with routed.capture() as trace:
            _generate(tiny_llama, ids, mask)

    assert torch.equal(cached, uncached)
    name = trace.modules[0]
    assert trace.scores(name).shape == (3, ids.shape[1] + 3, len(library.adapters))


def test_new_prompt_batch_chooses_again(tiny_llama, library) -> None:
    ids, mask = _left_padded(PROMPTS)

    with attach_routing(tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, granularity="sequence") as routed:
        _generate(tiny_llama, ids, mask)
        with routed.capture() as trace:
            _generate(tiny_llama, ids[1:2], mask[1:2])  # a new batch of one, no reset
        routed.reset()
        cleared = [layer._sequence_choice for layer in routed.layers.values()]

    assert trace.top1(trace.modules[0]).shape == (1, 5 + 3)
    assert cleared == [None] * len(cleared)


@pytest.mark.parametrize("method", ["seqr", "arrow", "spectr", "lag", "naive", "mu"])
def test_every_method_generates_per_sequence(tiny_llama, library, method: str) -> None:
    ids, mask = _left_padded(PROMPTS)

    with attach_routing(
        tiny_llama, library.shared_a, library.adapters, scaling=library.scaling,
        method=method, granularity="sequence", lag_k=2,
    ) as routed:
        with routed.capture() as trace:
            out = _generate(tiny_llama, ids, mask)

    assert out.shape == (3, ids.shape[1] + 4)
    for name in trace.modules:
        chosen = trace.top1(name)
        assert torch.equal(chosen, chosen[:, :1].expand_as(chosen))
        prefill = trace.records[name][0]
        assert prefill.sequence_scores is not None
        if method != "mu":
            assert torch.isfinite(prefill.sequence_scores.gather(-1, chosen[:, :1])).all()

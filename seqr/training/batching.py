"""Tokenise (prompt, target) pairs and pad them into batches with loss labels and routing masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of a prompt followed by its target; the first ``prompt_length`` ids are the prompt."""

    input_ids: tuple[int, ...]
    prompt_length: int


@dataclass
class Batch:
    """Right-padded tensors, all (batch, sequence)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # IGNORE_INDEX on prompt and padding tokens
    prompt_mask: torch.Tensor  # bool: the prompt's tokens (every token when the prompt is empty)
    target_mask: torch.Tensor  # bool: the target's tokens

    def to(self, device: torch.device) -> Batch:
        return Batch(*(tensor.to(device) for tensor in (self.input_ids, self.attention_mask, self.labels, self.prompt_mask, self.target_mask)))


def encode_pair(tokenizer: object, prompt: str, target: str, *, max_length: int) -> EncodedPair:
    """Tokenise prompt and target separately, so the boundary is exact, and fit them in ``max_length``.

    A long prompt loses tokens from its middle, which keeps the instruction at its start and the
    answer cue at its end. A target that alone exceeds the limit is cut at its end.
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"]) if prompt else []
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    target_ids = target_ids[: max(1, max_length - min(len(prompt_ids), max_length // 2))]
    room = max_length - len(target_ids)
    if len(prompt_ids) > room:
        head = room // 2
        prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - (room - head) :]
    return EncodedPair(input_ids=tuple(prompt_ids + target_ids), prompt_length=len(prompt_ids))


def collate(pairs: Sequence[EncodedPair], *, pad_token_id: int) -> Batch:
    """Pad ``pairs`` on the right into one :class:`Batch`."""
    length = max(len(pair.input_ids) for pair in pairs)
    shape = (len(pairs), length)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    prompt_mask = torch.zeros(shape, dtype=torch.bool)
    target_mask = torch.zeros(shape, dtype=torch.bool)
    for row, pair in enumerate(pairs):
        size = len(pair.input_ids)
        input_ids[row, :size] = torch.tensor(pair.input_ids, dtype=torch.long)
        attention_mask[row, :size] = 1
        labels[row, pair.prompt_length : size] = input_ids[row, pair.prompt_length : size]
        target_mask[row, pair.prompt_length : size] = True
        routing_end = pair.prompt_length if pair.prompt_length > 0 else size
        prompt_mask[row, :routing_end] = True
    return Batch(input_ids, attention_mask, labels, prompt_mask, target_mask)


def target_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` and return the logits that predict target tokens, with those tokens and their rows.

    Only the positions followed by a target token go through the output projection, selected with
    the ``logits_to_keep`` argument of ``transformers`` causal LMs. Over a 49k vocabulary that
    projection is a large share of the compute. Returns logits (K, vocab), targets (K,) and
    rows (K,), in row-major order of the target tokens.
    """
    follows_target = batch.target_mask[:, 1:]  # (batch, seq-1): position t predicts token t+1
    predict = torch.zeros_like(batch.target_mask)
    predict[:, :-1] = follows_target
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=predict)
    logits = output.logits
    if logits.ndim == 3:  # a model that ignores a boolean logits_to_keep
        logits = logits[predict]
    targets = batch.input_ids[:, 1:][follows_target]
    rows = follows_target.nonzero()[:, 0]
    return logits, targets, rows

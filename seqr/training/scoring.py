"""Multiple-choice scoring: the correct choice must have the highest likelihood among the candidates.

Each candidate is scored by the mean log-probability of its tokens after the prompt, so that
longer candidates (HellaSwag's endings) are not penalised for their length. Classification tasks
have one- or two-token label words, where the mean and the sum order candidates almost alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from seqr.training.batching import Batch, collate, encode_pair
from seqr.training.data import ChoiceExample


@dataclass
class ChoiceBatch:
    """A padded batch of every (prompt, choice) pair of a few examples.

    ``example_rows[i]`` lists the batch rows of the i-th example of ``examples``, one per choice,
    in choice order. ``first_rows`` (examples,) holds the row of each example's first choice: all
    rows of an example share the prompt, so routing statistics are read from that row only.
    """

    batch: Batch
    examples: list[int]
    example_rows: list[list[int]]

    @property
    def first_rows(self) -> torch.Tensor:
        return torch.tensor([rows[0] for rows in self.example_rows], dtype=torch.long)


def choice_batches(
    tokenizer: object, examples: Sequence[ChoiceExample], *, max_length: int, max_rows: int
) -> Iterator[ChoiceBatch]:
    """Yield batches of at most ``max_rows`` (prompt, choice) rows; an example never straddles two."""
    pending: list[tuple[int, list]] = []
    rows = 0

    def flush() -> ChoiceBatch:
        pairs, example_rows, indices = [], [], []
        for index, encoded in pending:
            example_rows.append(list(range(len(pairs), len(pairs) + len(encoded))))
            pairs.extend(encoded)
            indices.append(index)
        return ChoiceBatch(collate(pairs, pad_token_id=tokenizer.pad_token_id), indices, example_rows)

    for index, example in enumerate(examples):
        encoded = [encode_pair(tokenizer, example.prompt, choice, max_length=max_length) for choice in example.choices]
        if pending and rows + len(encoded) > max_rows:
            yield flush()
            pending, rows = [], 0
        pending.append((index, encoded))
        rows += len(encoded)
    if pending:
        yield flush()


def mean_target_logprob(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Return each row's mean log-probability of its target tokens.

    ``logits`` (K, vocab), ``targets`` (K,) and ``rows`` (K,) are what
    :func:`~seqr.training.batching.target_logits` returns; the result is (batch_size,).
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (K, vocab)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (K,)
    totals = torch.zeros(batch_size, dtype=picked.dtype).index_add_(0, rows, picked)
    counts = torch.zeros(batch_size, dtype=picked.dtype).index_add_(0, rows, torch.ones_like(picked))
    return totals / counts.clamp_min(1.0)


def correct_choices(scores: torch.Tensor, chunk: ChoiceBatch, examples: Sequence[ChoiceExample]) -> list[bool]:
    """Return, per example of ``chunk``, whether its answer has the highest score in ``scores`` (rows,)."""
    results = []
    for index, rows in zip(chunk.examples, chunk.example_rows):
        best = int(torch.argmax(scores[rows]))
        results.append(best == examples[index].answer)
    return results

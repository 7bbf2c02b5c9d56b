"""Captured routing decisions: which adapter each adapted module chose for each token, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from seqr.errors import InvalidInputError
from seqr.routing.methods import RoutingMethod

NO_ADAPTER = -1


class Phase(str, Enum):
    """The part of a sequence a forward call processes: the prompt (or a pass without cache), or a cached step."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class LayerRecord:
    """The routing of one forward call of one adapted module.

    ``indices`` (batch, seq, k) are candidate positions (-1: the base model or MU's mean update),
    ``weights`` (batch, seq, k) their mixing weights. ``scores`` (batch, seq, N) are the float32
    per-token scores, None when the adapter was forced or disabled. ``sequence_scores`` (batch, N)
    are the scores a per-sequence choice was made from, at prefill only. ``attention_mask``
    (batch, seq) marks real tokens when the model call had one. ``extra_scores`` holds the scores
    of the reference methods requested in :meth:`RoutedModel.capture`, on the same inputs.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor | None
    phase: Phase
    sequence_scores: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    extra_scores: dict[RoutingMethod, torch.Tensor] = field(default_factory=dict)

    @property
    def top1(self) -> torch.Tensor:
        """The candidate position with the largest weight for every token: (batch, seq) long."""
        if self.indices.shape[-1] == 1:
            return self.indices[..., 0]
        return self.indices.gather(-1, self.weights.argmax(dim=-1, keepdim=True))[..., 0]


@dataclass
class RoutingTrace:
    """Every :class:`LayerRecord` of the forward calls made while capturing, per module, in call order."""

    adapter_ids: tuple[str, ...]
    records: dict[str, list[LayerRecord]] = field(default_factory=dict)

    def add(self, module: str, record: LayerRecord) -> None:
        self.records.setdefault(module, []).append(record)

    @property
    def modules(self) -> list[str]:
        return list(self.records)

    def _records(self, module: str) -> list[LayerRecord]:
        try:
            return self.records[module]
        except KeyError:
            raise InvalidInputError(
                f"no routing was captured for module {module!r}; captured modules: {self.modules[:8]}"
            ) from None

    def top1(self, module: str) -> torch.Tensor:
        """Return the chosen candidate position per token across all calls: (batch, total seq) long.

        Calls are joined along the sequence, which is what a generate loop with a KV cache produces
        (the prompt, then one token per step). Raises when the calls have different batch sizes.
        """
        return _join([r.top1 for r in self._records(module)], module)

    def scores(self, module: str) -> torch.Tensor:
        """Return the per-token scores across all calls: (batch, total seq, N) float32."""
        parts = [r.scores for r in self._records(module)]
        if any(p is None for p in parts):
            raise InvalidInputError(f"module {module!r} ran with a forced adapter or none; it has no scores")
        return _join([p for p in parts if p is not None], module)

    def top1_ids(self, module: str) -> list[list[str | None]]:
        """Return the chosen adapter id per token, with None where no single adapter was applied."""
        chosen = self.top1(module).tolist()
        return [[self.adapter_ids[i] if i >= 0 else None for i in row] for row in chosen]


def _join(parts: Sequence[torch.Tensor], module: str) -> torch.Tensor:
    batches = {int(p.shape[0]) for p in parts}
    if len(batches) != 1:
        raise InvalidInputError(
            f"module {module!r} was called with batch sizes {sorted(batches)}; read its records one by one"
        )
    return torch.cat(list(parts), dim=1)

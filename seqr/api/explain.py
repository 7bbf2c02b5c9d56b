"""The explanation of a routed forward pass: which silo each adapted module chose for each token."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModuleRoute:
    """One adapted module: the silo chosen for every token (None: no adapter) and the scores.

    ``scores[t][i]`` is the routing score of candidate ``i`` (in ``RouteExplanation.silos``
    order) for token ``t``: the z-scored norm ||R_i A x|| for SEQR, or the raw norm without
    calibration statistics.
    """

    chosen: list[str | None]
    scores: list[list[float]]


@dataclass(frozen=True)
class RouteExplanation:
    """Routing of one text: its tokens, the candidate silos, and per adapted module the choices."""

    text: str
    tokens: list[str]
    silos: tuple[str, ...]
    modules: dict[str, ModuleRoute]

    def silo_shares(self) -> dict[str, float]:
        """Share of all (token, module) decisions that went to each silo, largest first."""
        counts = Counter(
            silo for route in self.modules.values() for silo in route.chosen if silo is not None
        )
        total = sum(counts.values())
        return {silo: count / total for silo, count in counts.most_common()} if total else {}

    def top_silo(self) -> str | None:
        """Return the silo that received the most (token, module) decisions, or None without adapters."""
        shares = self.silo_shares()
        return next(iter(shares), None)

    def mean_scores(self) -> dict[str, float]:
        """Return the mean routing score of each silo over every token and adapted module."""
        totals = [0.0] * len(self.silos)
        count = 0
        for route in self.modules.values():
            for row in route.scores:
                for index, score in enumerate(row):
                    totals[index] += score
                count += 1
        return {silo: total / count for silo, total in zip(self.silos, totals, strict=True)} if count else {}

    def sequence_silo(self) -> str | None:
        """Return the silo with the highest mean score over the whole text.

        This is one choice per text, as per-sequence routing makes it, and less noisy than any
        single token's choice."""
        means = self.mean_scores()
        return max(means, key=means.__getitem__) if means else None

    def chosen_silos(self) -> set[str]:
        """Return every silo chosen anywhere in the text."""
        return {silo for route in self.modules.values() for silo in route.chosen if silo is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "silos": list(self.silos),
            "silo_shares": self.silo_shares(),
            "modules": {
                name: {"chosen": route.chosen, "scores": route.scores} for name, route in self.modules.items()
            },
        }

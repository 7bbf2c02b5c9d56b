"""Routing accuracy and activation-norm statistics, read from captured routing traces.

Only prompt tokens count: they are what a router sees before any answer exists, what per-sequence
routing chooses from, and what calibration measured. An example counts as routed to the adapter
that wins the plurality vote of its (prompt token, module) choices; with per-sequence routing each
module casts one choice per token, so the vote is over modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from seqr.routing import AdapterFactors, RoutingMethod, RoutingTrace
from seqr.training.library import layer_index


@dataclass
class RoutingTally:
    """Counts of routing choices that picked the example's own adapter, for one router and task."""

    num_adapters: int
    num_layers: int
    token_hits: int = 0
    token_total: int = 0
    example_hits: int = 0
    example_total: int = 0
    naive_agreements: int = 0
    naive_total: int = 0
    chosen: torch.Tensor = field(init=False)  # (adapters,) examples routed to each adapter
    layer_hits: torch.Tensor = field(init=False)  # (layers,)
    layer_total: torch.Tensor = field(init=False)  # (layers,)

    def __post_init__(self) -> None:
        self.chosen = torch.zeros(self.num_adapters, dtype=torch.long)
        self.layer_hits = torch.zeros(self.num_layers, dtype=torch.long)
        self.layer_total = torch.zeros(self.num_layers, dtype=torch.long)

    def add(self, trace: RoutingTrace, rows: torch.Tensor, mask: torch.Tensor, own: int) -> None:
        """Count the choices of ``rows`` (examples,) of the traced batch on tokens in ``mask`` (examples, seq)."""
        mask = mask.to(torch.bool).cpu()
        votes = torch.zeros(rows.shape[0], self.num_adapters, dtype=torch.long)  # (examples, adapters)
        for module, records in trace.records.items():
            record = records[0]
            top1 = record.top1[rows].cpu()  # (examples, seq)
            hits = (top1 == own) & mask
            self.token_hits += int(hits.sum())
            self.token_total += int(mask.sum())
            layer = layer_index(module) or 0
            self.layer_hits[layer] += int(hits.sum())
            self.layer_total[layer] += int(mask.sum())
            one_hot = torch.nn.functional.one_hot(top1.clamp_min(0), self.num_adapters)  # (examples, seq, adapters)
            votes += (one_hot * mask.unsqueeze(-1)).sum(dim=1)
            naive = record.extra_scores.get(RoutingMethod.NAIVE)
            if naive is not None:
                agree = (naive[rows].argmax(dim=-1).cpu() == top1) & mask
                self.naive_agreements += int(agree.sum())
                self.naive_total += int(mask.sum())
        winners = votes.argmax(dim=-1)  # (examples,)
        self.example_hits += int((winners == own).sum())
        self.example_total += int(rows.shape[0])
        self.chosen += torch.bincount(winners, minlength=self.num_adapters)

    def merge(self, other: RoutingTally) -> None:
        self.token_hits += other.token_hits
        self.token_total += other.token_total
        self.example_hits += other.example_hits
        self.example_total += other.example_total
        self.naive_agreements += other.naive_agreements
        self.naive_total += other.naive_total
        self.chosen += other.chosen
        self.layer_hits += other.layer_hits
        self.layer_total += other.layer_total

    def summary(self) -> dict[str, object]:
        return {
            "examples": _share(self.example_hits, self.example_total),
            "tokens": _share(self.token_hits, self.token_total),
            "per_layer_tokens": [
                _share(int(h), int(t)) for h, t in zip(self.layer_hits, self.layer_total) if int(t) > 0
            ],
        }


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


@dataclass
class NormTally:
    """Sums of z-scored and raw SEQR scores per adapter over one task's prompt tokens and modules."""

    num_adapters: int
    z_sum: torch.Tensor = field(init=False)  # (adapters,)
    raw_sum: torch.Tensor = field(init=False)  # (adapters,)
    count: int = 0

    def __post_init__(self) -> None:
        self.z_sum = torch.zeros(self.num_adapters, dtype=torch.float64)
        self.raw_sum = torch.zeros(self.num_adapters, dtype=torch.float64)

    def add(
        self, trace: RoutingTrace, rows: torch.Tensor, mask: torch.Tensor, statistics: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Add the z-scores of a calibrated SEQR trace; raw norms are rebuilt as z * sigma + mu."""
        mask = mask.to(torch.bool).cpu()
        for module, records in trace.records.items():
            scores = records[0].scores
            if scores is None:
                continue
            z = scores[rows].cpu().to(torch.float64)[mask]  # (tokens, adapters)
            mu, sigma = statistics[module]
            self.z_sum += z.sum(dim=0)
            self.raw_sum += (z * sigma + mu).sum(dim=0)
            self.count += int(z.shape[0])

    def means(self) -> tuple[list[float], list[float]]:
        count = max(self.count, 1)
        return (self.raw_sum / count).tolist(), (self.z_sum / count).tolist()


def module_statistics(
    adapters: Mapping[str, AdapterFactors], adapter_ids: Sequence[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return (mu, sigma) as float64 (adapters,) tensors per module, in ``adapter_ids`` order."""
    modules = next(iter(adapters.values())).modules
    statistics = {}
    for module in modules:
        mu = torch.tensor([adapters[i].modules[module].mu or 0.0 for i in adapter_ids], dtype=torch.float64)
        sigma = torch.tensor([adapters[i].modules[module].sigma or 1.0 for i in adapter_ids], dtype=torch.float64)
        statistics[module] = (mu, sigma)
    return statistics

"""The router interface: score the candidates of one module for every token, decide, and update.

Every router reads one :class:`StackedFactors` (the candidate set of one module) and exposes
``scores(x)`` (..., N), ``select(x)`` (...,) and ``route(x)``. Scores are float32 whatever the
input dtype. The top-k choice mixes k adapters with softmax weights over their scores.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from seqr.errors import InvalidInputError
from seqr.routing.library import StackedFactors
from seqr.routing.methods import RoutingConfig, RoutingMethod
from seqr.routing.update import routed_update

# Upper bound on the elements of one intermediate block in chunked scoring: 4 Mi floats, 16 MiB.
SCORE_BUDGET_ELEMENTS = 1 << 22


def float32_math(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Return a context that turns autocast off, so routing math stays float32 inside a caller's autocast region."""
    try:
        active = torch.is_autocast_enabled(device.type)
    except TypeError:  # torch before 2.4 takes no device type here
        active = True
    # Entering an autocast context costs a few microseconds, which a routed layer pays per call.
    return torch.autocast(device_type=device.type, enabled=False) if active else contextlib.nullcontext()


@dataclass(frozen=True)
class RouteDecision:
    """The routing of T tokens among N candidates.

    ``indices`` (T, k) are candidate positions, ``weights`` (T, k) their mixing weights (1.0 for
    top-1), ``scores`` (T, N) float32 the scores they were chosen from. MU, which mixes every
    candidate, reports index -1 with weight 1.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor


class Router(ABC):
    """Routing among the candidates of one module; see :func:`make_router`."""

    method: RoutingMethod
    needs_z: bool = True

    def __init__(self, factors: StackedFactors, config: RoutingConfig) -> None:
        if config.top_k > factors.num_adapters:
            raise InvalidInputError(
                f"top_k={config.top_k} exceeds the {factors.num_adapters} adapters in the candidate set; "
                f"use top_k <= {factors.num_adapters}"
            )
        self.factors = factors if config.use_calibration else factors.without_calibration()
        self.config = config

    @property
    def num_adapters(self) -> int:
        return self.factors.num_adapters

    # Public interface on (..., n) inputs.

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 score of every candidate for every token: (..., n) -> (..., N)."""
        with float32_math(self.factors.device):
            rows = self._rows(x)
            return self.token_scores(rows, self._z(rows)).reshape(*x.shape[:-1], self.num_adapters)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Return the arg max candidate position of every token: (..., n) -> (...,) long."""
        with float32_math(self.factors.device):
            return self._select(x)

    def route(self, x: torch.Tensor) -> RouteDecision:
        """Score and choose for every token of ``x`` (..., n), flattened to T = prod(...) tokens."""
        with float32_math(self.factors.device):
            rows = self._rows(x)
            return self.decide(self.ranking_scores(rows, self._z(rows)))

    def update(self, x: torch.Tensor, decision: RouteDecision) -> torch.Tensor:
        """Return the LoRA update B A x of each token's chosen adapters (unscaled): (T, n) -> (T, m)."""
        with float32_math(self.factors.device):
            return self.update_from_z(self.project(self._rows(x)), decision)

    def add_routed_update(self, rows: torch.Tensor, out: torch.Tensor, scale: float) -> bool:
        """Route float32 rows (T, n) top-1 and add ``scale`` times each token's update to ``out`` (T, m) in place.

        Returns False, having done nothing, when this router has no fused path for these inputs;
        the caller then uses :meth:`route` and :meth:`update_from_z`.
        """
        return False

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows(x)
        return self.ranking_scores(rows, self._z(rows)).argmax(dim=-1).reshape(x.shape[:-1])

    def _z(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Return z = A x when this method's scores use it; ARROW, SPECTR and LAG score x directly."""
        return self.project(rows) if self.needs_z else None

    # Steps used by the routed layer, on flattened (T, n) float32 rows.

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """Return z = A x for float32 rows (T, n) as a (T, r) view of an (r, T) tensor."""
        # A @ x^T measured about 1.7x faster than x @ A^T on CPU for r = 8, n = 4096.
        return (self.factors.a @ rows.T).T

    def decide(self, scores: torch.Tensor) -> RouteDecision:
        """Pick the top-k of (T, N) scores, with softmax weights over the k picked scores."""
        k = self.config.top_k
        if k == 1:
            indices = scores.argmax(dim=-1, keepdim=True)  # (T, 1)
            weights = torch.ones(indices.shape, dtype=torch.float32, device=scores.device)
        else:
            values, indices = scores.topk(k, dim=-1)  # (T, k)
            weights = torch.softmax(values, dim=-1)
        return RouteDecision(indices=indices, weights=weights, scores=scores)

    def update_from_z(self, z: torch.Tensor, decision: RouteDecision) -> torch.Tensor:
        """Return the unscaled update (T, m) float32 for z (T, r) and a decision over the same tokens."""
        return routed_update(self.factors.q, self.factors.r, z, decision.indices, decision.weights)

    def sequence_scores(
        self, rows: torch.Tensor, z: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score every candidate once per sequence from the tokens that ``mask`` marks.

        ``rows`` (b, s, n) float32, ``z`` (b, s, r), ``mask`` (b, s) with 1 for the tokens to use.
        Returns the (b, N) sequence scores (by default the mean token score over the marked
        tokens) and the (b, s, N) token scores, or None when the method does not form them.
        """
        batch, seq, n = rows.shape
        tokens = self.ranking_scores(rows.reshape(-1, n), z.reshape(batch * seq, -1)).view(batch, seq, -1)
        return masked_mean(tokens, mask), tokens

    @abstractmethod
    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Return (T, N) float32 scores for float32 rows (T, n) and, when ``needs_z``, z (T, r)."""

    def ranking_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Return the (T, N) scores that routing decisions are made from; by default :meth:`token_scores`."""
        return self.token_scores(rows, z)

    def flops_per_token(self) -> int:
        """Return the floating-point operations ``select`` spends per token (multiply-add = 2)."""
        return self._flops(self.factors.num_adapters, self.factors.in_features, self.factors.out_features, self.factors.rank)

    @abstractmethod
    def _flops(self, n_adapters: int, n: int, m: int, r: int) -> int: ...

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.factors.in_features:
            raise InvalidInputError(
                f"x has {x.shape[-1]} features in its last dimension but the shared A expects "
                f"n={self.factors.in_features}; pass x as (tokens, {self.factors.in_features})"
            )
        return x.reshape(-1, x.shape[-1]).to(device=self.factors.device, dtype=torch.float32)

    def _calibrate(self, norms: torch.Tensor) -> torch.Tensor:
        if self.factors.mu is None or self.factors.sigma is None:
            return norms
        return (norms - self.factors.mu) / self.factors.sigma


def chunk_rows(per_row: int) -> int:
    """Return how many rows fit in one block of SCORE_BUDGET_ELEMENTS when each row needs ``per_row``."""
    return max(1, SCORE_BUDGET_ELEMENTS // max(1, per_row))


def block_norms(stacked_rows: torch.Tensor, vectors: torch.Tensor, n_adapters: int, rank: int) -> torch.Tensor:
    """Return ||M_i v_t|| for every adapter i and column t: (N r, d) and (T, d) -> (T, N).

    ``stacked_rows`` stacks the (r, d) matrices M_i. The product is laid out (N r, T), so the sum
    of squares over r adds whole contiguous (N, T) slabs. A (T, N, r) layout would reduce over a
    stride-1 axis of length r, which measured several times slower on a 2-core CPU.
    """
    step = chunk_rows(n_adapters * rank)
    norms = vectors.new_empty(n_adapters, vectors.shape[0])  # (N, T)
    for start in range(0, vectors.shape[0], step):
        projected = stacked_rows @ vectors[start : start + step].T  # (N r, t)
        squares = projected.square_().view(n_adapters, rank, -1)  # (N, r, t)
        norms[:, start : start + step] = squares.sum(dim=1).sqrt_()
    return norms.T


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean over dim 1 of ``values`` (b, s, N) at the tokens where ``mask`` (b, s) is 1: (b, N)."""
    weights = mask.to(values.dtype).unsqueeze(-1)  # (b, s, 1)
    # torch.where keeps -inf scores of masked-out tokens (LAG) from turning the sum into NaN.
    total = torch.where(weights > 0, values * weights, values.new_zeros(())).sum(dim=1)
    return total / weights.sum(dim=1).clamp_min(1.0)

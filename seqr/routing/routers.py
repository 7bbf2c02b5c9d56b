"""Routers: score the candidate adapters for every token, select, and compute the routed update.

Every router reads one :class:`StackedFactors` (the candidate set of one module) and exposes
``scores(x)`` (..., N), ``select(x)`` (...,) and ``route(x)``. Scores are float32 whatever the
input dtype. The top-k choice mixes k adapters with softmax weights over their scores.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seqr.errors import InvalidInputError
from seqr.routing.library import StackedFactors
from seqr.routing.methods import DEFAULT_LAG_K, RoutingConfig, RoutingMethod
from seqr.routing.spectral import arrow_prototypes, spectr_projections
from seqr.routing.update import routed_update

logger = logging.getLogger(__name__)

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


def _chunk_rows(per_row: int) -> int:
    """Return how many rows fit in one block of SCORE_BUDGET_ELEMENTS when each row needs ``per_row``."""
    return max(1, SCORE_BUDGET_ELEMENTS // max(1, per_row))


def _block_norms(stacked_rows: torch.Tensor, vectors: torch.Tensor, n_adapters: int, rank: int) -> torch.Tensor:
    """Return ||M_i v_t|| for every adapter i and column t: (N r, d) and (T, d) -> (T, N).

    ``stacked_rows`` stacks the (r, d) matrices M_i. The product is laid out (N r, T), so the sum
    of squares over r adds whole contiguous (N, T) slabs. A (T, N, r) layout would reduce over a
    stride-1 axis of length r, which measured several times slower on a 2-core CPU.
    """
    step = _chunk_rows(n_adapters * rank)
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


class SeqrRouter(Router):
    """(||R_i z|| - mu_i) / sigma_i with z = A x; ||R_i z|| = ||B_i A x|| because Q_i has orthonormal columns.

    ``scores`` multiplies every R_i with z. Routing decisions (``select``, ``route`` and the
    routed layers) use the quadratic form ||R_i z||^2 = z^T G_i z with the Gram matrix
    G_i = R_i^T R_i, whose r (r + 1) / 2 distinct entries need fewer multiply-adds than the
    r^2 of R_i z. Rounding in that form grows to about sqrt(eps) ||R_i|| ||z|| for norms near
    zero, so only near-zero norms lose relative precision, never a clear arg max.
    """

    method = RoutingMethod.SEQR

    def __init__(self, factors: StackedFactors, config: RoutingConfig) -> None:
        super().__init__(factors, config)
        rank = factors.rank
        self._r_rows = self.factors.r.reshape(-1, rank).contiguous()  # (N r, r)
        rows, cols = torch.triu_indices(rank, rank, device=factors.device)  # (P,), P = r (r + 1) / 2
        gram = self.factors.r.transpose(1, 2) @ self.factors.r  # (N, r, r)
        # Off-diagonal entries appear twice in z^T G z, so they are stored doubled.
        doubling = torch.where(rows == cols, 1.0, 2.0).to(gram.dtype)
        self._gram_t = (gram[:, rows, cols] * doubling).T.contiguous()  # (P, N)
        self._pair_rows, self._pair_cols = rows, cols

    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            raise InvalidInputError("SEQR scores need z = A x; call project(rows) first")
        return self._calibrate(_block_norms(self._r_rows, z, self.num_adapters, self.factors.rank))

    def ranking_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return self._calibrate(self._squared_norms(z).clamp_min_(0.0).sqrt_())

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows(x)
        squared = self._squared_norms(self.project(rows))  # (T, N)
        if self.factors.mu is None:
            # The square root is monotonic, so raw norms rank like their squares.
            return squared.argmax(dim=-1).reshape(x.shape[:-1])
        return self._calibrate(squared.clamp_min_(0.0).sqrt_()).argmax(dim=-1).reshape(x.shape[:-1])

    def _squared_norms(self, z: torch.Tensor | None) -> torch.Tensor:
        """Return ||R_i z_t||^2 as a (T, N) tensor, chunked over tokens."""
        if z is None:
            raise InvalidInputError("SEQR scores need z = A x; call project(rows) first")
        z_t = z.T  # (r, T)
        step = _chunk_rows(self._gram_t.shape[0] + self.num_adapters)
        squared = z.new_empty(z.shape[0], self.num_adapters)  # (T, N)
        for start in range(0, z.shape[0], step):
            block = z_t[:, start : start + step]  # (r, t)
            products = (block[self._pair_rows] * block[self._pair_cols]).T.contiguous()  # (t, P)
            squared[start : start + step] = products @ self._gram_t  # (t, N)
        return squared

    def _flops(self, n_adapters: int, n: int, m: int, r: int) -> int:
        # z = A x, the r (r + 1) / 2 products z_j z_k, the Gram forms, square roots and calibration.
        pairs = r * (r + 1) // 2
        return 2 * r * n + pairs + 2 * n_adapters * pairs + 3 * n_adapters


class NaiveRouter(Router):
    """||B_i (A x)|| with B_i = Q_i R_i rebuilt in full: the reference the other routers are tested against."""

    method = RoutingMethod.NAIVE

    def __init__(self, factors: StackedFactors, config: RoutingConfig) -> None:
        super().__init__(factors, config)
        self._b = self.factors.b()  # (N, m, r)

    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            raise InvalidInputError("NAIVE scores need z = A x; call project(rows) first")
        n_adapters, m, rank = self._b.shape
        norms = z.new_empty(n_adapters, z.shape[0])  # (N, T)
        # Blocks of whole adapters keep the (adapters, m, T) intermediate within the budget.
        step = _chunk_rows(m * z.shape[0])
        for start in range(0, n_adapters, step):
            block = self._b[start : start + step]  # (c, m, r)
            outputs = (block.reshape(-1, rank) @ z.T).view(block.shape[0], m, -1)  # (c, m, T)
            norms[start : start + step] = outputs.square_().sum(dim=1).sqrt_()
        return self._calibrate(norms.T)

    def _flops(self, n_adapters: int, n: int, m: int, r: int) -> int:
        return 2 * r * n + 2 * n_adapters * m * r + 2 * n_adapters * m + 3 * n_adapters


class ArrowRouter(Router):
    """|v_i . x| with v_i the top right singular vector of B_i A (no calibration: ARROW has none)."""

    method = RoutingMethod.ARROW
    needs_z = False

    def __init__(self, factors: StackedFactors, config: RoutingConfig) -> None:
        super().__init__(factors, config)
        self._prototypes_t = arrow_prototypes(self.factors).T.contiguous()  # (n, N)

    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return (rows @ self._prototypes_t).abs()  # (T, N)

    def _flops(self, n_adapters: int, n: int, m: int, r: int) -> int:
        return 2 * n_adapters * n + n_adapters


class SpectrRouter(Router):
    """||Â_i x|| with Â_i = S_i V_i^T from the SVD of B_i A, z-scored with mu and sigma when given."""

    method = RoutingMethod.SPECTR
    needs_z = False

    def __init__(self, factors: StackedFactors, config: RoutingConfig) -> None:
        super().__init__(factors, config)
        self._projection_rows = spectr_projections(self.factors).reshape(-1, factors.in_features)  # (N r, n)

    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return self._calibrate(_block_norms(self._projection_rows, rows, self.num_adapters, self.factors.rank))

    def _flops(self, n_adapters: int, n: int, m: int, r: int) -> int:
        return 2 * n_adapters * r * n + 2 * n_adapters * r + 3 * n_adapters


class LagRouter(Router):
    """ARROW keeps each token's lag_k best adapters; SPECTR scores those, the others score -inf."""

    method = RoutingMethod.LAG
    needs_z = False

    def __init__(self, factors: StackedFactors, config: RoutingConfig) -> None:
        super().__init__(factors, config)
        if config.lag_k > factors.num_adapters:
            raise InvalidInputError(
                f"LAG's k={config.lag_k} exceeds the {factors.num_adapters} adapters in the candidate set; "
                f"use k <= {factors.num_adapters}"
            )
        if config.top_k > config.lag_k:
            raise InvalidInputError(f"top_k={config.top_k} exceeds LAG's k={config.lag_k}; the filter keeps only k")
        self._prototypes_t = arrow_prototypes(self.factors).T.contiguous()  # (n, N)
        self._projections = spectr_projections(self.factors)  # (N, r, n)

    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        k = self.config.lag_k
        kept = (rows @ self._prototypes_t).abs().topk(k, dim=-1).indices  # (T, k)
        spectr = self._kept_norms(rows, kept)  # (T, k)
        if self.factors.mu is not None and self.factors.sigma is not None:
            spectr = (spectr - self.factors.mu[kept]) / self.factors.sigma[kept]
        scores = rows.new_full((rows.shape[0], self.num_adapters), float("-inf"))  # (T, N)
        return scores.scatter_(1, kept, spectr)

    def _kept_norms(self, rows: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Return ||Â_i x_t|| for every (token t, kept adapter i) pair: (T, k).

        Pairs are grouped by adapter, so each kept adapter multiplies its tokens at once.
        """
        # NOTE: one small matmul per distinct kept adapter, a Python loop of up to N steps. Gathering
        # a (T, k, r, n) block of Â instead copies k r n floats per token and measured about 4x
        # slower at N=1000, n=4096, k=20 on a 2-core CPU.
        k = kept.shape[1]
        flat = kept.reshape(-1)  # (T k,)
        order = torch.argsort(flat)
        adapters, counts = torch.unique_consecutive(flat[order], return_counts=True)
        norms = rows.new_empty(flat.numel())  # (T k,)
        for adapter, pairs in zip(adapters.tolist(), torch.split(order, counts.tolist()), strict=True):
            projected = rows[pairs // k] @ self._projections[adapter].T  # (pairs, r)
            norms[pairs] = projected.square().sum(dim=-1).sqrt()
        return norms.view(kept.shape)

    def sequence_scores(
        self, rows: torch.Tensor, z: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Per sequence: the ARROW filter on the mean ARROW score, then the mean SPECTR score of
        # the k kept adapters. Averaging per-token LAG scores instead would mix -inf entries.
        k = self.config.lag_k
        arrow = masked_mean((rows @ self._prototypes_t).abs(), mask)  # (b, N)
        kept = arrow.topk(k, dim=-1).indices  # (b, k)
        projected = torch.einsum("bkrn,bsn->bskr", self._projections[kept], rows)  # (b, s, k, r)
        spectr = masked_mean(torch.linalg.vector_norm(projected, dim=-1), mask)  # (b, k)
        if self.factors.mu is not None and self.factors.sigma is not None:
            spectr = (spectr - self.factors.mu[kept]) / self.factors.sigma[kept]
        scores = rows.new_full((rows.shape[0], self.num_adapters), float("-inf"))  # (b, N)
        return scores.scatter_(1, kept, spectr), None

    def _flops(self, n_adapters: int, n: int, m: int, r: int) -> int:
        k = self.config.lag_k
        return 2 * n_adapters * n + n_adapters + 2 * k * r * n + 2 * k * r + 3 * k


class MeanRouter(Router):
    """MU: no selection; every token gets the mean update (1/N) sum_i B_i A x of all candidates."""

    method = RoutingMethod.MU
    needs_z = True

    def __init__(self, factors: StackedFactors, config: RoutingConfig) -> None:
        super().__init__(factors, config)
        self._mean_b = self.factors.b().mean(dim=0)  # (m, r)

    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return rows.new_zeros(rows.shape[0], self.num_adapters)  # every candidate weighs the same

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        raise InvalidInputError("method 'mu' mixes all adapters and selects none; use route() and update()")

    def decide(self, scores: torch.Tensor) -> RouteDecision:
        tokens = scores.shape[0]
        indices = torch.full((tokens, 1), -1, dtype=torch.long, device=scores.device)
        weights = torch.ones((tokens, 1), dtype=torch.float32, device=scores.device)
        return RouteDecision(indices=indices, weights=weights, scores=scores)

    def update_from_z(self, z: torch.Tensor, decision: RouteDecision) -> torch.Tensor:
        return z @ self._mean_b.T  # (T, m)

    def _flops(self, n_adapters: int, n: int, m: int, r: int) -> int:
        return 0


ROUTER_CLASSES: dict[RoutingMethod, type[Router]] = {
    RoutingMethod.SEQR: SeqrRouter,
    RoutingMethod.NAIVE: NaiveRouter,
    RoutingMethod.ARROW: ArrowRouter,
    RoutingMethod.SPECTR: SpectrRouter,
    RoutingMethod.LAG: LagRouter,
    RoutingMethod.MU: MeanRouter,
}


def build_router(factors: StackedFactors, config: RoutingConfig) -> Router:
    """Return the router of ``config.method`` over already stacked factors."""
    return ROUTER_CLASSES[config.method](factors, config)


def make_router(
    method: RoutingMethod | str,
    A: torch.Tensor,  # noqa: N803 - the shared A of the LoRA notation
    B: torch.Tensor | Sequence[torch.Tensor],  # noqa: N803
    *,
    mu: torch.Tensor | Sequence[float] | None = None,
    sigma: torch.Tensor | Sequence[float] | None = None,
    k: int | None = None,
    candidates: Sequence[int] | None = None,
    use_calibration: bool = True,
) -> Router:
    """Build a router over a library given as plain tensors.

    ``A`` is the shared (r, n) matrix, ``B`` a sequence of (m, r) tensors or an (N, m, r) tensor,
    ``mu`` and ``sigma`` (N,) calibration statistics (both or neither). ``k`` is LAG's filter size
    for method "lag" (default min(20, N)) and the top-k mixing size for the other methods (default
    1). ``candidates`` restricts routing to those indices of ``B``, in that order; the other B are
    never read. Raises :class:`InvalidInputError` for shapes, NaN or Inf, sigma <= 0, an empty
    candidate set or a k larger than it.
    """
    parsed = RoutingMethod.parse(method)
    factors = StackedFactors.from_b(A, B, mu=mu, sigma=sigma, candidates=candidates)
    if k is not None and k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}")
    if parsed is RoutingMethod.LAG:
        lag_k = k if k is not None else min(DEFAULT_LAG_K, factors.num_adapters)
        config = RoutingConfig(method=parsed, lag_k=lag_k, use_calibration=use_calibration)
    elif parsed is RoutingMethod.MU:
        if k is not None:
            raise InvalidInputError(f"method 'mu' mixes all adapters; k={k} does not apply, leave it unset")
        config = RoutingConfig(method=parsed, use_calibration=use_calibration)
    else:
        config = RoutingConfig(method=parsed, top_k=k or 1, use_calibration=use_calibration)
    return build_router(factors, config)

"""SEQR's router, and :func:`make_router` and :func:`build_router` over every method.

The interface and shared steps are in :mod:`seqr.routing.router`, the baselines in
:mod:`seqr.routing.baselines`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seqr.errors import InvalidInputError
from seqr.routing import native
from seqr.routing.baselines import ArrowRouter, LagRouter, MeanRouter, NaiveRouter, SpectrRouter
from seqr.routing.library import StackedFactors
from seqr.routing.methods import DEFAULT_LAG_K, RoutingConfig, RoutingMethod
from seqr.routing.router import (
    RouteDecision,
    Router,
    block_norms,
    chunk_rows,
    float32_math,
    masked_mean,
)

__all__ = [
    "ROUTER_CLASSES",
    "ArrowRouter",
    "LagRouter",
    "MeanRouter",
    "NaiveRouter",
    "RouteDecision",
    "Router",
    "SeqrRouter",
    "SpectrRouter",
    "build_router",
    "float32_math",
    "make_router",
    "masked_mean",
]


class SeqrRouter(Router):
    """(||R_i z|| - mu_i) / sigma_i with z = A x; ||R_i z|| = ||B_i A x|| because Q_i has orthonormal columns.

    ``scores`` multiplies every R_i with z. Routing decisions (``select``, ``route`` and the
    routed layers) use the quadratic form ||R_i z||^2 = z^T G_i z with the Gram matrix
    G_i = R_i^T R_i, whose r (r + 1) / 2 distinct entries need fewer multiply-adds than the
    r^2 of R_i z. Rounding in that form grows to about sqrt(eps) ||R_i|| ||z|| for norms near
    zero, so only near-zero norms lose relative precision, never a clear arg max.

    On the CPU with top-1 choice, ``select`` and the routed layers use the fused kernels of
    :mod:`seqr.routing.native` when they are available.
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
        self._native_tables: native.SelectTables | None = None
        self._native_fits = factors.device.type == "cpu" and factors.rank <= native.MAX_RANK and config.top_k == 1

    def token_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            raise InvalidInputError("SEQR scores need z = A x; call project(rows) first")
        return self._calibrate(block_norms(self._r_rows, z, self.num_adapters, self.factors.rank))

    def ranking_scores(self, rows: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        return self._calibrate(self._squared_norms(z).clamp_min_(0.0).sqrt_())

    def select(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self._kernels()
        if kernels is None:
            return super().select(x)
        # The kernels compute in float32 under any autocast setting, so no float32_math context is needed.
        tables = self._tables()
        plain = x.ndim == 2 and x.shape[1] == tables.n and x.dtype == torch.float32 and x.device.type == "cpu"
        index = kernels.select_index(x.contiguous() if plain else self._rows(x).contiguous(), tables)
        return index if x.ndim == 2 else index.reshape(x.shape[:-1])

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows(x)
        squared = self._squared_norms(self.project(rows))  # (T, N)
        if self.factors.mu is None:
            # The square root is monotonic, so raw norms rank like their squares.
            return squared.argmax(dim=-1).reshape(x.shape[:-1])
        return self._calibrate(squared.clamp_min_(0.0).sqrt_()).argmax(dim=-1).reshape(x.shape[:-1])

    def add_routed_update(self, rows: torch.Tensor, out: torch.Tensor, scale: float) -> bool:
        kernels = self._kernels()
        if kernels is None or out.device.type != "cpu":
            return False
        kernels.route_into(rows.contiguous(), self._tables(), out, scale)
        return True

    def _kernels(self) -> native.NativeKernels | None:
        return native.kernels() if self._native_fits else None

    def _tables(self) -> native.SelectTables:
        if self._native_tables is None:
            kernels = native.kernels()
            assert kernels is not None, "_tables() is only called once _kernels() returned the kernels"
            gram_t, offset = self._gram_t, None
            if self.factors.mu is not None and self.factors.sigma is not None:
                # (||R z|| - mu) / sigma = sqrt(z^T (G / sigma^2) z) - mu / sigma
                gram_t = gram_t / self.factors.sigma.square()
                offset = self.factors.mu / self.factors.sigma
            self._native_tables = native.SelectTables.build(
                self.factors.a, gram_t, offset, lanes=kernels.lanes, r=self.factors.r, q=self.factors.q
            )
        return self._native_tables

    def _squared_norms(self, z: torch.Tensor | None) -> torch.Tensor:
        """Return ||R_i z_t||^2 as a (T, N) tensor, chunked over tokens."""
        if z is None:
            raise InvalidInputError("SEQR scores need z = A x; call project(rows) first")
        z_t = z.T  # (r, T)
        step = chunk_rows(self._gram_t.shape[0] + self.num_adapters)
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

"""The baseline routers SEQR is compared with: NAIVE (the reference), ARROW, SPECTR, LAG and MU."""

from __future__ import annotations

import torch

from seqr.errors import InvalidInputError
from seqr.routing.library import StackedFactors
from seqr.routing.methods import RoutingConfig, RoutingMethod
from seqr.routing.router import RouteDecision, Router, block_norms, chunk_rows, masked_mean
from seqr.routing.spectral import arrow_prototypes, spectr_projections


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
        step = chunk_rows(m * z.shape[0])
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
        return self._calibrate(block_norms(self._projection_rows, rows, self.num_adapters, self.factors.rank))

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

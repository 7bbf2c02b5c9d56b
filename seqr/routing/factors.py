"""Adapter factors: the form in which every part of seqr exchanges a trained adapter.

An adapter adapts a set of modules (full module names such as ``model.layers.0.self_attn.q_proj``).
For each module the library fixes a frozen A (r, n); the adapter's trained B (m, r) is kept as its
reduced QR factors B = Q R, with Q (m, r) having orthonormal columns and R (r, r) upper
triangular, plus the calibration statistics mu and sigma of ||B A x|| on the adapter's own
training inputs. Because Q has orthonormal columns, ||R z|| = ||B z|| for every z.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from seqr.errors import InvalidInputError


def all_finite(tensor: torch.Tensor) -> bool:
    """Return whether ``tensor`` contains no NaN and no Inf, decided with one reduction.

    A floating-point sum is finite only when every term is, so a finite sum settles it without
    the element-wise pass of ``torch.isfinite``. Only when the sum is not finite (a NaN or an Inf,
    or finite values whose sum overflows) is every element checked.
    """
    if not tensor.is_floating_point():
        return True
    if torch.isfinite(tensor.sum()):
        return True
    return bool(torch.isfinite(tensor).all())


@dataclass(frozen=True)
class ModuleFactors:
    """The factors of one adapted module of one adapter.

    ``q`` is (m, r) with orthonormal columns, ``r`` is (r, r) upper triangular, so B = q @ r.
    ``mu`` and ``sigma`` are the calibration statistics of ||B A x||; both are None when the
    adapter has not been calibrated.
    """

    q: torch.Tensor
    r: torch.Tensor
    mu: float | None = None
    sigma: float | None = None

    @classmethod
    def from_b(cls, b: torch.Tensor, *, mu: float | None = None, sigma: float | None = None) -> ModuleFactors:
        """Factor B (m, r) as Q R in float32.

        A rank-deficient B (an untrained, all-zero B included) is fine: Householder QR still returns
        orthonormal columns in Q, and the missing directions get zero rows in R.
        """
        if b.ndim != 2:
            raise InvalidInputError(f"B must be a 2-D (m, r) matrix, got shape {tuple(b.shape)}")
        if b.shape[0] < b.shape[1]:
            raise InvalidInputError(
                f"B has shape {tuple(b.shape)}: m={b.shape[0]} is smaller than the rank r={b.shape[1]}; "
                "pass B as (out_features, rank)"
            )
        if not torch.isfinite(b).all():
            raise InvalidInputError("B contains NaN or Inf values; retrain or re-export the adapter")
        q, r = torch.linalg.qr(b.detach().to(torch.float32), mode="reduced")
        return cls(q=q.contiguous(), r=r.contiguous(), mu=mu, sigma=sigma)

    @property
    def rank(self) -> int:
        return int(self.r.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.q.shape[0])

    def b(self) -> torch.Tensor:
        """Rebuild B = Q R (m, r)."""
        return self.q @ self.r

    def with_calibration(self, mu: float, sigma: float) -> ModuleFactors:
        return ModuleFactors(q=self.q, r=self.r, mu=mu, sigma=sigma)


@dataclass(frozen=True)
class AdapterFactors:
    """All adapted modules of one adapter, keyed by full module name."""

    modules: Mapping[str, ModuleFactors] = field(default_factory=dict)

    @property
    def is_calibrated(self) -> bool:
        return all(f.mu is not None and f.sigma is not None for f in self.modules.values())

    def nbytes(self) -> int:
        """Bytes of all Q and R tensors."""
        return sum(f.q.nbytes + f.r.nbytes for f in self.modules.values())

"""Spectral views computed from R_i R_a^T equal the SVD of the full B_i A."""

from __future__ import annotations

import torch

from seqr.routing.library import StackedFactors
from seqr.routing.spectral import arrow_prototypes, right_singular_rows, spectr_projections


def _factors(seed: int = 0) -> tuple[StackedFactors, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 24, generator=generator)
    b = torch.randn(7, 16, 4, generator=generator)
    return StackedFactors.from_b(a, b), a, b


def test_singular_values_match_full_svd() -> None:
    factors, a, b = _factors()

    s, _ = right_singular_rows(factors)

    torch.testing.assert_close(s, torch.linalg.svdvals(b @ a)[:, :4], rtol=1e-4, atol=1e-4)


def test_prototype_is_top_right_singular_vector() -> None:
    factors, a, b = _factors(1)

    prototypes = arrow_prototypes(factors)

    _, _, vt = torch.linalg.svd(b @ a, full_matrices=False)
    cosine = (prototypes * vt[:, 0, :]).sum(-1).abs()
    torch.testing.assert_close(cosine, torch.ones(7), rtol=1e-4, atol=1e-4)


def test_spectr_projection_preserves_norm() -> None:
    factors, a, b = _factors(2)
    x = torch.randn(24, 5)

    projected = spectr_projections(factors) @ x  # (N, r, 5)

    torch.testing.assert_close(projected.norm(dim=1), (b @ a @ x).norm(dim=1), rtol=1e-4, atol=1e-4)

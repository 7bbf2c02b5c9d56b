"""Spectral views of B_i A for the ARROW, SPECTR and LAG baselines, computed without forming B_i A.

With the thin QR factorisation A^T = Q_a R_a (Q_a (n, r), R_a (r, r)), B_i A = Q_i (R_i R_a^T) Q_a^T.
The SVD of the small (r, r) matrix M_i = R_i R_a^T = U_i S_i W_i^T then gives the SVD of B_i A:
left singular vectors Q_i U_i, singular values S_i and right singular vectors Q_a W_i. So every
spectral quantity costs one batched (r, r) SVD and one (N r, r) x (r, n) product.
"""

from __future__ import annotations

import torch

from seqr.routing.library import StackedFactors


def right_singular_rows(factors: StackedFactors) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (S, Vt): singular values (N, r), descending, and right singular vectors (N, r, n) of each B_i A."""
    q_a, r_a = torch.linalg.qr(factors.a.T, mode="reduced")  # (n, r), (r, r)
    m_small = factors.r @ r_a.T  # (N, r, r)
    _, s, wt = torch.linalg.svd(m_small)  # s (N, r), wt (N, r, r)
    vt = wt @ q_a.T  # (N, r, n)
    return s, vt


def arrow_prototypes(factors: StackedFactors) -> torch.Tensor:
    """Return the top right singular vector of every B_i A as rows of an (N, n) matrix (sign arbitrary)."""
    _, vt = right_singular_rows(factors)
    return vt[:, 0, :].contiguous()  # (N, n)


def spectr_projections(factors: StackedFactors) -> torch.Tensor:
    """Return Â_i = S_i V_i^T for every adapter as an (N, r, n) tensor; ||Â_i x|| = ||B_i A x||."""
    s, vt = right_singular_rows(factors)
    return (s.unsqueeze(-1) * vt).contiguous()  # (N, r, n)

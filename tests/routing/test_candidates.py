"""Routing over a candidate subset never reads the adapters outside it."""

from __future__ import annotations

import torch

from seqr.routing import make_router


def _library(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(4, 16, generator=generator),
        torch.randn(10, 12, 4, generator=generator),
        torch.randn(20, 16, generator=generator),
    )


def test_subset_scores_equal_full_columns() -> None:
    a, b, x = _library()
    candidates = [7, 2, 5]

    subset = make_router("seqr", a, b, candidates=candidates).scores(x)

    torch.testing.assert_close(subset, make_router("seqr", a, b).scores(x)[:, candidates])


def test_outside_adapter_with_nan_is_never_read() -> None:
    a, b, x = _library()
    b[0] = float("nan")  # unusable, but not a candidate
    mu = torch.zeros(10)
    sigma = torch.ones(10)
    sigma[0] = -1.0  # invalid, but not a candidate

    router = make_router("seqr", a, b, mu=mu, sigma=sigma, candidates=[1, 2, 3])

    assert torch.isfinite(router.scores(x)).all()


def test_outside_copy_of_winner_cannot_win_tie() -> None:
    a, b, x = _library()
    b[9] = b[4] * 100  # would win every token if it were a candidate

    chosen = make_router("seqr", a, b, candidates=[4, 1]).select(x)

    assert chosen.max().item() <= 1  # positions in the subset only


def test_subset_tensors_hold_only_candidates() -> None:
    a, b, _ = _library()

    router = make_router("seqr", a, b, candidates=[3, 8])

    assert router.factors.q.shape[0] == 2
    torch.testing.assert_close(router.factors.b(), b[[3, 8]], rtol=1e-5, atol=1e-5)

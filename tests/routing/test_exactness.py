"""SEQR and SPECTR choose what NAIVE chooses on random libraries; LAG reduces to SPECTR and ARROW."""

from __future__ import annotations

import math

import pytest
import torch

from seqr.routing import make_router

# (N adapters, rank r, in features n, out features m, tokens)
SHAPES = [
    pytest.param(1000, 8, 64, 48, 48, id="N1000-r8"),
    pytest.param(300, 4, 32, 96, 40, id="N300-r4-wide-m"),
    pytest.param(60, 16, 128, 16, 32, id="N60-r16-m-equals-r"),
    pytest.param(5, 1, 10, 3, 20, id="N5-r1"),
]
DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.bfloat16, id="bfloat16"),
    pytest.param(torch.float16, id="float16"),
]


def _library(
    n_adapters: int, rank: int, n: int, m: int, tokens: int, dtype: torch.dtype, seed: int = 0, device: str | torch.device = "cpu"
):
    generator = torch.Generator().manual_seed(seed)
    a = (torch.randn(rank, n, generator=generator) / math.sqrt(n)).to(dtype)
    # Per-adapter scales spread the norms, as trained adapters do.
    scales = torch.rand(n_adapters, 1, 1, generator=generator) + 0.5
    b = (torch.randn(n_adapters, m, rank, generator=generator) * scales).to(dtype)
    x = torch.randn(tokens, n, generator=generator).to(dtype)
    return a.to(device), b.to(device), x.to(device)


def _assert_same_choice_up_to_ties(chosen: torch.Tensor, reference_scores: torch.Tensor) -> None:
    """Every choice is NAIVE's arg max, or scores within float tolerance of it."""
    best = reference_scores.max(dim=-1).values
    picked = reference_scores.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    gap = (best - picked) / best.abs().clamp_min(1e-6)
    assert gap.max().item() <= 1e-5, f"largest relative gap to NAIVE's best score: {gap.max().item()}"
    exact = (chosen == reference_scores.argmax(dim=-1)).float().mean().item()
    assert exact >= 0.95, f"only {exact:.2%} of tokens picked NAIVE's exact arg max"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_adapters", "rank", "n", "m", "tokens"), SHAPES)
def test_seqr_matches_naive(
    n_adapters: int, rank: int, n: int, m: int, tokens: int, dtype: torch.dtype, device: torch.device
) -> None:
    a, b, x = _library(n_adapters, rank, n, m, tokens, dtype, device=device)
    naive = make_router("naive", a, b).scores(x)
    seqr = make_router("seqr", a, b)

    scores = seqr.scores(x)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, naive, rtol=1e-4, atol=1e-5 * naive.abs().max().item())
    _assert_same_choice_up_to_ties(seqr.select(x), naive)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_adapters", "rank", "n", "m", "tokens"), SHAPES)
def test_spectr_matches_naive(
    n_adapters: int, rank: int, n: int, m: int, tokens: int, dtype: torch.dtype, device: torch.device
) -> None:
    a, b, x = _library(n_adapters, rank, n, m, tokens, dtype, device=device)
    naive = make_router("naive", a, b).scores(x)
    spectr = make_router("spectr", a, b)

    torch.testing.assert_close(spectr.scores(x), naive, rtol=1e-3, atol=1e-4 * naive.abs().max().item())
    _assert_same_choice_up_to_ties(spectr.select(x), naive)


@pytest.mark.parametrize("method", ["seqr", "spectr"])
def test_calibrated_choice_matches_naive(method: str, device: torch.device) -> None:
    a, b, x = _library(400, 8, 64, 32, 48, torch.float32, seed=3, device=device)
    generator = torch.Generator().manual_seed(4)
    mu = (torch.rand(400, generator=generator) * 2).to(device)
    sigma = (torch.rand(400, generator=generator) + 0.1).to(device)
    naive = make_router("naive", a, b, mu=mu, sigma=sigma).scores(x)

    router = make_router(method, a, b, mu=mu, sigma=sigma)

    _assert_same_choice_up_to_ties(router.select(x), naive)


def test_lag_with_all_adapters_equals_spectr(device: torch.device) -> None:
    a, b, x = _library(80, 4, 32, 24, 40, torch.float32, seed=5, device=device)

    lag = make_router("lag", a, b, k=80).select(x)

    assert torch.equal(lag, make_router("spectr", a, b).select(x))


def test_lag_with_one_adapter_equals_arrow(device: torch.device) -> None:
    a, b, x = _library(80, 4, 32, 24, 40, torch.float32, seed=6, device=device)

    lag = make_router("lag", a, b, k=1).select(x)

    assert torch.equal(lag, make_router("arrow", a, b).select(x))


def test_lag_scores_only_its_filter() -> None:
    a, b, x = _library(50, 4, 32, 24, 10, torch.float32, seed=7)

    scores = make_router("lag", a, b, k=5).scores(x)

    assert torch.isfinite(scores).sum(dim=-1).tolist() == [5] * 10


def test_zero_adapter_scores_zero() -> None:
    a, b, x = _library(4, 4, 16, 8, 6, torch.float32, seed=8)
    b[2] = 0.0

    scores = make_router("seqr", a, b).scores(x)

    assert torch.isfinite(scores).all()
    assert scores[:, 2].abs().max().item() == 0.0
    assert torch.isfinite(make_router("arrow", a, b).scores(x)).all()
    assert torch.isfinite(make_router("spectr", a, b).scores(x)).all()


def test_scores_keep_leading_dimensions() -> None:
    a, b, x = _library(6, 4, 16, 8, 12, torch.float32, seed=9)
    router = make_router("seqr", a, b)

    batched = router.scores(x.view(3, 4, 16))

    assert batched.shape == (3, 4, 6)
    torch.testing.assert_close(batched.view(12, 6), router.scores(x))
    assert router.select(x.view(3, 4, 16)).shape == (3, 4)


@pytest.mark.parametrize("calibrated", [False, True], ids=["raw", "calibrated"])
def test_seqr_route_scores_match_scores(calibrated: bool, device: torch.device) -> None:
    a, b, x = _library(300, 8, 64, 32, 40, torch.float32, seed=10, device=device)
    statistics = {"mu": torch.full((300,), 0.5, device=device), "sigma": torch.full((300,), 2.0, device=device)} if calibrated else {}
    router = make_router("seqr", a, b, **statistics)

    decision = router.route(x)

    scores = router.scores(x)
    torch.testing.assert_close(decision.scores, scores, rtol=1e-4, atol=1e-4 * scores.abs().max().item())
    assert torch.equal(decision.indices[:, 0], router.select(x))


def test_seqr_select_with_rank_deficient_adapters(device: torch.device) -> None:
    a, b, x = _library(200, 8, 64, 32, 64, torch.float32, seed=11, device=device)
    b[::2, :, 4:] = 0.0  # half the adapters have rank 4
    b[1] = 0.0

    chosen = make_router("seqr", a, b).select(x)

    _assert_same_choice_up_to_ties(chosen, make_router("naive", a, b).scores(x))

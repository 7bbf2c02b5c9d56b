"""Property tests on random library shapes: SEQR's scores are NAIVE's norms, and its choice is NAIVE's."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqr.routing import make_router


@settings(max_examples=25, deadline=None)
@given(
    n_adapters=st.integers(1, 40),
    rank=st.integers(1, 8),
    extra_n=st.integers(0, 40),
    extra_m=st.integers(0, 40),
    tokens=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_seqr_equals_naive_on_any_shape(
    n_adapters: int, rank: int, extra_n: int, extra_m: int, tokens: int, seed: int
) -> None:
    n, m = rank + extra_n, rank + extra_m
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, n, generator=generator) / math.sqrt(n)
    b = torch.randn(n_adapters, m, rank, generator=generator)
    x = torch.randn(tokens, n, generator=generator)
    naive = make_router("naive", a, b).scores(x)

    seqr = make_router("seqr", a, b)

    scale = naive.abs().max().item()
    torch.testing.assert_close(seqr.scores(x), naive, rtol=1e-4, atol=1e-5 * scale + 1e-6)
    picked = naive.gather(-1, seqr.select(x).unsqueeze(-1)).squeeze(-1)
    best = naive.max(dim=-1).values
    assert ((best - picked) <= 1e-5 * best.abs() + 1e-6).all()

"""Bad libraries and options are rejected at construction, with the bad value in the message."""

from __future__ import annotations

import pytest
import torch

from seqr.errors import InvalidInputError
from seqr.routing import make_router


def _good() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "A": torch.randn(4, 16, generator=generator),
        "B": torch.randn(6, 12, 4, generator=generator),
        "mu": torch.zeros(6),
        "sigma": torch.ones(6),
    }


def _with_nan(tensor: torch.Tensor, value: float) -> torch.Tensor:
    bad = tensor.clone()
    bad.view(-1)[3] = value
    return bad


CASES = [
    pytest.param({"B": torch.randn(6, 12, 3)}, {}, "rank r=4", id="B-rank-differs-from-A"),
    pytest.param({"B": [torch.randn(12, 4), torch.randn(10, 4)], "mu": None, "sigma": None}, {}, "m=10", id="B-m-differs"),
    pytest.param({"B": torch.randn(6, 12)}, {}, "(6, 12)", id="B-not-3d"),
    pytest.param({"A": torch.randn(4)}, {}, "(4,)", id="A-not-2d"),
    pytest.param({"A": torch.randn(20, 16)}, {}, "r=20", id="A-rank-above-n"),
    pytest.param({"A": _with_nan(torch.randn(4, 16), float("nan"))}, {}, "shared A contains NaN", id="A-nan"),
    pytest.param({"A": _with_nan(torch.randn(4, 16), float("inf"))}, {}, "shared A contains NaN or Inf", id="A-inf"),
    pytest.param({"B": _with_nan(torch.randn(6, 12, 4), float("nan"))}, {}, "B[0] contains NaN", id="B-nan"),
    pytest.param({"B": _with_nan(torch.randn(6, 12, 4), float("-inf"))}, {}, "B[0]", id="B-inf"),
    pytest.param({"sigma": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])}, {}, "sigma of adapter 2 is 0.0", id="sigma-zero"),
    pytest.param({"sigma": -torch.ones(6)}, {}, "sigma of adapter 0 is -1.0", id="sigma-negative"),
    pytest.param({"sigma": torch.ones(5)}, {}, "sigma has 5 values for 6", id="sigma-wrong-length"),
    pytest.param({"mu": _with_nan(torch.zeros(6), float("nan"))}, {}, "mu contains NaN", id="mu-nan"),
    pytest.param({"sigma": None}, {}, "both mu and sigma", id="mu-without-sigma"),
    pytest.param({"B": []}, {}, "candidate set is empty", id="empty-library"),
    pytest.param({}, {"candidates": []}, "candidate set is empty", id="empty-candidates"),
    pytest.param({}, {"candidates": [0, 9]}, "candidate index 9", id="candidate-out-of-range"),
    pytest.param({}, {"candidates": [1, 1]}, "lists an adapter twice", id="candidate-repeated"),
    pytest.param({}, {"k": 7}, "top_k=7 exceeds the 6 adapters", id="top-k-above-candidates"),
    pytest.param({}, {"k": 3, "candidates": [0, 1]}, "top_k=3 exceeds the 2 adapters", id="top-k-above-subset"),
    pytest.param({}, {"k": 0}, "k must be at least 1, got 0", id="k-zero"),
    pytest.param({}, {"method": "lag", "k": 7}, "LAG's k=7 exceeds the 6 adapters", id="lag-k-above-candidates"),
    pytest.param({}, {"method": "mu", "k": 2}, "k=2 does not apply", id="mu-with-k"),
    pytest.param({}, {"method": "moe"}, "unknown routing method 'moe'", id="unknown-method"),
]


@pytest.mark.parametrize(("changes", "options", "message"), CASES)
def test_bad_input_rejected(changes: dict, options: dict, message: str) -> None:
    arguments = _good() | changes
    method = options.pop("method", "seqr")

    with pytest.raises(InvalidInputError) as raised:
        make_router(method, arguments["A"], arguments["B"], mu=arguments["mu"], sigma=arguments["sigma"], **options)

    assert message in str(raised.value)


def test_wrong_input_width_rejected() -> None:
    arguments = _good()
    router = make_router("seqr", arguments["A"], arguments["B"])

    with pytest.raises(InvalidInputError, match="n=16"):
        router.scores(torch.randn(3, 15))


def test_mu_select_rejected() -> None:
    arguments = _good()
    router = make_router("mu", arguments["A"], arguments["B"])

    with pytest.raises(InvalidInputError, match="selects none"):
        router.select(torch.randn(3, 16))


def test_rank_deficient_b_accepted() -> None:
    arguments = _good()
    b = arguments["B"].clone()
    b[0] = 0.0
    b[1, :, 1] = b[1, :, 0]  # two equal columns: rank 3 of 4

    for method in ("seqr", "naive", "arrow", "spectr", "lag", "mu"):
        router = make_router(method, arguments["A"], b, k=3 if method == "lag" else None)
        assert torch.isfinite(router.scores(torch.randn(5, 16))).any()

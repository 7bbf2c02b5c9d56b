"""The SEQR paper's Theorem 3.1 example, where ARROW and norm maximisation disagree.

Adapter C = diag(2, 1); adapter D = U S V^T with U = I, singular values (3, 1) and right singular
vectors (1, 1)/sqrt(2) and (1, -1)/sqrt(2). For x = (1, 0): ||C x|| = 2 and ||D x|| = sqrt(5), so
norm maximisation picks D, while ARROW's |v . x| is 1 for C and 1/sqrt(2) for D, so it picks C.
"""

from __future__ import annotations

import math

import pytest
import torch

from seqr.routing import make_router

C, D = 0, 1


@pytest.fixture
def library(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a = torch.eye(2)  # r = n = 2, so B_i A = B_i
    adapter_c = torch.diag(torch.tensor([2.0, 1.0]))
    v = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)  # columns: right singular vectors
    adapter_d = torch.eye(2) @ torch.diag(torch.tensor([3.0, 1.0])) @ v.T
    x = torch.tensor([[1.0, 0.0]])
    return a.to(device), torch.stack([adapter_c, adapter_d]).to(device), x.to(device)


@pytest.mark.parametrize(("method", "expected"), [("arrow", C), ("seqr", D), ("naive", D), ("spectr", D)])
def test_theorem_choice(library, method: str, expected: int) -> None:
    a, b, x = library

    assert make_router(method, a, b).select(x).tolist() == [expected]


def test_theorem_norms(library) -> None:
    a, b, x = library

    scores = make_router("seqr", a, b).scores(x)

    torch.testing.assert_close(scores.cpu(), torch.tensor([[2.0, math.sqrt(5.0)]]))


def test_theorem_arrow_scores(library) -> None:
    a, b, x = library

    scores = make_router("arrow", a, b).scores(x)

    torch.testing.assert_close(scores.cpu(), torch.tensor([[1.0, 1 / math.sqrt(2.0)]]))

"""The routed update equals the explicit per-token sum of scaled B_i A x."""

from __future__ import annotations

import pytest
import torch

from seqr.routing import make_router
from seqr.routing.update import routed_update


def _explicit(b: torch.Tensor, z: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    rows = []
    for t in range(z.shape[0]):
        rows.append(sum(weights[t, j] * (b[indices[t, j]] @ z[t]) for j in range(indices.shape[1])))
    return torch.stack(rows)


@pytest.mark.parametrize("distinct", [3, 40], ids=["grouped", "gathered"])
@pytest.mark.parametrize("k", [1, 3])
def test_update_matches_explicit_sum(distinct: int, k: int, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(k + distinct)
    n_adapters, m, rank, tokens = 50, 20, 4, 48
    b = torch.randn(n_adapters, m, rank, generator=generator)
    q, r = torch.linalg.qr(b)
    z = torch.randn(tokens, rank, generator=generator)
    indices = torch.randint(0, distinct, (tokens, k), generator=generator)
    weights = torch.softmax(torch.randn(tokens, k, generator=generator), dim=-1)

    update = routed_update(q.to(device), r.to(device), z.to(device), indices.to(device), weights.to(device))

    torch.testing.assert_close(update.cpu(), _explicit(b, z, indices, weights), rtol=1e-4, atol=1e-4)


def test_gather_chunks_cover_all_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    import seqr.routing.update as update_module

    monkeypatch.setattr(update_module, "GATHER_BUDGET_ELEMENTS", 3 * 20 * 4)  # three tokens per chunk
    generator = torch.Generator().manual_seed(1)
    b = torch.randn(30, 20, 4, generator=generator)
    q, r = torch.linalg.qr(b)
    z = torch.randn(10, 4, generator=generator)
    indices = torch.arange(10).unsqueeze(-1)

    update = routed_update(q, r, z, indices, torch.ones(10, 1))

    torch.testing.assert_close(update, _explicit(b, z, indices, torch.ones(10, 1)), rtol=1e-4, atol=1e-4)


def test_top_k_weights_are_softmax_of_scores() -> None:
    generator = torch.Generator().manual_seed(2)
    a, b, x = torch.randn(4, 16, generator=generator), torch.randn(8, 12, 4, generator=generator), torch.randn(5, 16, generator=generator)
    router = make_router("seqr", a, b, k=3)

    decision = router.route(x)

    values = decision.scores.gather(-1, decision.indices)
    torch.testing.assert_close(decision.weights, torch.softmax(values, dim=-1))
    assert torch.equal(decision.indices[:, 0], decision.scores.argmax(-1))


def test_router_update_uses_selected_adapter() -> None:
    generator = torch.Generator().manual_seed(3)
    a, b, x = torch.randn(4, 16, generator=generator), torch.randn(8, 12, 4, generator=generator), torch.randn(5, 16, generator=generator)
    router = make_router("seqr", a, b)

    decision = router.route(x)
    update = router.update(x, decision)

    expected = torch.stack([b[i] @ (a @ x[t]) for t, i in enumerate(decision.indices[:, 0].tolist())])
    torch.testing.assert_close(update, expected, rtol=1e-4, atol=1e-4)


def test_mean_update_averages_all_adapters() -> None:
    generator = torch.Generator().manual_seed(4)
    a, b, x = torch.randn(4, 16, generator=generator), torch.randn(8, 12, 4, generator=generator), torch.randn(5, 16, generator=generator)
    router = make_router("mu", a, b)

    update = router.update(x, router.route(x))

    torch.testing.assert_close(update, (x @ a.T) @ b.mean(0).T, rtol=1e-4, atol=1e-4)

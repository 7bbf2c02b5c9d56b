"""The LoRA update of routed tokens: y = sum_j w_j Q_{i_j} (R_{i_j} z), without a (T, N, m) tensor.

When the groups are large (few distinct adapters, as in per-sequence routing), the tokens that
share an adapter are multiplied with its Q at once. Otherwise each token's Q is gathered, in
chunks that bound the gathered (chunk, m, r) tensor.
"""

from __future__ import annotations

import torch

# Upper bound on the elements of one gathered (chunk, m, r) block of Q: 16 Mi floats, 64 MiB.
GATHER_BUDGET_ELEMENTS = 1 << 24
# Group tokens by adapter when, on average, at least this many (token, adapter) pairs share one.
MIN_MEAN_GROUP_SIZE = 8


def routed_update(
    q: torch.Tensor, r: torch.Tensor, z: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Return sum_j weights[t, j] * Q[indices[t, j]] @ R[indices[t, j]] @ z[t] for every token t.

    ``q`` (N, m, r), ``r`` (N, r, r), ``z`` (T, r) float32; ``indices`` (T, k) long, ``weights``
    (T, k). Returns (T, m) float32.
    """
    tokens, k = indices.shape
    m = q.shape[1]
    flat = indices.reshape(-1)  # (T*k,)
    z_rows = z if k == 1 else z.repeat_interleave(k, dim=0)  # (T*k, r)
    u = torch.bmm(r[flat], z_rows.unsqueeze(-1)).squeeze(-1)  # (T*k, r)
    u = u * weights.reshape(-1, 1).to(u.dtype)

    distinct = torch.unique(flat)
    if distinct.numel() * MIN_MEAN_GROUP_SIZE <= flat.numel():
        out = _grouped(q, u, flat)
    else:
        out = _gathered(q, u, flat)
    out = out.view(tokens, k, m)  # (T, k, m)
    return out[:, 0] if k == 1 else out.sum(dim=1)


def _grouped(q: torch.Tensor, u: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(flat)
    adapters, counts = torch.unique_consecutive(flat[order], return_counts=True)
    out = u.new_empty(flat.numel(), q.shape[1])  # (T*k, m)
    for adapter, rows in zip(adapters.tolist(), torch.split(order, counts.tolist()), strict=True):
        out[rows] = u[rows] @ q[adapter].T  # (group, m)
    return out


def _gathered(q: torch.Tensor, u: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    m, rank = q.shape[1], q.shape[2]
    chunk = max(1, GATHER_BUDGET_ELEMENTS // (m * rank))
    out = u.new_empty(flat.numel(), m)  # (T*k, m)
    for start in range(0, flat.numel(), chunk):
        stop = start + chunk
        q_rows = q[flat[start:stop]]  # (chunk, m, r)
        out[start:stop] = torch.bmm(q_rows, u[start:stop].unsqueeze(-1)).squeeze(-1)
    return out

"""The routed LoRA update Q_i (R_i z) of T tokens: the native kernel, routed_update and one sparse product.

All get the same random Q (N, m, r), R (N, r, r), z (T, r) and a uniformly random adapter per
token, which is what per-token routing among N similar adapters produces. ``routed_update`` is
the torch path of seqr/routing/update.py (CUDA, per-sequence and top-k routing use it). The
native kernel (seqr/routing/kernels.c) adds the update into an existing (T, m) output, as the
routed layers do on the CPU. The sparse product is a (T, N r) CSR matrix, whose row t holds
u_t = R_{i_t} z_t in adapter i_t's r columns, times Q stacked as (N r, m) rows. Each time is the
fastest of ``--repeats`` interleaved calls.

Example (the recorded run):
    python benchmarks/bench_routed_update.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

import torch

from seqr.routing import native
from seqr.routing.update import routed_update


def sparse_update(q_rows: torch.Tensor, r: torch.Tensor, z: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Return Q_{i_t} R_{i_t} z_t for top-1 ``indices`` (T,) as one CSR x dense product: (T, m)."""
    tokens, rank = z.shape
    u = torch.bmm(r[indices], z.unsqueeze(-1)).squeeze(-1)  # (T, r)
    columns = (indices.unsqueeze(1) * rank + torch.arange(rank, device=z.device)).reshape(-1)  # (T r,)
    row_starts = torch.arange(0, tokens * rank + 1, rank, device=z.device)  # (T + 1,)
    selection = torch.sparse_csr_tensor(
        row_starts, columns, u.reshape(-1), size=(tokens, q_rows.shape[0]), check_invariants=False
    )
    return selection @ q_rows  # (T, m)


def fastest(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", default="10,100,1000", help="Comma-separated N.")
    parser.add_argument("--out-features", default="576,192", help="Comma-separated m (SmolLM2-135M: q/o 576, k/v 192).")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2048, help="T: 8 prompts of 256 tokens.")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="Torch intra-op threads (default: torch's choice).")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    kernels = native.kernels()
    print(json.dumps({"seqr_kernels": str(native.status())}), flush=True)
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for count in (int(part) for part in args.adapters.split(",")):
            for m in (int(part) for part in args.out_features.split(",")):
                q, r = torch.linalg.qr(torch.randn(count, m, args.rank, generator=generator))  # (N, m, r), (N, r, r)
                q_rows = q.transpose(1, 2).reshape(-1, m).contiguous()  # (N r, m)
                z = torch.randn(args.tokens, args.rank, generator=generator)
                indices = torch.randint(0, count, (args.tokens,), generator=generator)
                weights = torch.ones(args.tokens, 1)
                expected = routed_update(q, r, z, indices.unsqueeze(1), weights)
                torch.testing.assert_close(sparse_update(q_rows, r, z, indices), expected, rtol=1e-4, atol=1e-4)
                calls: dict[str, Callable[[], object]] = {
                    "routed_update": lambda: routed_update(q, r, z, indices.unsqueeze(1), weights),
                    "sparse": lambda: sparse_update(q_rows, r, z, indices),
                }
                if kernels is not None:
                    q_t, r_rows, out = q.transpose(1, 2).contiguous(), r.contiguous(), torch.zeros(args.tokens, m)
                    kernels.add_update(out, z, indices, r_rows, q_t, 1.0)
                    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
                    # The timed calls keep adding into the same output, as a routed layer adds into its base output.
                    calls["native"] = lambda: kernels.add_update(out, z, indices, r_rows, q_t, 1.0)
                best = fastest(calls, args.repeats)
                row = {"adapters": count, "out_features": m, "tokens": args.tokens, "rank": args.rank}
                row.update({f"{name}_ms": seconds * 1e3 for name, seconds in best.items()})
                rows.append(row)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

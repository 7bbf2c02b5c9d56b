"""Cold start of a routed SmolLM2-135M-Instruct: resolve, decrypt, device transfer, attach, first forward.

A registry (SQLite in a temporary directory) gets one rank ``--rank`` library on q/k/v/o of every
layer and, for the largest N in ``--adapters``, that many silos, each with one active synthetic
adapter added through the registry API (encrypted like a trained one). For each N a user is
granted the first N silos; the benchmark then logs in as that user, loads the routed model and
runs one forward (the logits of the first token to generate), reading ``load_timings``. A second
load by the same user shows the device cache: no decryption. Device memory per adapter is the
bytes of every distinct tensor storage the cache and the routed layers hold, divided by N,
against the bytes of one adapter's Q and R.

Example (the recorded run):
    python benchmarks/bench_cold_start.py --adapters 100,1000 --json cold_start.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from seqr.api import RoutedLanguageModel, login
from seqr.api.session import adapter_cache, share_weights
from seqr.registry.registry import Registry
from seqr.routing.benchmark import describe_machine
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.training.base_model import BaseModel, load_base_model
from seqr.training.library import create_library

logger = logging.getLogger("bench_cold_start")

ADMIN_TOKEN_FILE = "bench-admin-token"
FILL_CHUNK = 100
PROMPT = "Summarise the refund policy for orders that arrive damaged."


def synthetic_adapters(shapes: dict[str, tuple[int, int]], count: int, seed: int) -> list[AdapterFactors]:
    """Return ``count`` random adapters with calibration statistics for modules of (out_features, rank) B.

    One batched QR per module: a QR per adapter and module took about 10 ms on the 2-core machine.
    """
    generator = torch.Generator().manual_seed(seed)
    per_adapter: list[dict[str, ModuleFactors]] = [{} for _ in range(count)]
    for name, (m, rank) in shapes.items():
        q, r = torch.linalg.qr(torch.randn(count, m, rank, generator=generator) * 0.01)  # (N, m, r), (N, r, r)
        for i in range(count):
            per_adapter[i][name] = ModuleFactors(q=q[i].clone(), r=r[i].clone(), mu=1.0, sigma=0.5)
    return [AdapterFactors(modules) for modules in per_adapter]


def fill(registry: Registry, admin_token: str, base: BaseModel, count: int, rank: int) -> tuple[Any, float]:
    """Store the library and ``count`` silos with active adapters; return the admin and the seconds it took."""
    admin = registry.authenticate(admin_token)
    library = create_library(base.model, base_fingerprint=base.fingerprint, rank=rank, alpha=2.0 * rank, seed=0)
    registry.add_library(
        admin, "main", base_model_fingerprint=base.fingerprint, target_modules=list(library.module_names),
        rank=library.rank, alpha=library.alpha, seed=library.seed, shared_a=library.a,
    )
    shapes = {name: (base.model.get_submodule(name).out_features, rank) for name in library.module_names}
    start = time.perf_counter()
    for first in range(0, count, FILL_CHUNK):
        chunk = synthetic_adapters(shapes, min(FILL_CHUNK, count - first), seed=first)
        for i, factors in enumerate(chunk, start=first):
            silo = f"silo-{i:04d}"
            registry.create_silo(admin, silo)
            version = registry.add_adapter_version(admin, silo, "main", factors)
            registry.activate_adapter_version(admin, version.id)
        logger.info("stored %d adapters in %.1f s", first + len(chunk), time.perf_counter() - start)
    return admin, time.perf_counter() - start


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Return the bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def device_tensors(model: RoutedLanguageModel, registry: Registry) -> list[torch.Tensor]:
    """Return every adapter tensor the device cache and the routed layers of ``model`` hold."""
    tensors: list[torch.Tensor] = []
    cache = adapter_cache(registry, model.device)
    for key in cache.keys():
        factors = cache.get_or_load(key, lambda: AdapterFactors({}))
        for module in factors.modules.values():
            tensors += [module.q, module.r]
    routed = model._routed  # noqa: SLF001 - a benchmark may look inside to count bytes
    if routed is not None:
        for layer in routed.layers.values():
            router = layer.router
            for holder in (router, router.factors):
                tensors += [value for name, value in vars(holder).items() if isinstance(value, torch.Tensor) and name != "a"]
    return tensors


def open_or_fill(directory: Path, base: BaseModel, count: int, rank: int) -> tuple[Registry, Any, float | None]:
    """Open the registry filled by an earlier run in ``directory``, or create and fill it there.

    The admin's token is kept in ``ADMIN_TOKEN_FILE`` inside the directory, so that a slow fill can
    run once and the measurement later (each measured user is new, with a unique name).
    """
    token_file = directory / ADMIN_TOKEN_FILE
    if token_file.is_file():
        registry = Registry.open(directory)
        return registry, registry.authenticate(token_file.read_text(encoding="utf-8")), None
    registry, created = Registry.init(directory)
    admin, seconds = fill(registry, created.token, base, count, rank)
    token_file.write_text(created.token, encoding="utf-8")
    token_file.chmod(0o600)
    return registry, admin, seconds


def copy_of(base: BaseModel) -> BaseModel:
    """Return a copy of ``base`` that shares its weights, as ``load_model`` makes of a cached base model."""
    return BaseModel(model=share_weights(base.model), tokenizer=base.tokenizer, name=base.name, fingerprint=base.fingerprint)


def measure(registry: Registry, base: BaseModel, admin: Any, count: int, device: torch.device) -> dict[str, Any]:
    user = f"user-{count}-{uuid.uuid4().hex[:6]}"
    registry.create_principal(admin, user)
    for i in range(count):
        registry.grant(admin, f"silo-{i:04d}", principal=user)
    token = registry.create_token(admin, user).token

    start = time.perf_counter()
    session = login(registry, token)
    login_seconds = time.perf_counter() - start
    # load_model attaches to the model it is given, so each load gets its own copy.
    model = session.load_model(copy_of(base), device=device)
    model.logits(PROMPT)
    cold = model.load_timings.to_json()
    decryptions = adapter_cache(registry, model.device).decryptions

    model.logits(PROMPT)
    second_request_decryptions = adapter_cache(registry, model.device).decryptions - decryptions
    warm_model = login(registry, token).load_model(copy_of(base), device=device)
    warm_model.logits(PROMPT)
    warm = warm_model.load_timings.to_json()

    device_bytes = storage_bytes(device_tensors(model, registry))
    result = {
        "adapters": count, "login_seconds": login_seconds, "cold": cold, "warm_second_model": warm,
        "decryptions_by_second_request": second_request_decryptions,
        "adapter_qr_bytes": cold["adapter_bytes"] / count,
        "device_bytes_per_adapter": device_bytes / count,
    }
    logger.info("N=%d: %s", count, json.dumps(result))
    for loaded in (warm_model, model):
        loaded.close()
    gc.collect()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", default="100,1000", help="Comma-separated N of authorised adapters.")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the library.")
    parser.add_argument("--threads", type=int, default=None, help="Torch intra-op threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu", help="Torch device to load the model on, for example cpu or cuda.")
    parser.add_argument("--registry", type=Path, default=None,
                        help="Registry directory to fill once and reuse in later runs (default: a temporary one).")
    parser.add_argument("--fill-only", action="store_true", help="Fill the --registry directory and measure nothing.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results as JSON to this file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("seqr").setLevel(logging.WARNING)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    counts = sorted(int(part) for part in args.adapters.split(",") if part.strip())

    start = time.perf_counter()
    base = load_base_model()
    base_seconds = time.perf_counter() - start
    report: dict[str, Any] = {
        "machine": describe_machine(torch.device(args.device)), "command": " ".join(sys.argv), "rank": args.rank,
        "base_model_load_seconds": base_seconds, "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="seqr-bench-cold-") as scratch:
        directory = args.registry if args.registry is not None else Path(scratch) / "registry"
        registry, admin, fill_seconds = open_or_fill(directory, base, counts[-1], args.rank)
        report["fill_seconds"] = fill_seconds
        try:
            if not args.fill_only:
                for count in counts:
                    report["results"].append(measure(registry, base, admin, count, torch.device(args.device)))
        finally:
            registry.close()
    output = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(output, encoding="utf-8")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

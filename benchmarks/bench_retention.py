"""Benchmark: processing a removal in one silo against retraining every silo of the library.

Builds a registry in a temporary directory with one library on SmolLM2-135M-Instruct and one silo
per task, each holding documents of real task examples from the shared datasets, and trains and
activates every silo's adapter. Then it measures, on the same loaded model:

* removal: one document of one silo is requested for removal and ``run_retention`` runs (shred,
  retrain that silo, activate, destroy the old version);
* full retrain: every silo's adapter is retrained from its current documents, activated and its
  old version destroyed, which is what a library with one shared adapter (or no per-silo split)
  would need for any removal.

Example (about 3-5 minutes on a 2-core CPU):
    python benchmarks/bench_retention.py --datasets-dir DATASETS --json retention.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from seqr.policies.retention import run_retention
from seqr.policies.retention_verify import verify_retention
from seqr.policies.training_jobs import train_silo_adapter
from seqr.registry.enums import AdapterStatus
from seqr.registry.registry import Registry
from seqr.registry.views import Principal
from seqr.training.base_model import BaseModel, load_base_model
from seqr.training.data import example_to_json, sample
from seqr.training.library import create_library
from seqr.training.presets import TrainingConfig
from seqr.training.tasks import Split, Task, load_task

LIBRARY = "main"
logger = logging.getLogger("bench_retention")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets-dir", type=Path, required=True, help="Directory with one subdirectory per task.")
    parser.add_argument("--tasks", default="sst2,agnews,cola,rte", help="Comma-separated tasks, one silo each.")
    parser.add_argument("--documents", type=int, default=4, help="Documents per silo.")
    parser.add_argument("--examples-per-document", type=int, default=6, help="Training examples in each document.")
    parser.add_argument("--max-length", type=int, default=64, help="Training sequence length in tokens.")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the library.")
    parser.add_argument("--base-model", default=None, help="Model directory or .gguf file (default: SmolLM2-135M-Instruct).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results to this JSON file.")
    return parser.parse_args(argv)


def add_silos(registry: Registry, admin: Principal, tasks: list[Task], args: argparse.Namespace) -> None:
    for index, task in enumerate(tasks):
        registry.create_silo(admin, task.value)
        examples = sample(load_task(task, Split.TRAIN, args.datasets_dir), args.documents * args.examples_per_document, seed=index)
        for number in range(args.documents):
            chunk = examples[number * args.examples_per_document:(number + 1) * args.examples_per_document]
            content = "\n".join(json.dumps(example_to_json(example)) for example in chunk).encode()
            registry.add_document(admin, task.value, content, metadata={"source": f"{task.value}-batch-{number}"})


def retrain_every_silo(registry: Registry, admin: Principal, base: BaseModel, tasks: list[Task], config: TrainingConfig) -> None:
    """The baseline: retrain, activate and destroy the old version of every silo."""
    for task in tasks:
        old = [v for v in registry.list_adapter_versions(admin, silo=task.value) if v.status is AdapterStatus.ACTIVE]
        result = train_silo_adapter(registry, admin, task.value, LIBRARY, base, config, progress=False)
        registry.activate_adapter_version(admin, result.version.id)
        for version in old:
            registry.destroy_adapter_version(admin, version.id)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    tasks = [Task(name) for name in args.tasks.split(",")]
    config = TrainingConfig(epochs=1, batch_size=8, learning_rate=1e-3, max_length=args.max_length, seed=0)

    started = time.perf_counter()
    base = load_base_model(args.base_model)
    load_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="seqr-bench-retention-") as directory:
        registry, created = Registry.init(Path(directory) / "registry")
        admin = registry.authenticate(created.token)
        library = create_library(base.model, base_fingerprint=base.fingerprint, rank=args.rank, alpha=2.0 * args.rank, seed=0)
        registry.add_library(admin, LIBRARY, base_model_fingerprint=base.fingerprint, target_modules=list(library.module_names),
                             rank=library.rank, alpha=library.alpha, seed=library.seed, shared_a=library.a,
                             base_model_source=args.base_model)
        add_silos(registry, admin, tasks, args)
        logger.info("model loaded in %.1f s; training %d silos", load_seconds, len(tasks))

        started = time.perf_counter()
        for task in tasks:
            result = train_silo_adapter(registry, admin, task.value, LIBRARY, base, config, progress=False)
            registry.activate_adapter_version(admin, result.version.id)
        initial_seconds = time.perf_counter() - started
        logger.info("initial training: %.1f s; processing one removal", initial_seconds)

        registry.request_removal(admin, tasks[0].value, metadata_match={"source": f"{tasks[0].value}-batch-0"}, reason="benchmark")
        started = time.perf_counter()
        summary = run_retention(registry, admin, load_model=lambda _source: base)
        removal_seconds = time.perf_counter() - started
        verify_retention(registry, admin)
        logger.info("removal: %.1f s; retraining every silo", removal_seconds)

        started = time.perf_counter()
        retrain_every_silo(registry, admin, base, tasks, config)
        full_seconds = time.perf_counter() - started
        registry.close()

    logger.info("done")
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
        },
        "model": base.name,
        "silos": len(tasks),
        "examples_per_silo": args.documents * args.examples_per_document,
        "config": {"epochs": config.epochs, "batch_size": config.batch_size, "max_length": config.max_length, "rank": args.rank},
        "model_load_seconds": round(load_seconds, 2),
        "initial_training_seconds": round(initial_seconds, 2),
        "removal_seconds": round(removal_seconds, 2),
        "removal_silos_retrained": summary.silos_retrained,
        "full_retrain_seconds": round(full_seconds, 2),
        "full_retrain_over_removal": round(full_seconds / removal_seconds, 2),
    }
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

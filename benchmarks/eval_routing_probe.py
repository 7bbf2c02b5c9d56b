"""Probe SEQR routing accuracy on prompts only: which tokens and layers carry the task signal.

One routed forward pass per test prompt (per-token SEQR, calibrated) captures every module's
z-scores. The per-example decisions of several scoring variants are then computed from those
same scores. Adapters come from ``--adapters-dir`` (as ``seqr eval`` caches them) or are
trained. Run from the repository root:

    python benchmarks/eval_routing_probe.py --dataset cola --dataset qnli --dataset rte --dataset sst2 \
        --datasets-dir DIR --train-examples 64 --test-examples 24 --adapters-dir ADAPTERS
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from seqr.routing import Granularity, attach_routing
from seqr.training.base_model import load_base_model
from seqr.training.calibrate import CalibrationTokens
from seqr.training.eval_tasks import builtin_task
from seqr.training.evaluate import train_or_load
from seqr.training.library import create_library, layer_index
from seqr.training.precision import autocast
from seqr.training.presets import PRESETS, Preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", required=True)
    parser.add_argument("--datasets-dir", type=Path, required=True)
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--test-examples", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--calibration-tokens", default="prompt", choices=[t.value for t in CalibrationTokens])
    parser.add_argument("--skip-leading", type=int, default=0, help="Leading prompt tokens left out of calibration.")
    parser.add_argument("--adapters-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()

    library_config, training_config = PRESETS[Preset.CPU]
    if args.rank is not None:
        library_config = replace(library_config, rank=args.rank, alpha=2.0 * args.rank)
    if args.epochs is not None:
        training_config = replace(training_config, epochs=args.epochs)
    if args.learning_rate is not None:
        training_config = replace(training_config, learning_rate=args.learning_rate)
    training_config = replace(
        training_config, seed=args.seed, calibration_tokens=CalibrationTokens(args.calibration_tokens),
        calibration_skip_leading=args.skip_leading,
    )
    base = load_base_model()
    library = create_library(
        base.model, base_fingerprint=base.fingerprint, rank=library_config.rank, alpha=library_config.alpha, seed=args.seed
    )
    tasks = [builtin_task(name, args.datasets_dir, train=args.train_examples, test=args.test_examples, seed=args.seed) for name in args.dataset]
    adapters = {t.name: train_or_load(base, library, t, training_config, args.adapters_dir, progress=False).factors for t in tasks}
    names = [t.name for t in tasks]
    num_layers = base.model.config.num_hidden_layers
    device = next(base.model.parameters()).device

    # decisions[variant] -> list of (own, chosen)
    sums: dict[str, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    token_hits = torch.zeros(num_layers)
    token_total = torch.zeros(num_layers)
    first_token_raw = []
    other_token_raw = []
    with torch.no_grad(), attach_routing(
        base.model, library.a, adapters, scaling=library.scaling, method="seqr", granularity=Granularity.TOKEN
    ) as routed:
        mu = {m: torch.tensor([adapters[n].modules[m].mu for n in names]) for m in library.module_names}
        sigma = {m: torch.tensor([adapters[n].modules[m].sigma for n in names]) for m in library.module_names}
        for own, task in enumerate(tasks):
            for example in task.test:
                ids = base.tokenizer(example.prompt, return_tensors="pt")["input_ids"][:, : training_config.max_length].to(device)
                with routed.capture() as trace, autocast(training_config.precision, device):
                    base.model(input_ids=ids, use_cache=False, logits_to_keep=1)
                per_layer_z: dict[int, list[torch.Tensor]] = defaultdict(list)
                per_layer_raw: dict[int, list[torch.Tensor]] = defaultdict(list)
                for module, records in trace.records.items():
                    z = records[0].scores[0].cpu()  # (seq, N)
                    raw = z * sigma[module] + mu[module]
                    layer = layer_index(module) or 0
                    per_layer_z[layer].append(z)
                    per_layer_raw[layer].append(raw)
                    top1 = records[0].top1[0].cpu()
                    token_hits[layer] += float((top1 == own).sum())
                    token_total[layer] += top1.numel()
                    first_token_raw.append(float(raw[0].mean()))
                    other_token_raw.append(float(raw[1:].mean()))
                for variant, layers, start in (
                    ("all", range(num_layers), 0),
                    ("skip_first", range(num_layers), 1),
                    ("upper_half", range(num_layers // 2, num_layers), 0),
                    ("upper_half_skip_first", range(num_layers // 2, num_layers), 1),
                    ("lower_half_skip_first", range(num_layers // 2), 1),
                    ("last_quarter_skip_first", range(3 * num_layers // 4, num_layers), 1),
                ):
                    z_mean = torch.stack([z[start:].mean(0) for l in layers for z in per_layer_z[l]]).mean(0)
                    raw_mean = torch.stack([r[start:].mean(0) for l in layers for r in per_layer_raw[l]]).mean(0)
                    sums[f"z_{variant}"].append((own, z_mean))
                    sums[f"raw_{variant}"].append((own, raw_mean))

    result: dict[str, object] = {"tasks": names, "settings": vars(args) | {"datasets_dir": str(args.datasets_dir), "adapters_dir": str(args.adapters_dir), "json": str(args.json)}}
    example_accuracy = {}
    confusion = {}
    for variant, pairs in sums.items():
        chosen = [int(vector.argmax()) for _, vector in pairs]
        example_accuracy[variant] = sum(c == own for (own, _), c in zip(pairs, chosen)) / len(pairs)
        matrix = torch.zeros(len(names), len(names), dtype=torch.long)
        for (own, _), c in zip(pairs, chosen):
            matrix[own, c] += 1
        confusion[variant] = matrix.tolist()
    result["example_accuracy"] = example_accuracy
    result["confusion"] = confusion
    result["token_accuracy_per_layer"] = (token_hits / token_total.clamp_min(1)).tolist()
    result["token_accuracy"] = float(token_hits.sum() / token_total.sum())
    result["mean_raw_norm_first_token"] = sum(first_token_raw) / len(first_token_raw)
    result["mean_raw_norm_other_tokens"] = sum(other_token_raw) / len(other_token_raw)
    result["final_epoch_loss"] = {
        t.name: train_or_load(base, library, t, training_config, args.adapters_dir, progress=False).metrics["final_epoch_loss"]
        for t in tasks
    } if args.adapters_dir else None
    result["wall_seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("example_accuracy", "token_accuracy", "final_epoch_loss", "mean_raw_norm_first_token", "mean_raw_norm_other_tokens", "wall_seconds")}, indent=1))
    print("confusion z_all", confusion["z_all"], "z_skip_first", confusion["z_skip_first"])


if __name__ == "__main__":
    main()

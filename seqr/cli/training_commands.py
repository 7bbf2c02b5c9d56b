"""`seqr eval`: train one adapter per task and evaluate routing among them on held-out examples."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from seqr.cli.state import state
from seqr.errors import InvalidInputError

logger = logging.getLogger(__name__)


def _parse_task(value: str) -> tuple[str, Path]:
    name, separator, path = value.partition("=")
    if not separator or not name or not path:
        raise InvalidInputError(f"--task expects NAME=FILE.jsonl, got {value!r}")
    return name, Path(path)


def eval_command(
    ctx: typer.Context,
    task: Annotated[list[str], typer.Option("--task", help="A task as NAME=FILE.jsonl; repeatable.")] = [],  # noqa: B006
    dataset: Annotated[
        list[str], typer.Option("--dataset", help="A built-in task (agnews, cola, hellaswag, mnli, mrpc, qnli, rte, sst2); repeatable.")
    ] = [],  # noqa: B006
    datasets_dir: Annotated[
        Path | None, typer.Option("--datasets-dir", help="Directory with one subdirectory per built-in task.")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Model directory, .gguf file or hub id (default: SmolLM2-135M-Instruct).")
    ] = None,
    preset: Annotated[str, typer.Option("--preset", help="Hyperparameters: 'cpu' (rank 8) or 'paper' (rank 32).")] = "cpu",
    train_examples: Annotated[int, typer.Option("--train-examples", help="Training examples per task.")] = 256,
    test_examples: Annotated[int, typer.Option("--test-examples", help="Held-out test examples per task.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shared A, the data split and training.")] = 0,
    rank: Annotated[int | None, typer.Option("--rank", help="LoRA rank (default: the preset's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs (default: the preset's).")] = None,
    adapters_dir: Annotated[
        Path | None, typer.Option("--adapters-dir", help="Cache trained adapters here and reuse them on later runs.")
    ] = None,
    heatmaps: Annotated[Path | None, typer.Option("--heatmaps", help="Write PNG heatmaps of activation norms here.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON to this file.")] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's choice, one per core).")
    ] = None,
) -> None:
    """Train (or reuse) one adapter per task and report task and routing accuracy per router.

    Example: seqr eval --dataset sst2 --dataset agnews --datasets-dir ./datasets --json report.json
    """
    from seqr.training.base_model import load_base_model
    from seqr.training.eval_report import format_report
    from seqr.training.eval_tasks import builtin_task, task_from_jsonl
    from seqr.training.evaluate import EvalSettings, evaluate
    from seqr.training.presets import PRESETS, Preset

    try:
        library_config, training_config = PRESETS[Preset(preset)]
    except ValueError as error:
        raise InvalidInputError(f"unknown preset {preset!r}; use 'cpu' or 'paper'") from error
    if rank is not None:
        library_config = replace(library_config, rank=rank, alpha=2.0 * rank)
    training_config = replace(training_config, seed=seed, **({"epochs": epochs} if epochs is not None else {}))
    library_config = replace(library_config, seed=seed)

    tasks = [task_from_jsonl(*_parse_task(value), train=train_examples, test=test_examples, seed=seed) for value in task]
    if dataset:
        if datasets_dir is None:
            raise InvalidInputError("--dataset needs --datasets-dir, the directory that contains the task files")
        tasks += [builtin_task(name, datasets_dir, train=train_examples, test=test_examples, seed=seed) for name in dataset]

    if threads is not None:
        import torch

        if threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    base = load_base_model(base_model)
    settings = EvalSettings(library=library_config, training=training_config, adapters_dir=adapters_dir, heatmap_dir=heatmaps)
    report = evaluate(base, tasks, settings, progress=not state(ctx).quiet)
    report["settings"]["base_model"] = base.name  # type: ignore[index]
    report["settings"]["preset"] = preset  # type: ignore[index]
    if json_path is not None:
        from seqr.training.atomic import atomic_path

        with atomic_path(json_path) as staging:
            staging.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    typer.echo(format_report(report))


def register(app: typer.Typer) -> None:
    """Add `seqr eval` to the root app."""
    app.command("eval")(eval_command)

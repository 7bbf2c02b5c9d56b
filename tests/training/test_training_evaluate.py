"""Evaluation on the tiny Llama: report shape, oracle parity, caching, and the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from seqr.errors import InvalidInputError
from seqr.routing import Granularity, RoutingMethod
from seqr.training.base_model import BaseModel
from seqr.training.data import ChoiceExample, CompletionExample, write_jsonl
from seqr.training.evaluate import EvalSettings, EvalTask, RouterSpec, as_choice_examples, evaluate
from seqr.training.precision import Precision
from seqr.training.presets import LibraryConfig, TrainingConfig

SETTINGS = EvalSettings(
    library=LibraryConfig(rank=4, alpha=8.0),
    training=TrainingConfig(epochs=2, batch_size=4, learning_rate=1e-2, precision=Precision.FLOAT32, max_length=64),
    routers=(
        RouterSpec(RoutingMethod.SEQR, Granularity.TOKEN),
        RouterSpec(RoutingMethod.SEQR, Granularity.SEQUENCE),
        RouterSpec(RoutingMethod.ARROW, Granularity.TOKEN),
        RouterSpec(RoutingMethod.MU),
    ),
)


def make_task(name: str, size: int = 16) -> EvalTask:
    rng = random.Random(name)
    examples = [ChoiceExample(f"{name} {rng.randint(0, 99)}:", (" yes", " no"), rng.randint(0, 1)) for _ in range(size)]
    return EvalTask(name, examples[: size - 6], examples[size - 6 :])


def test_report_has_documented_keys(tiny_base: BaseModel, tmp_path: Path) -> None:
    settings = EvalSettings(**{**SETTINGS.__dict__, "heatmap_dir": tmp_path})
    report = evaluate(tiny_base, [make_task("alpha"), make_task("bravo"), make_task("charlie")], settings, progress=False)

    assert set(report["routing_accuracy"]) == {"seqr-token", "seqr-sequence", "arrow-token"}
    assert set(report["normalized_score"]) == {"base", "seqr-token", "seqr-sequence", "arrow-token", "mu"}
    assert report["per_task"]["alpha"]["test_examples"] == 6
    shares = report["routing_accuracy"]["seqr-token"]
    assert 0.0 <= shares["examples"] <= 1.0
    assert 0.0 <= shares["tokens"] <= 1.0
    assert len(report["heatmaps"]["mean_raw_norm"]) == 3
    assert [Path(p).name for p in report["heatmap_files"]] == ["mean_raw_norm.png", "mean_z_score.png"]


def test_seqr_agrees_with_naive_on_tiny_model(tiny_base: BaseModel) -> None:
    report = evaluate(tiny_base, [make_task("alpha"), make_task("bravo")], SETTINGS, progress=False)
    assert report["seqr_naive_agreement"] == pytest.approx(1.0, abs=1e-3)


def test_adapters_are_reused(tiny_base: BaseModel, tmp_path: Path) -> None:
    settings = EvalSettings(**{**SETTINGS.__dict__, "adapters_dir": tmp_path, "routers": (RouterSpec(RoutingMethod.MU),)})
    tasks = [make_task("alpha"), make_task("bravo")]
    first = evaluate(tiny_base, tasks, settings, progress=False)
    files = sorted(path.name for path in tmp_path.iterdir())
    second = evaluate(tiny_base, tasks, settings, progress=False)
    assert len(files) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == files
    assert second["per_task"]["alpha"]["accuracy"] == first["per_task"]["alpha"]["accuracy"]


def test_evaluation_needs_two_tasks(tiny_base: BaseModel) -> None:
    with pytest.raises(InvalidInputError, match="at least two tasks"):
        evaluate(tiny_base, [make_task("alpha")], SETTINGS, progress=False)


def test_completion_tests_become_choices() -> None:
    examples = [CompletionExample("a", " yes"), CompletionExample("b", " no")]
    choices = as_choice_examples("t", examples)
    assert choices[0] == ChoiceExample("a", (" no", " yes"), 1)


def test_cli_eval_writes_json(tiny_base: BaseModel, tmp_path: Path, monkeypatch) -> None:
    from seqr.cli.main import main
    from seqr.training import base_model

    for name in ("alpha", "bravo"):
        task = make_task(name, size=20)
        write_jsonl(tmp_path / f"{name}.jsonl", [*task.train, *task.test])
    monkeypatch.setattr(base_model, "load_base_model", lambda source=None, **_: tiny_base)
    output = tmp_path / "report.json"
    status = main([
        "-q", "eval", "--task", f"alpha={tmp_path / 'alpha.jsonl'}", "--task", f"bravo={tmp_path / 'bravo.jsonl'}",
        "--train-examples", "8", "--test-examples", "4", "--rank", "4", "--epochs", "1", "--json", str(output),
    ])
    assert status == 0
    report = json.loads(output.read_text())
    assert {"routing_accuracy", "normalized_score", "seqr_naive_agreement", "per_task"} <= set(report)


def test_cli_eval_rejects_bad_task(capsys) -> None:
    from seqr.cli.main import main

    assert main(["eval", "--task", "no-equals-sign"]) == 1
    assert "NAME=FILE.jsonl" in capsys.readouterr().err

"""Evaluate a library of per-task adapters the way the SEQR paper does, on held-out examples.

For every task an adapter is trained, or reused from ``adapters_dir``. On each task's test
examples the evaluation then measures the accuracy of the base model, of the task's own adapter
("oracle") and under each router. It also measures each router's routing accuracy, and SEQR's
agreement with NAIVE norm maximisation on the same activations. Routing runs through
:func:`seqr.routing.attach_routing`, the layers that serve users.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from seqr.errors import InvalidInputError
from seqr.routing import Granularity, RoutingMethod, attach_routing
from seqr.routing.attach import RoutedModel
from seqr.training.adapter_file import load_adapter, save_adapter
from seqr.training.base_model import BaseModel
from seqr.training.data import ChoiceExample, CompletionExample, Example, example_to_json
from seqr.training.library import Library, create_library
from seqr.training.precision import autocast
from seqr.training.presets import LibraryConfig, TrainingConfig
from seqr.training.routing_stats import NormTally, RoutingTally, module_statistics
from seqr.training.scoring import EncodedChoices, PromptState, choice_scores, encode_choices, run_prompt
from seqr.training.train import TrainedAdapter, calibrated_adapter, train_adapter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterSpec:
    """One routing setting to evaluate: method, granularity, and whether scores are z-scored."""

    method: RoutingMethod
    granularity: Granularity = Granularity.TOKEN
    use_calibration: bool = True

    @property
    def label(self) -> str:
        raw = "" if self.use_calibration or self.method is not RoutingMethod.SEQR else "-raw"
        if self.method is RoutingMethod.MU:
            return "mu"
        return f"{self.method.value}{raw}-{self.granularity.value}"


DEFAULT_ROUTERS: tuple[RouterSpec, ...] = (
    *(
        RouterSpec(method, granularity)
        for method in (RoutingMethod.SEQR, RoutingMethod.ARROW, RoutingMethod.LAG, RoutingMethod.SPECTR)
        for granularity in (Granularity.TOKEN, Granularity.SEQUENCE)
    ),
    RouterSpec(RoutingMethod.SEQR, Granularity.TOKEN, use_calibration=False),
    RouterSpec(RoutingMethod.SEQR, Granularity.SEQUENCE, use_calibration=False),
    RouterSpec(RoutingMethod.MU),
)


@dataclass(frozen=True)
class EvalTask:
    """One task: its name (the adapter id), training examples and multiple-choice test examples."""

    name: str
    train: Sequence[Example]
    test: Sequence[ChoiceExample]


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides the tasks and the base model that an evaluation run depends on.

    ``lag_k`` is LAG's ARROW filter size. ``adapters_dir`` caches trained adapters by a hash of their training inputs.
    """

    library: LibraryConfig = field(default_factory=LibraryConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    routers: tuple[RouterSpec, ...] = DEFAULT_ROUTERS
    lag_k: int = 3
    adapters_dir: Path | None = None
    heatmap_dir: Path | None = None


def as_choice_examples(name: str, examples: Sequence[Example]) -> list[ChoiceExample]:
    """Turn test examples into multiple choice; prompt/completion tasks use their distinct completions.

    Raises InvalidInputError for plain-text examples, or when a prompt/completion task has more
    than 20 distinct completions (accuracy among that many candidates is not a classification).
    """
    if all(isinstance(example, ChoiceExample) for example in examples):
        return list(examples)  # type: ignore[arg-type]
    if not all(isinstance(example, CompletionExample) for example in examples):
        raise InvalidInputError(f"task {name}: test examples must all be prompt/completion or multiple choice")
    labels = sorted({example.completion for example in examples})  # type: ignore[union-attr]
    if len(labels) > 20:
        raise InvalidInputError(
            f"task {name} has {len(labels)} distinct completions; give multiple-choice test examples instead"
        )
    return [ChoiceExample(e.prompt, tuple(labels), labels.index(e.completion)) for e in examples]  # type: ignore[union-attr]


_CALIBRATION_FIELDS = ("calibration_tokens", "calibration_skip_leading")


def _adapter_key(task: EvalTask, library: Library, training: TrainingConfig) -> str:
    """Hash what determines B: the task's training examples, the library and the training settings."""
    settings = {key: value for key, value in asdict(training).items() if key not in _CALIBRATION_FIELDS}
    digest = hashlib.sha256()
    digest.update(json.dumps([task.name, library.fingerprint, library.base_fingerprint, settings], default=str).encode())
    for example in task.train:
        digest.update(json.dumps(example_to_json(example), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def train_or_load(
    base: BaseModel, library: Library, task: EvalTask, training: TrainingConfig, adapters_dir: Path | None, *, progress: bool
) -> TrainedAdapter:
    """Return the task's adapter from ``adapters_dir`` when the same inputs trained it, else train it.

    A cached adapter with other calibration settings keeps its B and is calibrated again.
    """
    if adapters_dir is None:
        return train_adapter(base, library, task.train, training, progress=progress)
    key = _adapter_key(task, library, training)
    calibration = f"{training.calibration_tokens.value}{training.calibration_skip_leading}"
    path = adapters_dir / f"{task.name}-{key}-{calibration}.safetensors"
    if path.is_file():
        logger.info("reusing the %s adapter from %s", task.name, path)
        return load_adapter(path)
    others = sorted(adapters_dir.glob(f"{task.name}-{key}-*.safetensors"))
    if others:
        logger.info("recalibrating the %s adapter from %s", task.name, others[0])
        cached = load_adapter(others[0])
        b = {name: factors.b() for name, factors in cached.factors.modules.items()}
        adapter = calibrated_adapter(base, library, b, task.train, training, cached.metrics)
    else:
        logger.info("training the %s adapter on %d examples", task.name, len(task.train))
        adapter = train_adapter(base, library, task.train, training, progress=progress)
    save_adapter(adapter, path)
    return adapter


def _is_correct(base: BaseModel, encoded: EncodedChoices, state: PromptState, example: ChoiceExample) -> bool:
    scores = choice_scores(base.model, encoded, state)
    return int(torch.argmax(scores)) == example.answer


@dataclass
class _TaskResult:
    accuracy: dict[str, float] = field(default_factory=dict)
    routing: dict[str, RoutingTally] = field(default_factory=dict)


def evaluate(base: BaseModel, tasks: Sequence[EvalTask], settings: EvalSettings, *, progress: bool = True) -> dict[str, object]:
    """Train or reuse one adapter per task, then score base, oracle and every router on the test examples.

    Returns a JSON-ready dict with keys ``routing_accuracy``, ``normalized_score``,
    ``seqr_naive_agreement``, ``per_task``, ``heatmaps`` and ``settings``. Accuracies and shares
    are fractions in [0, 1]; a normalised score is a router's accuracy divided by the oracle's,
    averaged over tasks. Raises InvalidInputError for fewer than two tasks or duplicate names.
    """
    names = [task.name for task in tasks]
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidInputError(f"evaluation needs at least two tasks with distinct names, got {names}")
    started = time.perf_counter()
    lib = settings.library
    library = create_library(
        base.model, base_fingerprint=base.fingerprint, rank=lib.rank, alpha=lib.alpha, seed=lib.seed, targets=lib.targets
    )
    adapters = {
        task.name: train_or_load(base, library, task, settings.training, settings.adapters_dir, progress=progress)
        for task in tasks
    }
    trained_at = time.perf_counter()
    factors = {name: adapter.factors for name, adapter in adapters.items()}
    statistics = module_statistics(factors, names)
    num_layers = base.model.config.num_hidden_layers
    results = {name: _TaskResult() for name in names}
    heat = {name: NormTally(len(names)) for name in names}

    specs: list[tuple[str, RouterSpec]] = [("oracle", RouterSpec(RoutingMethod.SEQR))]
    specs += [(spec.label, spec) for spec in settings.routers]
    bar = tqdm(total=len(specs) * sum(len(task.test) for task in tasks), desc="evaluating", unit="example", disable=not progress)
    with torch.no_grad():
        for label, spec in specs:
            with attach_routing(
                base.model, library.a, factors, scaling=library.scaling, method=spec.method,
                granularity=spec.granularity, lag_k=settings.lag_k, use_calibration=spec.use_calibration,
            ) as routed:
                for own, task in enumerate(tasks):
                    _evaluate_task(base, routed, task, own, label, spec, settings, results[task.name], heat[task.name], statistics, num_layers)
                    bar.update(len(task.test))
    bar.close()
    report = _report(tasks, adapters, results, heat, settings, num_layers)
    report["wall_seconds"] = {"training": trained_at - started, "total": time.perf_counter() - started}
    if settings.heatmap_dir is not None:
        from seqr.training.heatmaps import write_heatmaps

        report["heatmap_files"] = [str(p) for p in write_heatmaps(report["heatmaps"], names, settings.heatmap_dir)]
    return report


def _evaluate_task(
    base: BaseModel, routed: RoutedModel, task: EvalTask, own: int, label: str, spec: RouterSpec,
    settings: EvalSettings, result: _TaskResult, heat: NormTally, statistics: dict, num_layers: int,
) -> None:
    """Score every test example of ``task`` under one attachment; record accuracy and routing tallies."""
    device = next(base.model.parameters()).device
    is_oracle = label == "oracle"
    track_naive = spec.method is RoutingMethod.SEQR and spec.use_calibration and spec.granularity is Granularity.TOKEN
    correct: dict[str, list[bool]] = {"base": [], label: []} if is_oracle else {label: []}
    tally = RoutingTally(len(routed.adapter_ids), num_layers)
    precision = settings.training.precision
    for example in task.test:
        encoded = encode_choices(base.tokenizer, example, max_length=settings.training.max_length)
        with autocast(precision, device):
            if is_oracle:
                with routed.base():
                    correct["base"].append(_is_correct(base, encoded, run_prompt(base.model, encoded), example))
                with routed.forced(task.name):
                    correct[label].append(_is_correct(base, encoded, run_prompt(base.model, encoded), example))
                continue
            with routed.capture(reference_methods=["naive"] if track_naive else ()) as trace:
                state = run_prompt(base.model, encoded)
            correct[label].append(_is_correct(base, encoded, state, example))
        if spec.method is RoutingMethod.MU:
            continue
        rows = torch.zeros(1, dtype=torch.long)
        mask = torch.ones(1, encoded.prompt_ids.shape[1], dtype=torch.bool)
        tally.add(trace, rows, mask, own)
        if track_naive:
            heat.add(trace, rows, mask, statistics)
    for key, values in correct.items():
        result.accuracy[key] = sum(values) / len(values)
    if not is_oracle and spec.method is not RoutingMethod.MU:
        result.routing[label] = tally


def _report(
    tasks: Sequence[EvalTask], adapters: dict[str, TrainedAdapter], results: dict[str, _TaskResult],
    heat: dict[str, NormTally], settings: EvalSettings, num_layers: int,
) -> dict[str, object]:
    names = [task.name for task in tasks]
    labels = ["base"] + [spec.label for spec in settings.routers]
    normalized: dict[str, float | None] = {}
    for label in labels:
        ratios = [
            results[n].accuracy[label] / results[n].accuracy["oracle"] for n in names if results[n].accuracy["oracle"] > 0
        ]
        normalized[label] = sum(ratios) / len(ratios) if ratios else None

    routing_accuracy: dict[str, object] = {}
    agreement = RoutingTally(len(names), num_layers)
    for label in {label for n in names for label in results[n].routing}:
        total = RoutingTally(len(names), num_layers)
        for n in names:
            total.merge(results[n].routing[label])
        routing_accuracy[label] = total.summary()
        if total.naive_total:
            agreement = total

    per_task = {}
    for task in tasks:
        result = results[task.name]
        per_task[task.name] = {
            "train_examples": len(task.train),
            "test_examples": len(task.test),
            "accuracy": result.accuracy,
            "routing_accuracy": {label: tally.summary() for label, tally in result.routing.items()},
            "routed_to": {label: dict(zip(names, tally.chosen.tolist())) for label, tally in result.routing.items()},
            "training": adapters[task.name].metrics,
        }
    raw = [heat[n].means()[0] for n in names]
    z = [heat[n].means()[1] for n in names]
    return {
        "routing_accuracy": routing_accuracy,
        "normalized_score": normalized,
        "seqr_naive_agreement": (agreement.naive_agreements / agreement.naive_total) if agreement.naive_total else None,
        "per_task": per_task,
        "heatmaps": {"tasks": names, "adapters": names, "mean_raw_norm": raw, "mean_z_score": z},
        "settings": {
            "library": asdict(settings.library),
            "training": {key: str(value) for key, value in asdict(settings.training).items()},
            "lag_k": settings.lag_k,
            "routers": [spec.label for spec in settings.routers],
            "routing_tokens": "prompt",
        },
    }

"""Build evaluation tasks from JSON Lines files or from the built-in task loaders."""

from __future__ import annotations

from pathlib import Path

from seqr.training.data import read_jsonl, sample, split_examples
from seqr.training.evaluate import EvalTask, as_choice_examples
from seqr.training.tasks import Split, Task, load_task


def task_from_jsonl(name: str, path: Path, *, train: int, test: int, seed: int) -> EvalTask:
    """Split one JSON Lines file, shuffled with ``seed``, into disjoint training and test examples."""
    train_examples, test_examples = split_examples(read_jsonl(path), train=train, test=test, seed=seed)
    return EvalTask(name, train_examples, as_choice_examples(name, test_examples))


def builtin_task(task: Task | str, datasets_dir: Path, *, train: int, test: int, seed: int) -> EvalTask:
    """Sample ``train`` examples of the task's TRAIN split and ``test`` of its TEST split with ``seed``."""
    task = Task(task)
    train_examples = sample(load_task(task, Split.TRAIN, datasets_dir), train, seed=seed)
    test_examples = sample(load_task(task, Split.TEST, datasets_dir), test, seed=seed + 1)
    return EvalTask(task.value, train_examples, test_examples)

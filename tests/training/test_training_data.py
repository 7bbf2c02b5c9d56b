"""JSON Lines examples and the built-in task loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqr.errors import InvalidInputError
from seqr.training.data import (
    ChoiceExample,
    CompletionExample,
    TextExample,
    read_jsonl,
    split_examples,
    training_pair,
    write_jsonl,
)
from seqr.training.tasks import INSTRUCTIONS, Split, Task, load_task


def test_jsonl_round_trip(tmp_path: Path) -> None:
    examples = [
        CompletionExample("Q: 2+2\nA:", " 4"),
        ChoiceExample("Pick:", (" a", " b", " c"), 2),
        TextExample("Some plain text."),
    ]
    path = tmp_path / "examples.jsonl"
    write_jsonl(path, examples)
    assert read_jsonl(path) == examples


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"completion": "x"}', "expected a string 'prompt'"),
        ('{"prompt": "p", "choices": ["a"], "answer": 0}', "at least 2 choices"),
        ('{"prompt": "p", "choices": ["a", "b"], "answer": 2}', "answer index 2 is outside"),
        ('{"prompt": "p", "choices": ["a", "b"], "answer": "0"}', "'answer' must be the integer index"),
        ('{"prompt": "p", "completion": ""}', "'completion' must be a non-empty string"),
        ("{not json", "invalid JSON"),
    ],
    ids=["array", "no-prompt", "one-choice", "answer-range", "answer-type", "empty-completion", "bad-json"],
)
def test_jsonl_rejects_bad_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=message) as raised:
        read_jsonl(path)
    assert f"{path}:2" in str(raised.value)


def test_training_pair_targets() -> None:
    assert training_pair(CompletionExample("p", " c")) == ("p", " c")
    assert training_pair(ChoiceExample("p", (" a", " b"), 1)) == ("p", " b")
    assert training_pair(TextExample("t")) == ("", "t")


def test_split_is_disjoint_and_seeded() -> None:
    examples = [TextExample(str(i)) for i in range(20)]
    train, test = split_examples(examples, train=12, test=5, seed=1)
    assert not set(map(id, train)) & set(map(id, test))
    assert split_examples(examples, train=12, test=5, seed=1) == (train, test)
    with pytest.raises(InvalidInputError, match="only 20 exist"):
        split_examples(examples, train=16, test=5, seed=1)


@pytest.mark.parametrize("task", list(Task), ids=lambda task: task.value)
def test_builtin_task_loads(datasets_dir: Path, task: Task) -> None:
    train = load_task(task, Split.TRAIN, datasets_dir)
    test = load_task(task, Split.TEST, datasets_dir)
    assert len(train) > 1000
    assert len(test) > 200
    assert train[0].prompt.startswith(INSTRUCTIONS[task])
    # The public CoLA and SST-2 releases repeat a few sentences across their own splits.
    train_prompts = {example.prompt for example in train}
    repeated = sum(example.prompt in train_prompts for example in test[:200])
    assert repeated <= 5
    answers = {example.answer for example in train}
    assert len(answers) == len(train[0].choices)


def test_builtin_task_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="sst2.*not found"):
        load_task(Task.SST2, Split.TRAIN, tmp_path)

"""Loaders that turn eight public task files into multiple-choice examples with fixed instructions.

The data stays in the datasets directory (one subdirectory per task, files as their public
releases ship them); only the instructions and label words live here. Every task becomes
:class:`~seqr.training.data.ChoiceExample` items, whose prompt is the instruction, the input and
``"Answer:"``, and whose choices are the label words (HellaSwag: the context and its endings).

Tasks with separate train and evaluation files use them as the TRAIN and TEST splits. Tasks that
ship one labelled file (agnews, hellaswag, mnli, qnli) put every fifth row in TEST and the rest in
TRAIN, so the splits never overlap.
"""

from __future__ import annotations

import bz2
import csv
import enum
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from seqr.errors import InvalidInputError
from seqr.training.data import ChoiceExample


class Task(enum.StrEnum):
    AGNEWS = "agnews"
    COLA = "cola"
    HELLASWAG = "hellaswag"
    MNLI = "mnli"
    MRPC = "mrpc"
    QNLI = "qnli"
    RTE = "rte"
    SST2 = "sst2"


class Split(enum.StrEnum):
    TRAIN = "train"
    TEST = "test"


INSTRUCTIONS: dict[Task, str] = {
    Task.AGNEWS: "Classify the topic of the news article as World, Sports, Business or Technology.",
    Task.COLA: "Is the following sentence grammatically acceptable? Answer yes or no.",
    Task.HELLASWAG: "Complete the description with the most plausible ending.",
    Task.MNLI: "Does the premise entail the hypothesis? Answer yes, maybe or no.",
    Task.MRPC: "Do the two sentences say the same thing? Answer yes or no.",
    Task.QNLI: "Does the sentence answer the question? Answer yes or no.",
    Task.RTE: "Is the hypothesis true given the text? Answer yes or no.",
    Task.SST2: "What is the sentiment of this movie review? Answer positive or negative.",
}

_YES_NO = (" yes", " no")
_TEST_EVERY = 5


def _prompt(task: Task, body: str) -> str:
    return f"{INSTRUCTIONS[task]}\n\n{body}\nAnswer:"


def _read_tsv(path: Path, *, header: bool, encoding: str = "utf-8") -> Iterator[list[str]]:
    with path.open(encoding=encoding, newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if header:
            next(rows, None)
        yield from rows


def _every_fifth(rows: list[ChoiceExample], split: Split) -> list[ChoiceExample]:
    if split is Split.TEST:
        return rows[::_TEST_EVERY]
    return [row for index, row in enumerate(rows) if index % _TEST_EVERY]


def _agnews(root: Path, split: Split) -> list[ChoiceExample]:
    choices = (" World", " Sports", " Business", " Technology")
    rows: list[ChoiceExample] = []
    with (root / "agnews" / "test.csv").open(encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle):
            # The release writes line breaks as a backslash and "$" as the entity "#36;".
            text = f"{record['Title']}. {record['Description']}".replace("\\", " ").replace("#36;", "$")
            rows.append(ChoiceExample(_prompt(Task.AGNEWS, f"Article: {text}"), choices, int(record["Class Index"]) - 1))
    return _every_fifth(rows, split)


def _cola(root: Path, split: Split) -> list[ChoiceExample]:
    names = ["in_domain_train.tsv"] if split is Split.TRAIN else ["in_domain_dev.tsv", "out_of_domain_dev.tsv"]
    rows: list[ChoiceExample] = []
    for name in names:
        for record in _read_tsv(root / "cola" / name, header=False):
            answer = 0 if record[1] == "1" else 1
            rows.append(ChoiceExample(_prompt(Task.COLA, f"Sentence: {record[3]}"), _YES_NO, answer))
    return rows


def _hellaswag(root: Path, split: Split) -> list[ChoiceExample]:
    with bz2.open(root / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    rows: list[ChoiceExample] = []
    for start in range(0, len(lines) - 5, 6):
        context, label, *endings = lines[start : start + 6]
        rows.append(
            # The endings continue the description, so the prompt has no "Answer:" cue.
            ChoiceExample(f"{INSTRUCTIONS[Task.HELLASWAG]}\n\n{context}", tuple(f" {e}" for e in endings), int(label))
        )
    return _every_fifth(rows, split)


def _mnli(root: Path, split: Split) -> list[ChoiceExample]:
    labels = {"entailment": 0, "neutral": 1, "contradiction": 2}
    rows: list[ChoiceExample] = []
    with (root / "mnli" / "dev_matched.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            body = f"Premise: {record['premise']}\nHypothesis: {record['hypothesis']}"
            rows.append(ChoiceExample(_prompt(Task.MNLI, body), (" yes", " maybe", " no"), labels[record["label"]]))
    return _every_fifth(rows, split)


def _mrpc(root: Path, split: Split) -> list[ChoiceExample]:
    name = "msr_paraphrase_train.txt" if split is Split.TRAIN else "msr_paraphrase_test.txt"
    rows: list[ChoiceExample] = []
    for record in _read_tsv(root / "mrpc" / name, header=True, encoding="utf-8-sig"):
        body = f"Sentence 1: {record[3]}\nSentence 2: {record[4]}"
        rows.append(ChoiceExample(_prompt(Task.MRPC, body), _YES_NO, 0 if record[0] == "1" else 1))
    return rows


def _qnli(root: Path, split: Split) -> list[ChoiceExample]:
    rows: list[ChoiceExample] = []
    for record in _read_tsv(root / "qnli" / "dev.tsv", header=True):
        body = f"Question: {record[1]}\nSentence: {record[2]}"
        rows.append(ChoiceExample(_prompt(Task.QNLI, body), _YES_NO, 0 if record[3] == "entailment" else 1))
    return _every_fifth(rows, split)


def _rte(root: Path, split: Split) -> list[ChoiceExample]:
    name = "train.jsonl" if split is Split.TRAIN else "val.jsonl"
    rows: list[ChoiceExample] = []
    with (root / "rte" / name).open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            body = f"Text: {record['premise']}\nHypothesis: {record['hypothesis']}"
            rows.append(ChoiceExample(_prompt(Task.RTE, body), _YES_NO, 0 if record["label"] == "entailment" else 1))
    return rows


def _sst2(root: Path, split: Split) -> list[ChoiceExample]:
    name = "stsa.binary.train" if split is Split.TRAIN else "stsa.binary.test"
    rows: list[ChoiceExample] = []
    for line in (root / "sst2" / name).read_text(encoding="utf-8").splitlines():
        if line.strip():
            label, sentence = line[0], line[2:]
            rows.append(ChoiceExample(_prompt(Task.SST2, f"Review: {sentence}"), (" positive", " negative"), 0 if label == "1" else 1))
    return rows


_LOADERS: dict[Task, Callable[[Path, Split], list[ChoiceExample]]] = {
    Task.AGNEWS: _agnews,
    Task.COLA: _cola,
    Task.HELLASWAG: _hellaswag,
    Task.MNLI: _mnli,
    Task.MRPC: _mrpc,
    Task.QNLI: _qnli,
    Task.RTE: _rte,
    Task.SST2: _sst2,
}


def load_task(task: Task | str, split: Split | str, datasets_dir: Path) -> list[ChoiceExample]:
    """Load every labelled example of one split of a built-in task, in file order.

    Raises InvalidInputError naming the task, or the missing file and the directory layout.
    """
    try:
        task, split = Task(task), Split(split)
    except ValueError as error:
        raise InvalidInputError(f"unknown task or split ({task!r}, {split!r}); tasks are {[t.value for t in Task]}") from error
    try:
        return _LOADERS[task](Path(datasets_dir), split)
    except FileNotFoundError as error:
        raise InvalidInputError(
            f"task {task.value}: {error.filename} not found; --datasets-dir must contain one subdirectory per task"
        ) from error

"""Training and evaluation examples, their JSON Lines format, and the eight built-in task loaders.

One example per line, in one of three forms:

- ``{"prompt": ..., "completion": ...}``: the loss is on the completion only;
- ``{"prompt": ..., "choices": [...], "answer": index}``: multiple choice (classification too);
  training uses the correct choice as the completion, evaluation scores every choice;
- ``{"text": ...}``: plain text, trained as a causal LM on every token.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqr.errors import InvalidInputError
from seqr.training.atomic import atomic_path


@dataclass(frozen=True)
class CompletionExample:
    """A prompt and the completion the model should learn to produce after it."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class ChoiceExample:
    """A prompt, its candidate completions, and the index of the correct one."""

    prompt: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise InvalidInputError(f"a multiple-choice example needs at least 2 choices, got {len(self.choices)}")
        if not 0 <= self.answer < len(self.choices):
            raise InvalidInputError(f"answer index {self.answer} is outside the {len(self.choices)} choices")


@dataclass(frozen=True)
class TextExample:
    """Plain text for causal-LM training."""

    text: str


Example = CompletionExample | ChoiceExample | TextExample


def training_pair(example: Example) -> tuple[str, str]:
    """Return (prompt, target): the loss covers the target's tokens, the prompt is context only."""
    if isinstance(example, CompletionExample):
        return example.prompt, example.completion
    if isinstance(example, ChoiceExample):
        return example.prompt, example.choices[example.answer]
    return "", example.text


def routing_text(example: Example) -> str:
    """Return the text that a router sees before any completion exists: the prompt, or the text."""
    return example.text if isinstance(example, TextExample) else example.prompt


def example_from_json(record: object, *, where: str = "record") -> Example:
    """Build an example from one decoded JSON object; raise InvalidInputError naming the bad field."""
    if not isinstance(record, dict):
        raise InvalidInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str) or not text:
            raise InvalidInputError(f"{where}: 'text' must be a non-empty string")
        return TextExample(text=text)
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidInputError(f"{where}: expected a string 'prompt' (or a 'text'), got keys {sorted(record)}")
    if "completion" in record:
        completion = record["completion"]
        if not isinstance(completion, str) or not completion:
            raise InvalidInputError(f"{where}: 'completion' must be a non-empty string")
        return CompletionExample(prompt=prompt, completion=completion)
    choices, answer = record.get("choices"), record.get("answer")
    if not isinstance(choices, list) or not all(isinstance(choice, str) and choice for choice in choices):
        raise InvalidInputError(f"{where}: expected 'completion', or 'choices' as a list of non-empty strings")
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise InvalidInputError(f"{where}: 'answer' must be the integer index of the correct choice")
    try:
        return ChoiceExample(prompt=prompt, choices=tuple(choices), answer=answer)
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}: {error}") from error


def example_to_json(example: Example) -> dict[str, object]:
    if isinstance(example, TextExample):
        return {"text": example.text}
    if isinstance(example, CompletionExample):
        return {"prompt": example.prompt, "completion": example.completion}
    return {"prompt": example.prompt, "choices": list(example.choices), "answer": example.answer}


def read_jsonl(path: Path) -> list[Example]:
    """Read examples from a JSON Lines file; blank lines are skipped."""
    examples: list[Example] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InvalidInputError(f"cannot read examples from {path}: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{where}: invalid JSON ({error.msg})") from error
        examples.append(example_from_json(record, where=where))
    if not examples:
        raise InvalidInputError(f"{path} contains no examples")
    return examples


def write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    """Write examples as JSON Lines, atomically."""
    with atomic_path(Path(path)) as staging:
        with staging.open("w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps(example_to_json(example), ensure_ascii=False) + "\n")


def split_examples(
    examples: Sequence[Example], *, train: int, test: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and return disjoint (train, test) lists of the requested sizes."""
    if train + test > len(examples):
        raise InvalidInputError(
            f"requested {train} training and {test} test examples but only {len(examples)} exist; "
            "lower --train-examples or --test-examples"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[:train]], [examples[i] for i in order[train : train + test]]


def sample(examples: Sequence[Example], count: int, *, seed: int) -> list[Example]:
    """Return ``count`` examples drawn without replacement with ``seed``."""
    if count > len(examples):
        raise InvalidInputError(f"requested {count} examples but only {len(examples)} exist")
    return random.Random(seed).sample(list(examples), count)

"""Real text that every Python installation carries, split into silos for the demo.

Each silo is a distinct domain, so an adapter trained on one should be recognisable by routing:

- ``python-source``: modules of the standard library (Python code and docstrings);
- ``language-reference``: the Python language reference topics that ``pydoc`` shows (``pydoc_data``);
- ``licenses``: the licence texts of the installed distributions (dist-info ``LICENSE`` files).

Documents are cut into chunks of whole lines of at most ``chunk_chars`` characters, and the chunks
are ordered deterministically so the demo is reproducible on one machine.
"""

from __future__ import annotations

import importlib.metadata
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from seqr.errors import InvalidInputError

SILO_NAMES = ("python-source", "language-reference", "licenses")


@dataclass(frozen=True)
class CorpusDocument:
    """One chunk of text with where it came from (a file path or a topic name)."""

    text: str
    source: str


def chunk_text(text: str, chunk_chars: int) -> Iterator[str]:
    """Yield chunks of whole lines, each at most ``chunk_chars`` long (a longer single line is cut)."""
    if chunk_chars <= 0:
        raise InvalidInputError(f"chunk_chars must be positive, got {chunk_chars}")
    current: list[str] = []
    size = 0
    for line in text.splitlines():
        line = line.rstrip()
        while len(line) > chunk_chars:
            yield line[:chunk_chars]
            line = line[chunk_chars:]
        if size + len(line) + 1 > chunk_chars and current:
            yield "\n".join(current)
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        yield "\n".join(current)


def _chunks(sources: Iterable[tuple[str, str]], chunk_chars: int, min_chars: int) -> list[CorpusDocument]:
    documents = []
    for source, text in sources:
        for chunk in chunk_text(text, chunk_chars):
            if len(chunk.strip()) >= min_chars:
                documents.append(CorpusDocument(text=chunk.strip(), source=source))
    return documents


def python_source_texts() -> Iterator[tuple[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            yield str(path.name), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def language_reference_texts() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc:{name}", topics[name]


def license_texts() -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    distributions = sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    for distribution in distributions:
        for file in distribution.files or ():
            name = file.name.upper()
            if not (name.startswith("LICEN") or name.startswith("COPYING")):
                continue
            try:
                text = Path(str(file.locate())).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text in seen:
                continue
            seen.add(text)
            yield f"{distribution.metadata['Name']}:{file.name}", text


def builtin_silos(chunk_chars: int = 600, min_chars: int = 200) -> dict[str, list[CorpusDocument]]:
    """Return the demo's silos: silo name -> chunks of real text found on this machine.

    Raises InvalidInputError when a silo finds no text (for example a Python built without its
    standard library sources); pass your own folders with ``seqr demo --data DIR`` instead.
    """
    silos = {
        "python-source": _chunks(python_source_texts(), chunk_chars, min_chars),
        "language-reference": _chunks(language_reference_texts(), chunk_chars, min_chars),
        "licenses": _chunks(license_texts(), chunk_chars, min_chars),
    }
    for name, documents in silos.items():
        if not documents:
            raise InvalidInputError(
                f"found no text for the demo silo {name!r} on this machine; run `seqr demo --data DIR` "
                "with one folder of .txt files per silo"
            )
    return silos


def folder_silos(data_dir: Path, chunk_chars: int = 600, min_chars: int = 200) -> dict[str, list[CorpusDocument]]:
    """Return one silo per sub-folder of ``data_dir``, built from its ``*.txt`` and ``*.md`` files."""
    if not data_dir.is_dir():
        raise InvalidInputError(f"data directory {str(data_dir)!r} does not exist; pass a folder with one sub-folder per silo")
    silos: dict[str, list[CorpusDocument]] = {}
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.suffix in {".txt", ".md"} and p.is_file())
        texts = ((str(p.relative_to(data_dir)), p.read_text(encoding="utf-8", errors="replace")) for p in files)
        documents = _chunks(texts, chunk_chars, min_chars)
        if documents:
            silos[folder.name] = documents
    if len(silos) < 2:
        raise InvalidInputError(
            f"{str(data_dir)!r} has {len(silos)} silo folder(s) with text; routing needs at least two "
            "sub-folders, each with .txt or .md files"
        )
    return silos

from pathlib import Path

import pytest

from seqr.demo.corpus import SILO_NAMES, builtin_silos, chunk_text, folder_silos
from seqr.errors import InvalidInputError


def test_chunk_text_keeps_whole_lines():
    text = "\n".join(f"line {i}" for i in range(100))
    chunks = list(chunk_text(text, 50))
    assert all(len(chunk) <= 50 for chunk in chunks)
    assert "\n".join(chunks) == text


def test_chunk_text_cuts_overlong_line():
    assert list(chunk_text("x" * 25, 10)) == ["x" * 10, "x" * 10, "x" * 5]


def test_builtin_silos_are_nonempty_and_distinct():
    silos = builtin_silos()
    assert tuple(silos) == SILO_NAMES
    for documents in silos.values():
        assert len(documents) >= 20
    texts = [{d.text for d in documents} for documents in silos.values()]
    assert not texts[0] & texts[1]
    assert not texts[1] & texts[2]


def test_folder_silos_reads_one_folder_per_silo(tmp_path: Path):
    for silo in ("alpha", "beta"):
        (tmp_path / silo).mkdir()
        (tmp_path / silo / "a.txt").write_text(f"{silo} text line\n" * 40)
    silos = folder_silos(tmp_path, min_chars=10)
    assert sorted(silos) == ["alpha", "beta"]


def test_folder_silos_needs_two_silos(tmp_path: Path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.txt").write_text("text\n" * 100)
    with pytest.raises(InvalidInputError, match="at least two"):
        folder_silos(tmp_path, min_chars=10)


def test_folder_silos_missing_directory(tmp_path: Path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        folder_silos(tmp_path / "missing")

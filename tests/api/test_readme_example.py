"""The README's Python API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_api_example_runs(world, monkeypatch, capsys):
    (example,) = _python_blocks()
    assert len(example.strip().splitlines()) <= 14
    monkeypatch.setenv("SEQR_HOME", str(world.registry.directory))
    monkeypatch.setenv("SEQR_TOKEN", world.tokens["alice"])
    exec(compile(example, str(README), "exec"), {})
    output = capsys.readouterr().out
    assert "('cooking', 'finance')" in output

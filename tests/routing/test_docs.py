"""The examples in docs/routing.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "routing.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_docs_example_runs(index: int) -> None:
    namespace: dict[str, object] = {}
    exec(compile(_python_blocks()[index], f"{DOC.name}[{index}]", "exec"), namespace)  # noqa: S102

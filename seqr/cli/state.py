"""Options shared by every command, set by the root callback and read through ``ctx.obj``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass
class CliState:
    registry: Path | None = None
    token: str | None = None
    debug: bool = False
    quiet: bool = False


def state(ctx: typer.Context) -> CliState:
    """Return the shared options of the running command."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj

"""Atomic writes: write under a temporary name beside the target, then rename over it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block succeeds.

    The temporary file or directory is removed when the block raises (KeyboardInterrupt included),
    so an interrupted write leaves ``target`` as it was. Replacing an existing directory is not
    atomic on POSIX: the old directory is moved aside first and removed after the rename.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
        staging = Path(name)
    try:
        yield staging
        if directory and target.exists():
            aside = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, aside)
            os.replace(staging, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)

"""Key rotation: readers never fail while data keys are rewrapped, and an interrupted rotation resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from seqr.registry import Registry
from seqr.registry.models import DataKey

from registry_helpers import World, make_factors

READERS = 3


def _versions_at(world: World, master_version: int) -> int:
    with world.registry._read() as session:
        return int(session.scalar(select(func.count()).select_from(DataKey).where(DataKey.master_key_version == master_version)) or 0)


def _populate(world: World, versions: int = 6, documents: int = 4) -> list[int]:
    ids = []
    for seed in range(versions):
        ids.append(world.registry.add_adapter_version(world.admin, "finance", "lib", make_factors(seed), tenant="acme").id)
    for index in range(documents):
        world.registry.add_document(world.admin, "legal", f"document {index}".encode(), tenant="acme")
    return ids


def test_rotation_rewraps_without_touching_blobs(world: World):
    ids = _populate(world, versions=2, documents=1)
    with world.registry._read() as session:
        before = {row.id: (row.wrapped_key, row.master_key_version) for row in session.scalars(select(DataKey))}
    report = world.registry.rotate_keys(world.admin)
    assert report.master_version == 2
    assert report.rewrapped == len(before)
    assert not report.resumed
    with world.registry._read() as session:
        after = {row.id: (row.wrapped_key, row.master_key_version) for row in session.scalars(select(DataKey))}
    assert all(after[key][1] == 2 and after[key][0] != before[key][0] for key in before)
    for version_id, seed in zip(ids, range(2), strict=True):
        loaded = world.registry.load_adapter(world.admin, version_id).factors
        expected = make_factors(seed)
        assert all(torch.equal(loaded.modules[name].q, expected.modules[name].q) for name in expected.modules)


def test_rotation_with_concurrent_readers(world: World):
    ids = _populate(world, versions=6, documents=4)
    failures: list[BaseException] = []
    reads = [0] * READERS
    stop = threading.Event()

    def read(slot: int) -> None:
        while not stop.is_set():
            for version_id in ids:
                try:
                    world.registry.load_adapter(world.admin, version_id)
                    reads[slot] += 1
                except BaseException as error:  # noqa: BLE001 - every failure is a test failure
                    failures.append(error)

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        world.registry.rotate_keys(world.admin, batch_size=1, on_batch=lambda _done, _total: time.sleep(0.02))
        world.registry.rotate_keys(world.admin, batch_size=3)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert all(count > 0 for count in reads)
    assert _versions_at(world, 3) == len(ids) + 4


def test_interrupted_rotation_resumes(world: World):
    _populate(world, versions=4, documents=2)

    class Interrupted(Exception):
        pass

    def interrupt(done: int, _total: int) -> None:
        if done >= 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        world.registry.rotate_keys(world.admin, batch_size=1, on_batch=interrupt)
    assert _versions_at(world, 2) == 2
    assert _versions_at(world, 1) == 4

    report = world.registry.rotate_keys(world.admin, batch_size=1)
    assert report.resumed
    assert report.master_version == 2
    assert report.rewrapped == 4
    assert _versions_at(world, 1) == 0
    world.registry.verify_audit(world.admin)


_CHILD = """
import os, sys, time
from seqr.registry import Registry
registry = Registry.open(sys.argv[1])
admin = registry.authenticate(os.environ["CHILD_TOKEN"])
progress = open(sys.argv[2], "w")
def slow(done, total):
    progress.write(f"{done}\\n"); progress.flush(); time.sleep(0.5)
registry.rotate_keys(admin, batch_size=1, on_batch=slow)
"""


def test_killed_rotation_process_resumes(world: World, tmp_path: Path):
    ids = _populate(world, versions=4, documents=2)
    token = world.registry.create_token(world.admin).token
    progress = tmp_path / "progress"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(world.directory), str(progress)],
        env={**os.environ, "CHILD_TOKEN": token},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (progress.exists() and progress.read_text().strip()):
            time.sleep(0.05)
        assert progress.read_text().strip(), "the rotation process made no progress"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert 0 < _versions_at(world, 2) < 6

    reopened = Registry.open(world.directory, clock=world.clock)
    try:
        report = reopened.rotate_keys(world.admin)
        assert report.resumed
        assert _versions_at(world, 1) == 0
        for version_id in ids:
            reopened.load_adapter(world.admin, version_id)
    finally:
        reopened.close()

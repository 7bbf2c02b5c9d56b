"""`seqr retention run` killed with SIGKILL at each step, a concurrent run rejected, and the next run finishing.

Every run here is a real `seqr` process. The first one pauses at a named step (through the
fault-point environment variables) while it holds the lock, and a second one exits with status 3.
Then the first is killed with SIGKILL, and a third run completes the work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqr.policies.fault_points import PAUSE_AT_VARIABLE, PAUSE_FILE_VARIABLE, Step
from seqr.policies.retention_verify import verify_retention
from seqr.registry.enums import AdapterStatus
from seqr.registry.registry import Registry
from seqr.registry.retention import manifest_document_ids

from retention_support import RetentionWorld, build_retention_world, open_world_copy

PAUSE_TIMEOUT_S = 180


def seqr_command(world: RetentionWorld, model_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "seqr.cli.main", "--registry", str(world.directory), *args, "--base-model", str(model_dir)]


def run_env(world: RetentionWorld, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in (PAUSE_AT_VARIABLE, PAUSE_FILE_VARIABLE)}
    env["SEQR_TOKEN"] = world.admin_token
    env.update(extra)
    return env


def start_paused_run(world: RetentionWorld, model_dir: Path, step: Step, marker: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        seqr_command(world, model_dir, "retention", "run"),
        env=run_env(world, **{PAUSE_AT_VARIABLE: step.value, PAUSE_FILE_VARIABLE: str(marker)}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while not marker.exists():
        if process.poll() is not None:
            _out, err = process.communicate()
            pytest.fail(f"the run exited with {process.returncode} before pausing at {step}: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run did not reach step {step} within {PAUSE_TIMEOUT_S} s")
        time.sleep(0.1)
    return process


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def active_versions(registry: Registry, world: RetentionWorld, silo: str) -> list:
    return [v for v in registry.list_adapter_versions(world.admin, silo=silo) if v.status is AdapterStatus.ACTIVE]


def check_killed_then_resumed(world: RetentionWorld, model_dir: Path, step: Step, tmp_path: Path, *, concurrent_run: bool) -> None:
    removed = world.documents["cooking"][0]
    old = world.active_version("cooking")
    world.registry.request_removal(world.admin, "cooking", document_ids=[removed])

    paused = start_paused_run(world, model_dir, step, tmp_path / "paused")
    if concurrent_run:
        concurrent = subprocess.run(seqr_command(world, model_dir, "retention", "run"), env=run_env(world),
                                    capture_output=True, text=True, timeout=PAUSE_TIMEOUT_S)
        assert concurrent.returncode == 3, concurrent.stderr
        assert "holds the registry's lock" in concurrent.stderr
    kill(paused)

    serving = active_versions(world.registry, world, "cooking")
    assert len(serving) == 1
    world.registry.load_adapter(world.admin, serving[0].id)
    if step in (Step.SHREDDED, Step.TRAINING, Step.TRAINED):
        assert serving[0].id == old.id

    finished = subprocess.run(seqr_command(world, model_dir, "retention", "run", "--json"), env=run_env(world),
                              capture_output=True, text=True, timeout=PAUSE_TIMEOUT_S)

    assert finished.returncode == 0, finished.stderr
    assert '"took_over_lock": "pid' in finished.stdout
    versions = world.registry.list_adapter_versions(world.admin, silo="cooking")
    assert [v.status for v in versions if v.status is AdapterStatus.TRAINING] == []
    assert {v.id: v.status for v in versions}[old.id] is AdapterStatus.DESTROYED
    serving = active_versions(world.registry, world, "cooking")
    assert len(serving) == 1
    assert removed not in manifest_document_ids(serving[0].manifest)
    report = verify_retention(world.registry, world.admin)
    assert report.problems == []
    assert world.registry.check_destruction(world.admin).leftovers == []
    assert world.registry.list_removal_requests(world.admin, pending_only=True) == []


@pytest.mark.parametrize("step", list(Step), ids=[step.value for step in Step])
def test_sigkill_at_step_then_next_run_finishes(step: Step, retention_template, tiny_model_dir: Path, tmp_path: Path):
    world = open_world_copy(retention_template, tmp_path / "registry")
    try:
        # One step also checks that a concurrent run is rejected; each extra process costs seconds.
        check_killed_then_resumed(world, tiny_model_dir, step, tmp_path, concurrent_run=step is Step.TRAINING)
    finally:
        world.registry.close()


@pytest.mark.postgres
def test_concurrent_runs_on_postgresql(postgres_database: str, tiny_model_dir: Path, tmp_path: Path):
    world = build_retention_world(tmp_path / "registry", tiny_model_dir, postgres_database)
    try:
        check_killed_then_resumed(world, tiny_model_dir, Step.TRAINING, tmp_path, concurrent_run=True)
    finally:
        world.registry.close()

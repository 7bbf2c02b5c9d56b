"""The retention lock: one holder at a time, stale leases taken over, a lost lease noticed."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from seqr.errors import LockHeldError
from seqr.policies.job_lock import HeldLock
from seqr.policies.retention import run_retention
from seqr.registry.models import JobLock
from seqr.registry.retention import RETENTION_LOCK


def test_run_rejected_while_lock_held(retention_world):
    world = retention_world
    world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][0]])

    with HeldLock(world.registry, RETENTION_LOCK):
        with pytest.raises(LockHeldError, match="holds the registry's lock"):
            run_retention(world.registry, world.admin, load_model=lambda _source: world.base)

    assert run_retention(world.registry, world.admin, load_model=lambda _source: world.base).documents_removed


def test_expired_lease_is_taken_over(retention_world):
    world = retention_world
    first = world.registry.acquire_job_lock("job", "first", timedelta(minutes=1))

    with pytest.raises(LockHeldError):
        world.registry.acquire_job_lock("job", "second", timedelta(minutes=1))
    world.clock.advance(timedelta(minutes=2))
    second = world.registry.acquire_job_lock("job", "second", timedelta(minutes=1))

    assert second.took_over is not None
    with pytest.raises(LockHeldError, match="lost the job lock"):
        world.registry.renew_job_lock(first, timedelta(minutes=1))
    world.registry.renew_job_lock(second, timedelta(minutes=1))


def test_lease_of_dead_process_is_taken_over(retention_world):
    world = retention_world
    lease = world.registry.acquire_job_lock("job", "ghost", timedelta(hours=1))
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()  # reaped, so no process with this id exists any more
    with Session(world.registry.engine) as session, session.begin():
        row = session.get(JobLock, "job")
        assert row is not None
        row.pid = dead_pid.pid

    taken = world.registry.acquire_job_lock("job", "heir", timedelta(hours=1))

    assert taken.took_over is not None and f"pid {dead_pid.pid}" in taken.took_over
    with pytest.raises(LockHeldError):
        world.registry.renew_job_lock(lease, timedelta(hours=1))


def test_released_lock_is_free(retention_world):
    world = retention_world

    with HeldLock(world.registry, "job", timedelta(seconds=30)) as held:
        assert held.took_over is None
    with HeldLock(world.registry, "job", timedelta(seconds=30)) as again:
        assert again.took_over is None


def test_held_lock_renews_in_background(retention_world):
    world = retention_world

    with HeldLock(world.registry, "job", timedelta(seconds=0.3)) as held:
        assert held.lease is not None
        first_expiry = held.lease.expires_at
        world.clock.advance(timedelta(seconds=1))
        time.sleep(0.5)  # more than one renewal interval (a third of the lease)
        held.check()
        assert held.lease.expires_at > first_expiry


def test_lost_lease_stops_job(retention_world):
    world = retention_world

    with HeldLock(world.registry, "job", timedelta(seconds=0.3)) as held:
        world.clock.advance(timedelta(minutes=5))  # the lease expires before the first renewal
        world.registry.acquire_job_lock("job", "usurper", timedelta(hours=1))
        time.sleep(0.5)  # renewal runs and finds the lock taken

        with pytest.raises(LockHeldError, match="lost the job lock"):
            held.check()

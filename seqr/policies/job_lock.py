"""A database lease that lets one job at a time run against a registry.

The lock is a row in ``job_locks`` with an expiry time. The holder renews it from a background
thread, so a live job keeps it however long a retrain takes. A killed job loses it when its lease
expires, or at once when the next job runs on the same host and finds the holder's process gone.
The same code serves SQLite and PostgreSQL because the check and the write share one registry
write transaction.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta
from types import TracebackType

from seqr.errors import LockHeldError, SeqrError
from seqr.registry.registry import Registry
from seqr.registry.retention import JobLease

logger = logging.getLogger(__name__)

DEFAULT_LEASE = timedelta(minutes=2)


class HeldLock:
    """Context manager that acquires a named job lock, renews it every third of the lease, and releases it.

    Entering raises :class:`LockHeldError` when another holder's lease is valid. Call :meth:`check`
    between steps: it raises :class:`LockHeldError` once renewal found the lease taken by another job.
    """

    def __init__(self, registry: Registry, name: str, lease: timedelta = DEFAULT_LEASE) -> None:
        if lease <= timedelta(0):
            raise ValueError(f"lock lease {lease} must be positive")
        self.registry = registry
        self.name = name
        self.lease_duration = lease
        self.lease: JobLease | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HeldLock:
        self.lease = self.registry.acquire_job_lock(self.name, uuid.uuid4().hex, self.lease_duration)
        self._thread = threading.Thread(target=self._renew_until_stopped, name=f"{self.name}-lock-renewal", daemon=True)
        self._thread.start()
        return self

    def _renew_until_stopped(self) -> None:
        interval = self.lease_duration.total_seconds() / 3
        while not self._stop.wait(interval):
            assert self.lease is not None
            try:
                self.lease = self.registry.renew_job_lock(self.lease, self.lease_duration)
            except LockHeldError:
                logger.error("lost the %s lock; the job stops at its next step", self.name)
                self._lost.set()
                return
            except (SeqrError, OSError) as error:
                # A transient database error: the lease still has two thirds of its time left.
                logger.warning("could not renew the %s lock, retrying: %s", self.name, error)

    @property
    def took_over(self) -> str | None:
        """The stale holder this lock replaced, if it did."""
        return self.lease.took_over if self.lease else None

    def check(self) -> None:
        if self._lost.is_set():
            raise LockHeldError(f"this job lost the {self.name} lock to another job and stopped; run it again")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lease is not None and not self._lost.is_set():
            self.registry.release_job_lock(self.lease)

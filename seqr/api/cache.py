"""Decrypted adapter factors kept on a device, keyed by (tenant id, adapter version id).

A version's factors never change once stored (a retrain creates a new version), so a cached entry
can only become stale by losing its authorisation or being replaced. The model wrapper drops
entries when the registry's change counter shows such a change; this class only stores them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from seqr.api.timings import LoadTimings
from seqr.routing.factors import AdapterFactors, ModuleFactors

logger = logging.getLogger(__name__)

CacheKey = tuple[int, int]  # (tenant id, adapter version id)


def factors_to(factors: AdapterFactors, device: torch.device) -> AdapterFactors:
    """Return ``factors`` with every Q and R on ``device``."""
    return AdapterFactors({
        name: ModuleFactors(q=f.q.to(device), r=f.r.to(device), mu=f.mu, sigma=f.sigma)
        for name, f in factors.modules.items()
    })


def _synchronize(device: torch.device) -> None:
    """Wait for queued copies to ``device``, so that a transfer's time is measured where it happens."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AdapterCache:
    """A thread-safe map from (tenant id, version id) to factors already moved to one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._entries: dict[CacheKey, AdapterFactors] = {}
        self._lock = threading.Lock()
        self.decryptions = 0

    def get_or_load(
        self, key: CacheKey, load: Callable[[], AdapterFactors], timings: LoadTimings | None = None
    ) -> AdapterFactors:
        """Return the cached factors of ``key``, or call ``load`` (which decrypts) and cache the result.

        With ``timings``, adds the seconds of ``load`` and of the move to the device, and counts
        the entry as decrypted or cached.
        """
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None:
            if timings is not None:
                timings.cached += 1
            return cached
        start = time.perf_counter()
        loaded = load()
        decrypted = time.perf_counter()
        factors = factors_to(loaded, self.device)
        _synchronize(self.device)
        if timings is not None:
            timings.decrypted += 1
            timings.decrypt_seconds += decrypted - start
            timings.transfer_seconds += time.perf_counter() - decrypted
        with self._lock:
            self.decryptions += 1
            return self._entries.setdefault(key, factors)

    def get_or_load_many(
        self,
        keys: Sequence[CacheKey],
        load: Callable[[list[CacheKey]], list[AdapterFactors]],
        timings: LoadTimings | None = None,
    ) -> dict[CacheKey, AdapterFactors]:
        """Return the factors of every key, loading the missing ones with one call of ``load``.

        ``load`` gets the missing keys and returns their factors in the same order (one read
        transaction in the registry). With ``timings``, adds the seconds of ``load`` and of the
        move to the device, and counts the entries as decrypted or cached.
        """
        with self._lock:
            found = {key: self._entries[key] for key in keys if key in self._entries}
        missing = [key for key in keys if key not in found]
        if timings is not None:
            timings.cached += len(found)
        if not missing:
            return found
        start = time.perf_counter()
        loaded = load(missing)
        decrypted = time.perf_counter()
        moved = [factors_to(factors, self.device) for factors in loaded]
        _synchronize(self.device)
        if timings is not None:
            timings.decrypted += len(missing)
            timings.decrypt_seconds += decrypted - start
            timings.transfer_seconds += time.perf_counter() - decrypted
        with self._lock:
            self.decryptions += len(missing)
            for key, factors in zip(missing, moved, strict=True):
                found[key] = self._entries.setdefault(key, factors)
        return found

    def keys(self) -> set[CacheKey]:
        with self._lock:
            return set(self._entries)

    def drop(self, keys: Iterable[CacheKey]) -> int:
        """Remove ``keys``; return how many entries were removed."""
        removed = 0
        with self._lock:
            for key in keys:
                if self._entries.pop(key, None) is not None:
                    removed += 1
        if removed:
            logger.info("dropped %d stale adapter(s) from the %s cache", removed, self.device)
        return removed

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

"""Decrypted adapter factors kept on a device, keyed by (tenant id, adapter version id).

A version's factors never change once stored (a retrain creates a new version), so a cached entry
can only become stale by losing its authorisation or being replaced. The model wrapper drops
entries when the registry's change counter shows such a change; this class only stores them.

The routed layers read one stack per module of a whole candidate set. Once a candidate set is
stacked, the cached factors of its versions become views into the stacks, so the cache and the
routed layers share one copy of each adapter. The stacks of a candidate set stay findable while a
model still uses them, so a second model with the same candidate set reuses them without copying.
Models with different candidate sets have their own stacks, so an adapter in two such sets is
stored twice while both models are loaded.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from seqr.api.timings import LoadTimings
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.routing.library import StackedFactors

logger = logging.getLogger(__name__)

CacheKey = tuple[int, int]  # (tenant id, adapter version id)


def factors_to(factors: AdapterFactors, device: torch.device) -> AdapterFactors:
    """Return ``factors`` with every Q and R on ``device``."""
    return AdapterFactors({
        name: ModuleFactors(q=f.q.to(device), r=f.r.to(device), mu=f.mu, sigma=f.sigma)
        for name, f in factors.modules.items()
    })


@dataclass(frozen=True, eq=False)
class StackedAdapters:
    """The stacked factors of one candidate set: ``keys`` in routing order, one stack per module.

    Every model that routes among this candidate set shares these stacks, and the routed layers
    only read them. The cache finds them only while some model keeps a reference to this object.
    """

    keys: tuple[CacheKey, ...]
    modules: Mapping[str, StackedFactors]


def _synchronize(device: torch.device) -> None:
    """Wait for queued copies to ``device``, so that a transfer's time is measured where it happens."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AdapterCache:
    """A thread-safe map from (tenant id, version id) to factors already moved to one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._entries: dict[CacheKey, AdapterFactors] = {}
        self._stacks: weakref.WeakValueDictionary[tuple[CacheKey, ...], StackedAdapters] = weakref.WeakValueDictionary()
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

    def get_or_stack(
        self,
        keys: Sequence[CacheKey],
        load: Callable[[list[CacheKey]], list[AdapterFactors]],
        stack: Callable[[list[AdapterFactors]], Mapping[str, StackedFactors]],
        timings: LoadTimings | None = None,
    ) -> StackedAdapters:
        """Return the stacks of exactly ``keys``, in that order, building them only when no model uses them.

        Stacks that a live model built for the same keys are returned as they are: nothing is
        decrypted, copied or checked again. Otherwise the missing versions are loaded as in
        :meth:`get_or_load_many`, ``stack`` builds one stack per module from the factors in the
        order of ``keys``, and the cached factors of ``keys`` become views into those stacks.
        With ``timings``, the seconds of ``stack`` are added to ``attach_seconds``.
        """
        ordered = tuple(keys)
        with self._lock:
            live = self._stacks.get(ordered)
        if live is not None:
            if timings is not None:
                timings.cached += len(ordered)
            return live
        factors = self.get_or_load_many(ordered, load, timings)
        start = time.perf_counter()
        built = StackedAdapters(ordered, dict(stack([factors[key] for key in ordered])))
        _synchronize(self.device)
        if timings is not None:
            timings.attach_seconds += time.perf_counter() - start
        with self._lock:
            stacked = self._stacks.setdefault(ordered, built)
            for position, key in enumerate(ordered):
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries[key] = _views(stacked, position, entry, self.device)
        return stacked

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


def _views(stacked: StackedAdapters, position: int, entry: AdapterFactors, device: torch.device) -> AdapterFactors:
    """Return ``entry`` with its Q and R replaced by views into adapter ``position`` of ``stacked``.

    The entry's own tensors are then no longer referenced by the cache, so their memory is freed
    once nothing else references them. Entries whose stacks live on another device stay as they are.
    """
    # NOTE: a view keeps the storage of its whole stack alive, so dropping some entries of a stack
    # frees no device memory until the stack's models are gone and its other entries are dropped too.
    modules: dict[str, ModuleFactors] = {}
    for name, module in entry.modules.items():
        stack = stacked.modules.get(name)
        if stack is None or stack.q.device.type != device.type:
            return entry
        modules[name] = ModuleFactors(q=stack.q[position], r=stack.r[position], mu=module.mu, sigma=module.sigma)
    return AdapterFactors(modules)

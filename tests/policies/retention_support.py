"""Builders for the retention tests: a registry with a tiny model library and two silos with trained adapters."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from seqr.policies.training_jobs import train_silo_adapter
from seqr.registry.registry import Registry
from seqr.registry.views import Principal
from seqr.training.base_model import BaseModel, load_base_model
from seqr.training.library import create_library
from seqr.training.presets import TrainingConfig

RETENTION_TRAINING = TrainingConfig(epochs=1, batch_size=4, learning_rate=5e-3, max_length=32, seed=3)
START = datetime(2026, 1, 1, tzinfo=UTC)


class MutableClock:
    """A registry clock that tests move forward by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class RetentionWorld:
    registry: Registry
    admin: Principal
    admin_token: str
    base: BaseModel
    directory: Path
    clock: MutableClock
    documents: dict[str, list[int]]  # silo -> document ids, in the order added

    def active_version(self, silo: str):
        active = [v for v in self.registry.list_adapter_versions(self.admin, silo=silo) if v.status.value == "active"]
        assert len(active) <= 1
        return active[0] if active else None


def silo_document(silo: str, index: int) -> bytes:
    lines = [json.dumps({"text": f"{silo} note {index}.{line}: keep {index * 7 + line} items."}) for line in range(3)]
    return "\n".join(lines).encode()


def build_retention_world(directory: Path, model_dir: Path, database_url: str | None = None) -> RetentionWorld:
    clock = MutableClock(START)
    registry, created = Registry.init(directory, database_url, clock=clock)
    admin = registry.authenticate(created.token)
    base = load_base_model(model_dir)
    library = create_library(base.model, base_fingerprint=base.fingerprint, rank=4, alpha=8.0, seed=1)
    registry.add_library(
        admin, "main", base_model_fingerprint=base.fingerprint, target_modules=list(library.module_names),
        rank=library.rank, alpha=library.alpha, seed=library.seed, shared_a=library.a,
        base_model_source=str(model_dir),
    )
    documents: dict[str, list[int]] = {}
    for silo in ("cooking", "finance"):
        registry.create_silo(admin, silo)
        documents[silo] = [
            registry.add_document(admin, silo, silo_document(silo, index),
                                  metadata={"source": f"export-{index % 2}", "index": index}).id
            for index in range(3)
        ]
        result = train_silo_adapter(registry, admin, silo, "main", base, RETENTION_TRAINING, progress=False)
        registry.activate_adapter_version(admin, result.version.id)
    return RetentionWorld(registry, admin, created.token, base, directory, clock, documents)


@dataclass(frozen=True)
class WorldTemplate:
    """A built world, closed, to copy for each test: building it trains two adapters (seconds)."""

    directory: Path
    admin_token: str
    base: BaseModel
    documents: dict[str, list[int]]


def open_world_copy(template: WorldTemplate, directory: Path) -> RetentionWorld:
    """Copy the template registry (database, keys) to ``directory`` and open it with a fresh clock."""
    shutil.copytree(template.directory, directory)
    # registry.json names the SQLite file by absolute path: point the copy at its own database.
    config = directory / "registry.json"
    document = json.loads(config.read_text())
    document["database_url"] = f"sqlite:///{directory.resolve() / 'registry.db'}"
    config.write_text(json.dumps(document))
    clock = MutableClock(START)
    registry = Registry.open(directory, clock=clock)
    admin = registry.authenticate(template.admin_token)
    documents = {silo: list(ids) for silo, ids in template.documents.items()}
    return RetentionWorld(registry, admin, template.admin_token, template.base, directory, clock, documents)

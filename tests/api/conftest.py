"""A registry with one tenant, two silos with trained tiny adapters, and users with different grants."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from seqr.policies.training_jobs import train_silo_adapter
from seqr.registry.registry import Registry
from seqr.registry.views import Principal
from seqr.training.base_model import BaseModel, load_base_model
from seqr.training.library import create_library
from seqr.training.presets import TrainingConfig

TINY_TRAINING = TrainingConfig(epochs=1, batch_size=4, learning_rate=5e-3, max_length=48, seed=0)
SILO_TEXTS = {
    "cooking": [f"Stir the soup {i} times and add {i} pinches of salt." for i in range(8)],
    "finance": [f"Invoice {i}: pay {i * 10} EUR before the end of month {i}." for i in range(8)],
}


@dataclass
class World:
    registry: Registry
    admin: Principal
    admin_token: str
    base: BaseModel
    model_dir: Path
    tokens: dict[str, str]


def build_world(directory: Path, model_dir: Path) -> World:
    registry, created = Registry.init(directory)
    admin = registry.authenticate(created.token)
    base = load_base_model(model_dir)
    library = create_library(base.model, base_fingerprint=base.fingerprint, rank=4, alpha=8.0, seed=1)
    registry.add_library(
        admin, "main", base_model_fingerprint=base.fingerprint, target_modules=list(library.module_names),
        rank=library.rank, alpha=library.alpha, seed=library.seed, shared_a=library.a,
        base_model_source=str(model_dir),
    )
    for silo, texts in SILO_TEXTS.items():
        registry.create_silo(admin, silo)
        registry.add_document(admin, silo, "\n".join(json.dumps({"text": text}) for text in texts).encode())
        result = train_silo_adapter(registry, admin, silo, "main", base, TINY_TRAINING, progress=False)
        registry.activate_adapter_version(admin, result.version.id)
    tokens = {}
    for user, silos in {"alice": ["cooking", "finance"], "bob": ["cooking"]}.items():
        registry.create_principal(admin, user)
        for silo in silos:
            registry.grant(admin, silo, principal=user)
        tokens[user] = registry.create_token(admin, user).token
    return World(registry, admin, created.token, base, model_dir, tokens)


@pytest.fixture
def tiny_training() -> TrainingConfig:
    return TINY_TRAINING


@pytest.fixture
def world(tmp_path: Path, tiny_model_dir: Path):
    built = build_world(tmp_path / "registry", tiny_model_dir)
    yield built
    built.registry.close()

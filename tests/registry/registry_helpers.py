"""Helpers of the registry tests: a fake clock, adapter factors, and a small populated world.

A module with a unique name (not conftest) so that test files can import it even when other
test directories have their own conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch

from seqr.registry import Principal, Registry
from seqr.routing.factors import AdapterFactors, ModuleFactors

MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj")
RANK = 4
IN_FEATURES = 16
OUT_FEATURES = 16


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_shared_a(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(RANK, IN_FEATURES, generator=generator) for name in MODULES}  # (r, n)


def make_factors(seed: int) -> AdapterFactors:
    generator = torch.Generator().manual_seed(seed)
    return AdapterFactors(
        modules={
            name: ModuleFactors.from_b(torch.randn(OUT_FEATURES, RANK, generator=generator), mu=1.0 + seed, sigma=0.5)
            for name in MODULES
        }
    )


@dataclass
class World:
    """A registry with tenant ``acme``, silos ``finance`` and ``legal`` and a library ``lib``."""

    registry: Registry
    admin: Principal
    clock: FakeClock
    directory: Path

    def user(self, name: str, tenant: str = "acme") -> Principal:
        self.registry.create_principal(self.admin, name, tenant=tenant)
        return self.registry.authenticate(self.registry.create_token(self.admin, name, tenant=tenant).token)

    def active_version(self, silo: str, seed: int, tenant: str = "acme") -> int:
        version = self.registry.add_adapter_version(self.admin, silo, "lib", make_factors(seed), tenant=tenant)
        self.registry.activate_adapter_version(self.admin, version.id)
        return version.id


def add_tenant(registry: Registry, admin: Principal, tenant: str, silos: tuple[str, ...] = ("finance", "legal")) -> None:
    registry.create_tenant(admin, tenant)
    for silo in silos:
        registry.create_silo(admin, silo, tenant=tenant)
    registry.add_library(
        admin, "lib", base_model_fingerprint="tiny-llama", target_modules=["q_proj", "v_proj"],
        rank=RANK, alpha=8.0, seed=0, shared_a=make_shared_a(), tenant=tenant,
    )

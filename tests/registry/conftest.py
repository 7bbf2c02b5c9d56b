"""Fixtures of the registry tests: a fresh registry on SQLite and PostgreSQL and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_helpers import FakeClock, World, add_tenant

from seqr.registry import Registry


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(tmp_path: Path, database_url: str, clock: FakeClock) -> Iterator[World]:
    directory = tmp_path / "registry"
    registry, token = Registry.init(directory, database_url, clock=clock)
    admin = registry.authenticate(token.token)
    add_tenant(registry, admin, "acme")
    try:
        yield World(registry, admin, clock, directory)
    finally:
        registry.close()


@pytest.fixture
def sqlite_world(tmp_path: Path, clock: FakeClock) -> Iterator[World]:
    directory = tmp_path / "registry"
    registry, token = Registry.init(directory, clock=clock)
    admin = registry.authenticate(token.token)
    add_tenant(registry, admin, "acme")
    try:
        yield World(registry, admin, clock, directory)
    finally:
        registry.close()

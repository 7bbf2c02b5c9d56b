"""Fixtures of the retention tests; the builders are in retention_support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from retention_support import WorldTemplate, build_retention_world, open_world_copy


@pytest.fixture(scope="session")
def retention_template(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> WorldTemplate:
    directory = tmp_path_factory.mktemp("retention-template") / "registry"
    world = build_retention_world(directory, tiny_model_dir)
    world.registry.close()
    return WorldTemplate(directory, world.admin_token, world.base, world.documents)


@pytest.fixture
def retention_world(tmp_path: Path, retention_template: WorldTemplate):
    world = open_world_copy(retention_template, tmp_path / "registry")
    yield world
    world.registry.close()

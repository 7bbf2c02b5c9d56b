"""Loading several adapter versions at once checks each like loading one."""

from __future__ import annotations

import pytest
import torch

from seqr.errors import NotFoundError


def test_load_adapters_matches_load_adapter(sqlite_world):
    world = sqlite_world
    ids = [world.active_version("finance", seed=1), world.active_version("legal", seed=2)]
    reader = world.user("reader")
    for silo in ("finance", "legal"):
        world.registry.grant(world.admin, silo, principal="reader", tenant="acme")

    batch = world.registry.load_adapters(reader, ids)

    assert [loaded.info.id for loaded in batch] == ids
    for loaded, version_id in zip(batch, ids, strict=True):
        single = world.registry.load_adapter(reader, version_id)
        for name, module in single.factors.modules.items():
            assert torch.equal(loaded.factors.modules[name].q, module.q)
            assert torch.equal(loaded.factors.modules[name].r, module.r)


def test_load_adapters_rejects_ungranted_version(sqlite_world):
    world = sqlite_world
    granted = world.active_version("finance", seed=1)
    hidden = world.active_version("legal", seed=2)
    reader = world.user("reader")
    world.registry.grant(world.admin, "finance", principal="reader", tenant="acme")

    with pytest.raises(NotFoundError):
        world.registry.load_adapters(reader, [granted, hidden])


def test_load_adapters_empty_list(sqlite_world):
    assert sqlite_world.registry.load_adapters(sqlite_world.admin, []) == []

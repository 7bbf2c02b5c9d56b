"""The device cache of decrypted adapters: shared stacks, one copy per adapter, isolation."""

from __future__ import annotations

import pytest
import torch

from seqr.api import login
from seqr.api.session import adapter_cache
from seqr.routing import AdapterFactors
from seqr.routing import library as library_module

PROMPT = "Stir the soup."


def _load(world, user: str):
    return login(world.registry, world.tokens[user]).load_model(world.model_dir, device="cpu")


def _stacks(model) -> dict:
    return {name: layer.router.factors for name, layer in model._routed.layers.items()}


def _storages(tensors) -> dict[int, int]:
    return {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in tensors}


def test_warm_load_reuses_stacks(world, monkeypatch):
    first = _load(world, "alice")
    monkeypatch.setattr("seqr.api.model.stack_adapters", lambda *args, **kwargs: pytest.fail("stacked again"))

    second = _load(world, "alice")

    assert second.load_timings.cached == 2
    assert second.load_timings.decrypted == 0
    for name, stack in _stacks(second).items():
        assert stack.q is _stacks(first)[name].q
        assert stack.r is _stacks(first)[name].r


def test_registry_factors_not_checked_again(world, monkeypatch):
    monkeypatch.setattr(library_module, "all_finite", lambda tensor: pytest.fail("checked again"))

    model = _load(world, "alice")

    assert model.load_timings.decrypted + model.load_timings.cached == 2


def test_cache_and_layers_share_one_copy(world):
    model = _load(world, "alice")
    cache = adapter_cache(world.registry, torch.device("cpu"))
    cached = [
        tensor
        for key in cache.keys()
        for module in cache.get_or_load(key, lambda: AdapterFactors({})).modules.values()
        for tensor in (module.q, module.r)
    ]
    stacked = [tensor for stack in _stacks(model).values() for tensor in (stack.q, stack.r)]

    assert set(_storages(cached)) <= set(_storages(stacked))
    assert sum(_storages(cached + stacked).values()) == model.load_timings.adapter_bytes


def test_sessions_with_other_grants_isolated(world):
    alice = _load(world, "alice")
    bob = _load(world, "bob")

    assert alice.silos == ("cooking", "finance")
    assert bob.silos == ("cooking",)
    for name, stack in _stacks(bob).items():
        assert stack.num_adapters == 1
        assert _stacks(alice)[name].num_adapters == 2
        assert not set(_storages([stack.q, stack.r])) & set(_storages([_stacks(alice)[name].q, _stacks(alice)[name].r]))


def test_bob_matches_his_own_adapter(world):
    alice = _load(world, "alice")
    bob = _load(world, "bob")
    cooking = alice._routed.index_of("cooking")

    for name, stack in _stacks(bob).items():
        assert torch.equal(stack.q[0], _stacks(alice)[name].q[cooking])


def test_closing_one_model_keeps_others_working(world):
    first = _load(world, "alice")
    second = _load(world, "alice")
    bob = _load(world, "bob")
    expected_alice = second.logits(PROMPT)
    expected_bob = bob.logits(PROMPT)

    first.close()

    assert torch.equal(second.logits(PROMPT), expected_alice)
    assert torch.equal(bob.logits(PROMPT), expected_bob)
    assert second.silos == ("cooking", "finance")


def test_revoke_restacks_without_the_silo(world):
    model = _load(world, "alice")
    model.logits(PROMPT)
    world.registry.revoke(world.admin, "finance", principal="alice")

    model.logits(PROMPT)

    assert model.silos == ("cooking",)
    assert all(stack.num_adapters == 1 for stack in _stacks(model).values())
    assert model.load_timings.decrypted == 0

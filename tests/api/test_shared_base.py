"""Base models shared between sessions: one copy of the weights, separate modules."""

from __future__ import annotations

import torch

from seqr.api import login
from seqr.api.session import _base_models, load_shared_base, model_source, share_weights
from seqr.routing import RoutedLinear

PROMPT = "Stir the soup."


def _pointers(model: torch.nn.Module) -> dict[str, int]:
    return {name: parameter.data_ptr() for name, parameter in model.named_parameters()}


def test_copies_share_weight_storage(tiny_model_dir):
    first = load_shared_base(tiny_model_dir)
    second = load_shared_base(tiny_model_dir)

    assert _pointers(first.model) == _pointers(second.model)
    assert first.model is not second.model
    assert first.tokenizer is not second.tokenizer


def test_cast_copy_leaves_cache_unchanged(tiny_model_dir):
    copy = load_shared_base(tiny_model_dir)
    cached = _base_models[model_source(tiny_model_dir)]

    copy.model.to(torch.float64)

    assert all(parameter.dtype == torch.float32 for parameter in cached.model.parameters())
    assert all(parameter.dtype == torch.float64 for parameter in copy.model.parameters())


def test_share_weights_keeps_ties_and_grad_flags():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    model[1].weight = model[0].weight
    model[0].bias.requires_grad_(False)
    model.register_buffer("scale", torch.ones(3))

    copy = share_weights(model)

    assert copy[1].weight is copy[0].weight
    assert copy[0].weight is not model[0].weight
    assert copy[0].weight.data_ptr() == model[0].weight.data_ptr()
    assert not copy[0].bias.requires_grad
    assert copy.scale.data_ptr() == model.scale.data_ptr()


def test_routing_stays_on_its_own_model(world):
    alice = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    bob = login(world.registry, world.tokens["bob"]).load_model(world.model_dir, device="cpu")
    cached = _base_models[model_source(world.model_dir)]

    assert _pointers(alice.model) == _pointers(bob.model)
    assert not any(isinstance(module, RoutedLinear) for module in cached.model.modules())
    assert {layer.router.num_adapters for layer in alice.model.modules() if isinstance(layer, RoutedLinear)} == {2}
    assert {layer.router.num_adapters for layer in bob.model.modules() if isinstance(layer, RoutedLinear)} == {1}

    expected = bob.logits(PROMPT)
    alice.close()
    assert torch.equal(bob.logits(PROMPT), expected)
    assert not any(isinstance(module, RoutedLinear) for module in alice.model.modules())

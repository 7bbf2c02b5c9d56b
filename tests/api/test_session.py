from __future__ import annotations

import pytest
import torch

from seqr.api import login
from seqr.api.session import adapter_cache
from seqr.errors import AuthenticationError, InvalidInputError, ModelError, NotFoundError
from seqr.policies.training_jobs import train_silo_adapter


def test_load_model_attaches_only_granted_silos(world):
    alice = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    bob = login(world.registry, world.tokens["bob"]).load_model(world.model_dir, device="cpu")
    assert alice.silos == ("cooking", "finance")
    assert bob.silos == ("cooking",)
    assert bob.route("Invoice 3: pay now.").chosen_silos() == {"cooking"}


def test_route_explains_every_module_and_token(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    explanation = model.route("Stir the soup.")
    assert len(explanation.modules) == 8  # 2 layers x q/k/v/o
    for route in explanation.modules.values():
        assert len(route.chosen) == len(explanation.tokens)
        assert all(len(row) == 2 for row in route.scores)
    assert set(explanation.silo_shares()) <= {"cooking", "finance"}
    assert explanation.to_json()["silos"] == ["cooking", "finance"]


def test_generate_returns_one_text_per_prompt(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    outputs = model.generate(["Stir", "Invoice 2"], max_new_tokens=4)
    assert len(outputs) == 2
    assert all(isinstance(text, str) for text in outputs)


def test_revoked_grant_is_dropped_on_next_request(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    assert "finance" in model.silos
    world.registry.revoke(world.admin, "finance", principal="alice")
    explanation = model.route("Invoice 3: pay now.")
    assert model.silos == ("cooking",)
    assert explanation.chosen_silos() == {"cooking"}
    cached_versions = {version_id for _, version_id in adapter_cache(world.registry, torch.device("cpu")).keys()}
    assert all(version.silo != "finance" or version.id not in cached_versions for version in world.registry.list_adapter_versions(world.admin))


def test_replaced_version_is_reloaded_on_next_request(world, tiny_training):
    model = login(world.registry, world.tokens["bob"]).load_model(world.model_dir, device="cpu")
    (old,) = model.versions
    result = train_silo_adapter(world.registry, world.admin, "cooking", "main", world.base, tiny_training, progress=False)
    world.registry.activate_adapter_version(world.admin, result.version.id)
    model.route("Stir the soup.")
    (new,) = model.versions
    assert new.id == result.version.id != old.id
    cache = adapter_cache(world.registry, torch.device("cpu"))
    assert (old.tenant, old.id) not in {(key[0], key[1]) for key in cache.keys()}
    assert all(version_id != old.id for _, version_id in cache.keys())


def test_unchanged_registry_decrypts_once(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    cache = adapter_cache(world.registry, torch.device("cpu"))
    before = cache.decryptions
    for _ in range(3):
        model.logits("Stir the soup.")
    assert cache.decryptions == before


def test_revoked_token_rejected_on_next_request(world):
    session = login(world.registry, world.tokens["bob"])
    model = session.load_model(world.model_dir, device="cpu")
    public_id = world.registry.list_tokens(world.admin, "bob")[0].public_id
    world.registry.revoke_token(world.admin, public_id)
    with pytest.raises(AuthenticationError):
        model.generate("Stir", max_new_tokens=2)


def test_unknown_token_rejected(world):
    with pytest.raises(AuthenticationError):
        login(world.registry, world.tokens["bob"][:-4] + "AAAA")


def test_user_without_grants_gets_clear_error(world):
    world.registry.create_principal(world.admin, "carol")
    token = world.registry.create_token(world.admin, "carol").token
    with pytest.raises(NotFoundError, match="no authorised adapter"):
        login(world.registry, token).load_model(world.model_dir, device="cpu")


def test_other_base_model_rejected(world, tmp_path, make_model_dir):
    other = make_model_dir(tmp_path / "other", seed=7)
    with pytest.raises(ModelError, match="differs from the base model"):
        login(world.registry, world.tokens["bob"]).load_model(other, device="cpu")


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_rejected(world, prompt: str):
    model = login(world.registry, world.tokens["bob"]).load_model(world.model_dir, device="cpu")
    with pytest.raises(InvalidInputError, match="empty"):
        model.generate(prompt)


def test_prompt_longer_than_context_rejected(world):
    model = login(world.registry, world.tokens["bob"]).load_model(world.model_dir, device="cpu")
    with pytest.raises(InvalidInputError, match="context of 256 tokens"):
        model.generate("x" * 300, max_new_tokens=1)


def test_route_many_keeps_input_order(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    texts = ["Invoice 3: pay 21 EUR by Friday, then file it.", "Stir.", "Add salt to the soup."]
    explanations = model.route_many(texts, batch_size=2)
    assert [explanation.text for explanation in explanations] == texts
    for explanation in explanations:
        assert set(explanation.mean_scores()) == {"cooking", "finance"}
        assert explanation.sequence_silo() in {"cooking", "finance"}

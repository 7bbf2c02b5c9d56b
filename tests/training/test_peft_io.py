"""PEFT export and import: logits parity with PeftModel, and rejection of incompatible adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seqr.errors import AdapterFormatError
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.training.base_model import BaseModel
from seqr.training.library import Library, create_library
from seqr.training.lora import attached_lora
from seqr.training.peft_io import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE, export_peft, import_peft
from seqr.training.train import TrainedAdapter


def random_adapter(library: Library, seed: int = 1) -> TrainedAdapter:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, a in library.a.items():
        out_features = 64 if name.endswith(("q_proj", "o_proj")) else 32
        b = torch.randn((out_features, a.shape[0]), generator=generator)
        modules[name] = ModuleFactors.from_b(b, mu=1.0, sigma=0.5)
    return TrainedAdapter(AdapterFactors(modules), library.base_fingerprint, library.fingerprint)


@pytest.fixture
def exported(tmp_path: Path, tiny_library: Library) -> tuple[Path, TrainedAdapter]:
    adapter = random_adapter(tiny_library)
    directory = tmp_path / "peft"
    export_peft(adapter, tiny_library, directory, base_model_name="tiny-llama")
    return directory, adapter


def test_export_loads_in_peft_with_same_logits(exported, tiny_base: BaseModel, tiny_library: Library) -> None:
    from peft import PeftModel

    directory, adapter = exported
    input_ids = torch.tensor([[5, 17, 99, 3, 250, 42, 7]])
    b = {name: factors.b() for name, factors in adapter.factors.modules.items()}
    with attached_lora(tiny_base.model, tiny_library, b=b), torch.no_grad():
        ours = tiny_base.model(input_ids=input_ids).logits
    with torch.no_grad():
        plain = tiny_base.model(input_ids=input_ids).logits
    peft_model = PeftModel.from_pretrained(tiny_base.model, str(directory)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=input_ids).logits

    assert not torch.allclose(ours, plain, atol=1e-3)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_import_round_trip_keeps_factors(exported, tiny_library: Library) -> None:
    directory, adapter = exported
    imported = import_peft(directory, tiny_library)
    for name, factors in adapter.factors.modules.items():
        torch.testing.assert_close(imported.factors.modules[name].b(), factors.b(), rtol=1e-5, atol=1e-5)
        assert imported.factors.modules[name].mu == 1.0
        assert imported.factors.modules[name].sigma == 0.5
    assert imported.a_fingerprint == tiny_library.fingerprint


def _rewrite_weights(directory: Path, change) -> None:
    tensors = load_file(str(directory / WEIGHTS_FILE))
    change(tensors)
    save_file(tensors, str(directory / WEIGHTS_FILE))


def test_import_rejects_foreign_a(exported, tiny_base: BaseModel) -> None:
    directory, _ = exported
    other = create_library(tiny_base.model, base_fingerprint=tiny_base.fingerprint, rank=4, alpha=8.0, seed=4)
    with pytest.raises(AdapterFormatError, match="differs from the library's shared A"):
        import_peft(directory, other)


def test_import_rejects_wrong_rank(exported, tiny_base: BaseModel) -> None:
    directory, _ = exported
    other = create_library(tiny_base.model, base_fingerprint=tiny_base.fingerprint, rank=8, alpha=8.0, seed=3)
    with pytest.raises(AdapterFormatError, match="rank r=4, but the library's rank is 8"):
        import_peft(directory, other)


def test_import_rejects_wrong_shape(exported, tiny_library: Library) -> None:
    directory, _ = exported
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    _rewrite_weights(directory, lambda tensors: tensors.__setitem__(key, tensors[key][:, :32].contiguous()))
    with pytest.raises(AdapterFormatError, match=r"has shape \(4, 32\), but the library's A is \(4, 64\)"):
        import_peft(directory, tiny_library)


def test_import_rejects_missing_key(exported, tiny_library: Library) -> None:
    directory, _ = exported
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    _rewrite_weights(directory, lambda tensors: tensors.pop(key))
    with pytest.raises(AdapterFormatError, match="missing the key .*layers.1.self_attn.v_proj.lora_B"):
        import_peft(directory, tiny_library)


def test_import_rejects_other_targets(exported, tiny_library: Library) -> None:
    directory, _ = exported
    extra = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"
    _rewrite_weights(directory, lambda tensors: tensors.__setitem__(extra, torch.zeros(4, 64)))
    with pytest.raises(AdapterFormatError, match="outside the library.*mlp.up_proj"):
        import_peft(directory, tiny_library)


def test_import_rejects_pickle(exported, tiny_library: Library) -> None:
    directory, _ = exported
    (directory / WEIGHTS_FILE).rename(directory / PICKLE_FILE)
    with pytest.raises(AdapterFormatError, match="pickle file.*never read.*save_file"):
        import_peft(directory, tiny_library)


def test_import_rejects_missing_config(exported, tiny_library: Library) -> None:
    directory, _ = exported
    (directory / CONFIG_FILE).unlink()
    with pytest.raises(AdapterFormatError, match="adapter_config.json is missing"):
        import_peft(directory, tiny_library)


def test_import_rejects_other_alpha(exported, tiny_library: Library) -> None:
    directory, _ = exported
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["lora_alpha"] = 4
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="lora_alpha=4"):
        import_peft(directory, tiny_library)


def test_interrupted_export_leaves_nothing(tmp_path: Path, tiny_library: Library, monkeypatch) -> None:
    import seqr.training.peft_io as peft_io

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(peft_io, "save_file", fail)
    with pytest.raises(KeyboardInterrupt):
        export_peft(random_adapter(tiny_library), tiny_library, tmp_path / "peft", base_model_name="tiny")
    assert list(tmp_path.iterdir()) == []

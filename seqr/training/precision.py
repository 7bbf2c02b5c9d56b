"""Compute precision and device choice shared by training, calibration and evaluation."""

from __future__ import annotations

import contextlib
import enum

import torch


class Precision(enum.StrEnum):
    AUTO = "auto"  # bfloat16 autocast on CUDA and on CPUs with native bfloat16, float32 elsewhere
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


def cpu_supports_bfloat16() -> bool:
    """Return True when oneDNN reports native bfloat16 support (AVX512-BF16 or AMX) on this CPU."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Return the autocast context for ``precision`` on ``device`` (a no-op for float32)."""
    use_bf16 = precision is Precision.BFLOAT16 or (
        precision is Precision.AUTO and (device.type == "cuda" or cpu_supports_bfloat16())
    )
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

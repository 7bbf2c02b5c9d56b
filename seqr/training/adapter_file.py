"""Save and load a :class:`~seqr.training.train.TrainedAdapter` as one safetensors file.

The file stores Q and R of every module as ``<module>.q`` and ``<module>.r``, and in its metadata
the calibration statistics, the metrics and both fingerprints. Writes are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from seqr.errors import AdapterFormatError
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.training.atomic import atomic_path
from seqr.training.train import TrainedAdapter

_FORMAT = "seqr-adapter"


def save_adapter(adapter: TrainedAdapter, path: Path) -> None:
    """Write ``adapter`` to ``path`` atomically."""
    tensors = {}
    statistics = {}
    for name, factors in adapter.factors.modules.items():
        tensors[f"{name}.q"] = factors.q.contiguous()
        tensors[f"{name}.r"] = factors.r.contiguous()
        statistics[name] = [factors.mu, factors.sigma]
    metadata = {
        "format": _FORMAT,
        "base_fingerprint": adapter.base_fingerprint,
        "a_fingerprint": adapter.a_fingerprint,
        "calibration": json.dumps(statistics),
        "metrics": json.dumps(adapter.metrics),
    }
    with atomic_path(Path(path)) as staging:
        save_file(tensors, str(staging), metadata=metadata)


def load_adapter(path: Path) -> TrainedAdapter:
    """Read an adapter written by :func:`save_adapter`; raise AdapterFormatError if it is not one."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise AdapterFormatError(f"cannot read the adapter file {path}: {error}") from error
    if metadata.get("format") != _FORMAT:
        raise AdapterFormatError(f"{path} is not a seqr adapter file; export PEFT adapters with import_peft first")
    statistics: dict[str, list[float | None]] = json.loads(metadata["calibration"])
    modules = {}
    for name, (mu, sigma) in statistics.items():
        try:
            modules[name] = ModuleFactors(q=tensors[f"{name}.q"], r=tensors[f"{name}.r"], mu=mu, sigma=sigma)
        except KeyError as error:
            raise AdapterFormatError(f"{path} lacks the tensor {error.args[0]!r}; the file is truncated or corrupt") from error
    return TrainedAdapter(
        factors=AdapterFactors(modules=modules),
        base_fingerprint=metadata["base_fingerprint"],
        a_fingerprint=metadata["a_fingerprint"],
        metrics=json.loads(metadata["metrics"]),
    )

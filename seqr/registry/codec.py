"""Safetensors codecs for adapter factors and a library's shared A (never pickle).

Factors of module ``m`` are stored as tensors ``m.q`` (out, r), ``m.r`` (r, r) and, when
calibrated, the 0-d tensors ``m.mu`` and ``m.sigma``. Decoding validates names, shapes, dtypes
and finiteness before any tensor is returned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from seqr.errors import AdapterFormatError, IntegrityError
from seqr.fingerprints import fingerprint_tensors
from seqr.routing.factors import AdapterFactors, ModuleFactors

FACTORS_FORMAT = "seqr-factors-v1"
_PARTS = ("q", "r", "mu", "sigma")


def encode_factors(factors: AdapterFactors) -> bytes:
    """Serialise every module's Q, R, mu and sigma as float32 safetensors bytes."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in factors.modules.items():
        if (module.mu is None) != (module.sigma is None):
            raise AdapterFormatError(f"module {name!r} has only one of mu and sigma; calibrate both or neither")
        tensors[f"{name}.q"] = module.q.detach().to(torch.float32).contiguous().cpu()
        tensors[f"{name}.r"] = module.r.detach().to(torch.float32).contiguous().cpu()
        if module.mu is not None and module.sigma is not None:
            tensors[f"{name}.mu"] = torch.tensor(float(module.mu), dtype=torch.float32)
            tensors[f"{name}.sigma"] = torch.tensor(float(module.sigma), dtype=torch.float32)
    metadata = {"format": FACTORS_FORMAT, "modules": json.dumps(sorted(factors.modules))}
    return save_tensors(tensors, metadata=metadata)


def decode_factors(payload: bytes, *, rank: int | None = None, modules: set[str] | None = None) -> AdapterFactors:
    """Parse and validate factors; ``rank`` and ``modules`` pin the library's shape when given."""
    try:
        tensors = load_tensors(payload)
    except (SafetensorError, ValueError) as error:
        raise AdapterFormatError("adapter factors are not valid safetensors bytes") from error
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.rpartition(".")
        if part not in _PARTS or not name:
            raise AdapterFormatError(f"unexpected tensor {key!r} in adapter factors")
        by_module.setdefault(name, {})[part] = tensor
    if modules is not None and set(by_module) != modules:
        raise AdapterFormatError(
            f"adapter factors cover modules {sorted(by_module)}, but the library targets {sorted(modules)}"
        )
    return AdapterFactors(modules={name: _module(name, parts, rank) for name, parts in sorted(by_module.items())})


def _module(name: str, parts: Mapping[str, torch.Tensor], rank: int | None) -> ModuleFactors:
    if "q" not in parts or "r" not in parts:
        raise AdapterFormatError(f"module {name!r} lacks its q or r tensor")
    if ("mu" in parts) != ("sigma" in parts):
        raise AdapterFormatError(f"module {name!r} has only one of mu and sigma")
    for part, tensor in parts.items():
        if tensor.dtype != torch.float32:
            raise AdapterFormatError(f"{name}.{part} has dtype {tensor.dtype}, expected float32")
        if not torch.isfinite(tensor).all():
            raise AdapterFormatError(f"{name}.{part} contains NaN or Inf")
    q, r = parts["q"], parts["r"]  # (m, r), (r, r)
    if q.ndim != 2 or r.ndim != 2 or r.shape[0] != r.shape[1] or q.shape[1] != r.shape[0]:
        raise AdapterFormatError(
            f"module {name!r} has q {tuple(q.shape)} and r {tuple(r.shape)}; expected (m, r) and (r, r)"
        )
    if rank is not None and r.shape[0] != rank:
        raise AdapterFormatError(f"module {name!r} has rank {r.shape[0]}, but the library's rank is {rank}")
    mu = sigma = None
    if "mu" in parts:
        if parts["mu"].ndim != 0 or parts["sigma"].ndim != 0:
            raise AdapterFormatError(f"mu and sigma of module {name!r} must be scalars")
        mu, sigma = float(parts["mu"]), float(parts["sigma"])
        if sigma <= 0:
            raise AdapterFormatError(f"sigma of module {name!r} is {sigma}; it must be positive")
    return ModuleFactors(q=q, r=r, mu=mu, sigma=sigma)


def encode_shared_a(shared_a: Mapping[str, torch.Tensor], rank: int) -> tuple[bytes, str]:
    """Validate A (r, n) per module and return (safetensors bytes, fingerprint)."""
    tensors = {name: tensor.detach().to(torch.float32).contiguous().cpu() for name, tensor in shared_a.items()}
    _check_shared_a(tensors, rank)
    return save_tensors(tensors), fingerprint_tensors(tensors)


def decode_shared_a(payload: bytes, rank: int, fingerprint: str, *, library: str) -> dict[str, torch.Tensor]:
    """Load A and verify its fingerprint; raise :class:`IntegrityError` on a mismatch."""
    try:
        tensors = load_tensors(payload)
    except (SafetensorError, ValueError) as error:
        raise IntegrityError(f"shared A of library {library!r} is not valid safetensors bytes") from error
    if fingerprint_tensors(tensors) != fingerprint:
        raise IntegrityError(f"shared A of library {library!r} does not match its stored fingerprint")
    _check_shared_a(tensors, rank)
    return tensors


def _check_shared_a(tensors: Mapping[str, torch.Tensor], rank: int) -> None:
    if not tensors:
        raise AdapterFormatError("a library needs a shared A for at least one module")
    for name, tensor in tensors.items():
        if tensor.ndim != 2 or tensor.shape[0] != rank:
            raise AdapterFormatError(f"shared A of {name!r} has shape {tuple(tensor.shape)}; expected ({rank}, n)")
        if tensor.dtype != torch.float32 or not torch.isfinite(tensor).all():
            raise AdapterFormatError(f"shared A of {name!r} must be finite float32")

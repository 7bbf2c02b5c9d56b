"""Safetensors codecs for adapter factors and a library's shared A (never pickle).

Factors of module ``m`` are stored as tensors ``m.q`` (out, r), ``m.r`` (r, r) and, when
calibrated, the 0-d tensors ``m.mu`` and ``m.sigma``. Decoding validates names, shapes, dtypes
and finiteness before any tensor is returned.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from seqr.errors import AdapterFormatError, IntegrityError
from seqr.fingerprints import fingerprint_tensors
from seqr.routing.factors import AdapterFactors, ModuleFactors, all_finite

FACTORS_FORMAT = "seqr-factors-v1"
_PARTS = ("q", "r", "mu", "sigma")
_HEADER_LIMIT = 100_000_000  # bytes, the MAX_HEADER_SIZE of safetensors' Rust reader
# Byte size and torch name of the dtype codes of safetensors 0.8; a code not listed is rejected.
_DTYPES: dict[str, tuple[int, str]] = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "F8_E5M2": (1, "float8_e5m2"),
    "F8_E4M3": (1, "float8_e4m3fn"), "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}


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
    """Parse and validate factors; ``rank`` and ``modules`` pin the library's shape when given.

    Every Q and R returned is a view into one float32 copy of the payload's data buffer.
    """
    entries, data_start = _read_header(payload)
    by_module: dict[str, dict[str, _Entry]] = {}
    for key, entry in entries.items():
        name, _, part = key.rpartition(".")
        if part not in _PARTS or not name:
            raise AdapterFormatError(f"unexpected tensor {key!r} in adapter factors")
        by_module.setdefault(name, {})[part] = entry
    if modules is not None and set(by_module) != modules:
        raise AdapterFormatError(
            f"adapter factors cover modules {sorted(by_module)}, but the library targets {sorted(modules)}"
        )
    for name, parts in sorted(by_module.items()):
        _check_module(name, parts, rank)

    # Every entry is float32 now, so the data buffer is one run of float32 values.
    values = torch.from_numpy(np.frombuffer(payload, dtype="<f4", offset=data_start).copy())  # (all elements,)
    if not all_finite(values):
        for key, entry in sorted(entries.items()):
            if not all_finite(_view(values, entry)):
                raise AdapterFormatError(f"{key} contains NaN or Inf")
    # One read of every mu and sigma, rather than a 0-d view and a float() for each.
    scalar_keys = [key for key, entry in entries.items() if not entry.shape]
    scalars = dict(zip(scalar_keys, values[[entries[key].start // 4 for key in scalar_keys]].tolist(), strict=True))
    return AdapterFactors(modules={
        name: _module(name, parts, values, scalars) for name, parts in sorted(by_module.items())
    })


def _check_module(name: str, parts: Mapping[str, _Entry], rank: int | None) -> None:
    """Check the names, dtypes and shapes of one module's tensors from the header alone."""
    if "q" not in parts or "r" not in parts:
        raise AdapterFormatError(f"module {name!r} lacks its q or r tensor")
    if ("mu" in parts) != ("sigma" in parts):
        raise AdapterFormatError(f"module {name!r} has only one of mu and sigma")
    for part, entry in parts.items():
        if entry.dtype != "F32":
            raise AdapterFormatError(f"{name}.{part} has dtype {_DTYPES[entry.dtype][1]}, expected float32")
    q, r = parts["q"].shape, parts["r"].shape  # (m, r), (r, r)
    if len(q) != 2 or len(r) != 2 or r[0] != r[1] or q[1] != r[0]:
        raise AdapterFormatError(f"module {name!r} has q {q} and r {r}; expected (m, r) and (r, r)")
    if rank is not None and r[0] != rank:
        raise AdapterFormatError(f"module {name!r} has rank {r[0]}, but the library's rank is {rank}")
    if "mu" in parts and (parts["mu"].shape != () or parts["sigma"].shape != ()):
        raise AdapterFormatError(f"mu and sigma of module {name!r} must be scalars")


def _module(name: str, parts: Mapping[str, _Entry], values: torch.Tensor, scalars: Mapping[str, float]) -> ModuleFactors:
    mu = sigma = None
    if "mu" in parts:
        mu, sigma = scalars[f"{name}.mu"], scalars[f"{name}.sigma"]
        if sigma <= 0:
            raise AdapterFormatError(f"sigma of module {name!r} is {sigma}; it must be positive")
    return ModuleFactors(q=_view(values, parts["q"]), r=_view(values, parts["r"]), mu=mu, sigma=sigma)


def _view(values: torch.Tensor, entry: _Entry) -> torch.Tensor:
    """Return the float32 tensor of ``entry`` as a view into the data buffer ``values``."""
    return values[entry.start // 4 : entry.end // 4].view(entry.shape)


@dataclass(frozen=True)
class _Entry:
    """One tensor of a safetensors header: its dtype code, shape and byte range in the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _read_header(payload: bytes) -> tuple[dict[str, _Entry], int]:
    """Parse and check a safetensors header; return its entries and the offset of the data buffer.

    This reads the format that safetensors documents (a little-endian u64 header length, then a
    JSON object mapping tensor names to dtype, shape and data offsets, and an optional
    ``__metadata__`` of strings) and applies the checks safetensors' own reader makes. The
    offsets must cover the data buffer without gaps or overlaps, and each tensor's byte length
    must match its shape. Reading the header here lets the decoder copy the data buffer once
    and check it with one reduction, not once per tensor.
    """
    if len(payload) < 8:
        raise _invalid("shorter than the 8-byte header length")
    size = int.from_bytes(payload[:8], "little")
    if size > _HEADER_LIMIT or 8 + size > len(payload):
        raise _invalid(f"header length {size} exceeds the payload of {len(payload)} bytes")
    try:
        header = json.loads(payload[8 : 8 + size], object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as error:
        raise _invalid("the header is not a JSON object") from error
    if not isinstance(header, dict):
        raise _invalid("the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise _invalid("__metadata__ must map names to strings")
    entries = {key: _entry(key, value) for key, value in header.items()}
    position = 0
    for key, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != position:
            raise _invalid(f"tensor {key!r} starts at byte {entry.start}, expected {position}")
        position = entry.end
    if 8 + size + position != len(payload):
        raise _invalid(f"the tensors cover {position} bytes of a {len(payload) - 8 - size}-byte data buffer")
    return entries, 8 + size


def _entry(key: str, value: object) -> _Entry:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise _invalid(f"tensor {key!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in _DTYPES:
        raise _invalid(f"tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(map(_is_count, shape)):
        raise _invalid(f"tensor {key!r} has shape {shape!r}; expected a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not (_is_count(offsets[0]) and _is_count(offsets[1])):
        raise _invalid(f"tensor {key!r} has data_offsets {offsets!r}; expected [start, end]")
    start, end = offsets
    if end - start != math.prod(shape) * _DTYPES[dtype][0]:
        raise _invalid(f"tensor {key!r} spans bytes {start} to {end}, which does not match shape {shape} of {dtype}")
    return _Entry(dtype=dtype, shape=tuple(shape), start=start, end=end)


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0  # bool is a subclass of int, so isinstance would accept True


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError(f"a JSON object repeats a key among {[key for key, _ in pairs][:5]}")
    return result


def _invalid(reason: str) -> AdapterFormatError:
    return AdapterFormatError(f"adapter factors are not valid safetensors bytes: {reason}")


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

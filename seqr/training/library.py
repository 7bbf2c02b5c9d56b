"""The library: one shared, frozen A per adapted module, drawn from a recorded seed.

Every adapter of a library is trained against the same A. Each A is (r, n) with entries drawn
from N(0, 1/r^2), the initialisation that the SEQR method specifies. Draws happen in sorted module-name order from one generator
seeded with ``seed``, so the same seed, rank and module shapes always give the same A. The
library's fingerprint is the sha256 of the A bytes, which each adapter records as proof of the A
it was trained against.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from seqr.errors import AdapterFormatError, InvalidInputError
from seqr.fingerprints import fingerprint_tensors
from seqr.training.atomic import atomic_path

DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Library:
    """The shared A (r, n) of every target module, keyed by full module name, with its recipe."""

    a: Mapping[str, torch.Tensor]
    rank: int
    alpha: float
    seed: int
    base_fingerprint: str

    @property
    def scaling(self) -> float:
        """The LoRA scaling alpha / r applied to every adapter update."""
        return self.alpha / self.rank

    @property
    def module_names(self) -> list[str]:
        return sorted(self.a)

    @property
    def fingerprint(self) -> str:
        return a_fingerprint(self.a)


def a_fingerprint(a: Mapping[str, torch.Tensor]) -> str:
    """Return the fingerprint of the A matrices as float32, the same value the registry stores."""
    return fingerprint_tensors({name: matrix.detach().to(device="cpu", dtype=torch.float32) for name, matrix in a.items()})


def layer_index(module_name: str) -> int | None:
    """Return the decoder layer number in a name such as ``model.layers.3.self_attn.q_proj``."""
    match = _LAYER_INDEX.search(f".{module_name}.")
    return int(match.group(1)) if match else None


def find_target_modules(
    model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, layers: Sequence[int] | None = None
) -> dict[str, nn.Linear]:
    """Return the ``nn.Linear`` modules whose last name part is in ``targets``, by full name.

    ``layers`` keeps only modules of those decoder layers. Raises InvalidInputError when nothing
    matches, naming the targets and a few module names that exist.
    """
    wanted = set(targets)
    keep = None if layers is None else set(layers)
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] not in wanted:
            continue
        if keep is not None and layer_index(name) not in keep:
            continue
        found[name] = module
    if not found:
        linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][:5]
        raise InvalidInputError(
            f"no nn.Linear module named {sorted(wanted)} (layers {sorted(keep) if keep else 'all'}) in the model; "
            f"its linear modules include {linear}"
        )
    return found


def create_library(
    model: nn.Module,
    *,
    base_fingerprint: str,
    rank: int = 32,
    alpha: float = 64.0,
    seed: int = 0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    layers: Sequence[int] | None = None,
) -> Library:
    """Draw one A (rank, in_features) ~ N(0, 1/rank^2) per target module of ``model``."""
    if rank <= 0:
        raise InvalidInputError(f"rank must be positive, got {rank}")
    if alpha <= 0:
        raise InvalidInputError(f"alpha must be positive, got {alpha}")
    modules = find_target_modules(model, targets, layers)
    generator = torch.Generator().manual_seed(seed)
    a: dict[str, torch.Tensor] = {}
    for name in sorted(modules):
        n = modules[name].in_features
        a[name] = torch.randn((rank, n), generator=generator, dtype=torch.float32) / rank  # (r, n)
    return Library(a=a, rank=rank, alpha=float(alpha), seed=seed, base_fingerprint=base_fingerprint)


def save_library(library: Library, path: Path) -> None:
    """Write the library to one safetensors file, atomically."""
    metadata = {
        "format": "seqr-library",
        "rank": str(library.rank),
        "alpha": repr(library.alpha),
        "seed": str(library.seed),
        "base_fingerprint": library.base_fingerprint,
        "a_fingerprint": library.fingerprint,
    }
    tensors = {name: matrix.contiguous() for name, matrix in library.a.items()}
    with atomic_path(path) as staging:
        save_file(tensors, str(staging), metadata=metadata)


def load_library(path: Path) -> Library:
    """Read a library written by :func:`save_library` and check its fingerprint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise AdapterFormatError(f"cannot read the library file {path}: {error}") from error
    if metadata.get("format") != "seqr-library":
        raise AdapterFormatError(f"{path} is not a seqr library file (metadata {json.dumps(metadata)[:200]})")
    library = Library(
        a=tensors,
        rank=int(metadata["rank"]),
        alpha=float(metadata["alpha"]),
        seed=int(metadata["seed"]),
        base_fingerprint=metadata["base_fingerprint"],
    )
    if library.fingerprint != metadata["a_fingerprint"]:
        raise AdapterFormatError(
            f"the A matrices in {path} do not match their recorded fingerprint "
            f"{metadata['a_fingerprint'][:12]}; the file is corrupt, recreate the library from its seed"
        )
    return library

"""A small random library for the tiny Llama of tests/conftest.py."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from seqr.routing import AdapterFactors, ModuleFactors

RANK = 4
ALPHA = 8
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class Library:
    shared_a: dict[str, torch.Tensor]
    b: dict[str, dict[str, torch.Tensor]]  # adapter id -> module name -> B (m, r)
    adapters: dict[str, AdapterFactors]

    @property
    def scaling(self) -> float:
        return ALPHA / RANK


def make_library(model: nn.Module, n_adapters: int = 4, *, seed: int = 0, calibrated: bool = False) -> Library:
    """Build random A and B for every attention projection of ``model``; B gets a clear top singular value."""
    generator = torch.Generator().manual_seed(seed)
    names = [name for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in TARGETS and isinstance(module, nn.Linear)]
    shared_a: dict[str, torch.Tensor] = {}
    for name in names:
        n = model.get_submodule(name).in_features
        shared_a[name] = torch.linalg.qr(torch.randn(n, RANK, generator=generator)).Q.T.contiguous()  # (r, n)
    b: dict[str, dict[str, torch.Tensor]] = {}
    adapters: dict[str, AdapterFactors] = {}
    for i in range(n_adapters):
        adapter_id = f"silo-{i}"
        b[adapter_id] = {}
        modules = {}
        for name in names:
            m = model.get_submodule(name).out_features
            left = torch.linalg.qr(torch.randn(m, RANK, generator=generator)).Q
            right = torch.linalg.qr(torch.randn(RANK, RANK, generator=generator)).Q
            spectrum = torch.tensor([3.0, 1.0, 0.7, 0.4]) * (0.5 + torch.rand(1, generator=generator))
            b_matrix = left @ torch.diag(spectrum) @ right  # (m, r)
            b[adapter_id][name] = b_matrix
            stats = {"mu": float(torch.rand(1, generator=generator)), "sigma": 0.5} if calibrated else {}
            modules[name] = ModuleFactors.from_b(b_matrix, **stats)
        adapters[adapter_id] = AdapterFactors(modules)
    return Library(shared_a=shared_a, b=b, adapters=adapters)


@pytest.fixture
def library(tiny_llama) -> Library:
    return make_library(tiny_llama)


@pytest.fixture
def library_factory():
    """Return :func:`make_library`, for tests that need several libraries or options."""
    return make_library


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the routing tests build libraries on: $SEQR_ROUTING_DEVICE (benchmarks/gpu_check.sh sets cuda), else cpu."""
    name = os.environ.get("SEQR_ROUTING_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"SEQR_ROUTING_DEVICE={name} but CUDA is not available")
    return torch.device(name)

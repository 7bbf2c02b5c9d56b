"""Safetensors codecs: round trips and validation of names, shapes, dtypes and finiteness."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save as save_tensors

from seqr.errors import AdapterFormatError, IntegrityError
from seqr.registry import codec
from seqr.routing.factors import AdapterFactors, ModuleFactors

from registry_helpers import MODULES, RANK, make_factors, make_shared_a


def test_factors_round_trip():
    factors = make_factors(3)
    decoded = codec.decode_factors(codec.encode_factors(factors), rank=RANK, modules=set(MODULES))
    for name, module in factors.modules.items():
        assert torch.equal(decoded.modules[name].q, module.q)
        assert torch.equal(decoded.modules[name].r, module.r)
        assert decoded.modules[name].mu == pytest.approx(module.mu)
        assert decoded.modules[name].sigma == pytest.approx(module.sigma)


def test_uncalibrated_factors_round_trip():
    module = ModuleFactors.from_b(torch.randn(6, 2))
    decoded = codec.decode_factors(codec.encode_factors(AdapterFactors({"m": module})))
    assert decoded.modules["m"].mu is None
    assert decoded.modules["m"].sigma is None


def _payload(**tensors: torch.Tensor) -> bytes:
    return save_tensors({key.replace("__", "."): value for key, value in tensors.items()})


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x80\x04pickle", id="not-safetensors"),
        pytest.param(_payload(m__q=torch.randn(4, 2)), id="missing-r"),
        pytest.param(_payload(m__q=torch.randn(4, 2), m__r=torch.randn(3, 3)), id="rank-mismatch"),
        pytest.param(_payload(m__q=torch.randn(4, 2), m__r=torch.randn(2, 2).double()), id="float64"),
        pytest.param(_payload(m__q=torch.full((4, 2), float("nan")), m__r=torch.randn(2, 2)), id="nan"),
        pytest.param(_payload(m__q=torch.randn(4, 2), m__r=torch.randn(2, 2), m__mu=torch.tensor(1.0)), id="mu-only"),
        pytest.param(
            _payload(m__q=torch.randn(4, 2), m__r=torch.randn(2, 2), m__mu=torch.tensor(1.0), m__sigma=torch.tensor(-1.0)),
            id="negative-sigma",
        ),
        pytest.param(_payload(m__weights=torch.randn(2)), id="unknown-tensor"),
    ],
)
def test_invalid_factors_rejected(payload: bytes):
    with pytest.raises(AdapterFormatError):
        codec.decode_factors(payload)


def test_library_shape_enforced():
    payload = codec.encode_factors(make_factors(0))
    with pytest.raises(AdapterFormatError, match="rank"):
        codec.decode_factors(payload, rank=RANK + 1)
    with pytest.raises(AdapterFormatError, match="modules"):
        codec.decode_factors(payload, modules={"other"})


def test_shared_a_fingerprint_checked():
    payload, fingerprint = codec.encode_shared_a(make_shared_a(), RANK)
    assert set(codec.decode_shared_a(payload, RANK, fingerprint, library="lib")) == set(MODULES)
    with pytest.raises(IntegrityError, match="fingerprint"):
        codec.decode_shared_a(payload, RANK, "0" * 64, library="lib")


def test_fingerprint_known_answer():
    """The fingerprint depends only on names, dtypes, shapes and values."""
    tensors = {"b": torch.zeros(1, 2), "a": torch.ones(2, 1)}
    reordered = {"a": torch.ones(2, 1), "b": torch.zeros(1, 2)}
    assert codec.fingerprint_tensors(tensors) == codec.fingerprint_tensors(reordered)
    assert codec.fingerprint_tensors(tensors) != codec.fingerprint_tensors({"b": torch.zeros(2, 1), "a": torch.ones(2, 1)})
    assert codec.fingerprint_tensors({"x": torch.zeros(0)}) == codec.fingerprint_tensors({"x": torch.zeros(0)})

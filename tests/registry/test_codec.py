"""Safetensors codecs: round trips and validation of names, shapes, dtypes and finiteness."""

from __future__ import annotations

import json

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


def _header_payload(header: dict, data: bytes) -> bytes:
    """Build safetensors bytes by hand, so that a test can write a header the library would not."""
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


def _entry(start: int, end: int, shape: list, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"\x01\x00", "shorter than", id="too-short"),
        pytest.param((10**9).to_bytes(8, "little") + b"{}", "header length", id="header-too-long"),
        pytest.param(_header_payload({"m.q": _entry(0, 32, [4, 2])}, bytes(36)), "cover 32 bytes", id="trailing-bytes"),
        pytest.param(
            _header_payload({"m.q": _entry(0, 32, [4, 2]), "m.r": _entry(24, 40, [2, 2])}, bytes(40)),
            "starts at byte 24", id="overlap",
        ),
        pytest.param(
            _header_payload({"m.q": _entry(0, 32, [4, 2]), "m.r": _entry(36, 52, [2, 2])}, bytes(52)),
            "starts at byte 36", id="gap",
        ),
        pytest.param(_header_payload({"m.q": _entry(0, 28, [4, 2])}, bytes(28)), "does not match shape", id="short-tensor"),
        pytest.param(_header_payload({"m.q": _entry(0, 4, [True])}, bytes(4)), "non-negative integers", id="bool-shape"),
        pytest.param(_header_payload({"m.q": _entry(0, 4, [1], dtype="X9")}, bytes(4)), "unknown dtype", id="unknown-dtype"),
        pytest.param(_header_payload({"m.q": {"dtype": "F32", "shape": [1]}}, bytes(4)), "data_offsets", id="no-offsets"),
        pytest.param(_header_payload({"__metadata__": {"format": 1}}, b""), "__metadata__", id="metadata-not-strings"),
        pytest.param(b"\x0d\x00\x00\x00\x00\x00\x00\x00{\"a\":1,\"a\":2}", "not a JSON object", id="duplicate-key"),
        pytest.param(b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not a JSON object", id="header-is-list"),
    ],
)
def test_malformed_safetensors_rejected(payload: bytes, reason: str):
    with pytest.raises(AdapterFormatError, match="not valid safetensors bytes") as raised:
        codec.decode_factors(payload)
    assert reason in str(raised.value)


def test_nan_names_module_and_part():
    factors = make_factors(1)
    name = MODULES[1]
    module = factors.modules[name]
    r = module.r.clone()
    r[1, 1] = float("inf")
    broken = AdapterFactors({**factors.modules, name: ModuleFactors(q=module.q, r=r, mu=module.mu, sigma=module.sigma)})

    with pytest.raises(AdapterFormatError, match=rf"^{name}\.r contains NaN or Inf$"):
        codec.decode_factors(codec.encode_factors(broken), rank=RANK, modules=set(MODULES))


def test_finite_values_whose_sum_overflows_accepted():
    big = torch.full((4, 2), 3e38)
    decoded = codec.decode_factors(_payload(m__q=big, m__r=torch.eye(2)))
    assert torch.equal(decoded.modules["m"].q, big)


def test_decoded_factors_share_one_buffer():
    decoded = codec.decode_factors(codec.encode_factors(make_factors(2)), rank=RANK, modules=set(MODULES))
    storages = {
        tensor.untyped_storage().data_ptr()
        for module in decoded.modules.values()
        for tensor in (module.q, module.r)
    }
    assert len(storages) == 1
    first = decoded.modules[MODULES[0]]
    assert first.q.is_contiguous()
    assert first.q.dtype == torch.float32


def test_empty_factors_decode():
    assert codec.decode_factors(codec.encode_factors(AdapterFactors({}))).modules == {}

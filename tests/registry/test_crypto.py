"""Envelope encryption: pinned vectors (stored data must stay readable) and tamper properties."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqr.errors import IntegrityError, InvalidInputError
from seqr.registry import crypto
from seqr.registry.crypto import KeyContext, OwnerKind
from seqr.registry.enums import BlobField

MASTER = bytes(range(32))
SHRED = bytes(range(32, 64))
DATA_KEY = bytes(range(64, 96))
NONCE = bytes(range(12))
CONTEXT = KeyContext(1, 2, OwnerKind.ADAPTER_VERSION, 3, "ab" * 16)
# Produced by AES-256-GCM with the inputs above. A change to the KDF or to the associated data
# format would make every stored wrapped key and blob unreadable, so these must keep decrypting.
WRAPPED = bytes.fromhex(
    "ff40e3b06ffe815ad16da024e38fb799e6d4ea9737e10b9add2d49baaeea4b1c97a7069fc914f1af7467a76a1519f2c9"
)
BLOB = bytes.fromhex("49601d0affe0920174b4fb8f994f9acbca200a3e")  # b"seqr", field factors


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF (RFC 5869) with one output block, written out with the standard library."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_kek_matches_independent_hkdf():
    assert crypto.derive_kek(MASTER, SHRED) == _hkdf_sha256(MASTER, SHRED, b"seqr-kek-v1")
    assert crypto.derive_kek(MASTER, SHRED).hex() == "b84d3c9beeb3c3bebbb2105d98cbbbcc5be98aa668664fc5bf371364554e721f"


def test_audit_key_matches_independent_hkdf():
    # HKDF without a salt uses a block of zeros as the salt.
    assert crypto.derive_audit_key(MASTER) == _hkdf_sha256(MASTER, bytes(32), b"seqr-audit-v1")


def test_associated_data_format_pinned():
    assert CONTEXT.wrap_aad(1) == (
        b"seqr-wrap|format=1|tenant=1|silo=2|owner=adapter_version:3|key=abababababababababababababababab|master=1"
    )
    assert CONTEXT.blob_aad(BlobField.FACTORS) == (
        b"seqr-blob|format=1|tenant=1|silo=2|owner=adapter_version:3|key=abababababababababababababababab|field=factors"
    )


def test_pinned_vectors_decrypt():
    kek = crypto.derive_kek(MASTER, SHRED)
    assert crypto.unwrap_data_key(kek, NONCE, WRAPPED, CONTEXT, 1) == DATA_KEY
    assert crypto.decrypt_blob(DATA_KEY, NONCE, BLOB, CONTEXT, BlobField.FACTORS) == b"seqr"


@pytest.mark.parametrize(
    "other",
    [
        KeyContext(9, 2, OwnerKind.ADAPTER_VERSION, 3, "ab" * 16),
        KeyContext(1, 9, OwnerKind.ADAPTER_VERSION, 3, "ab" * 16),
        KeyContext(1, 2, OwnerKind.DOCUMENT, 3, "ab" * 16),
        KeyContext(1, 2, OwnerKind.ADAPTER_VERSION, 9, "ab" * 16),
        KeyContext(1, 2, OwnerKind.ADAPTER_VERSION, 3, "cd" * 16),
    ],
    ids=["tenant", "silo", "owner-kind", "owner-id", "key-ref"],
)
def test_other_context_rejected(other: KeyContext):
    kek = crypto.derive_kek(MASTER, SHRED)
    with pytest.raises(IntegrityError):
        crypto.unwrap_data_key(kek, NONCE, WRAPPED, other, 1)
    with pytest.raises(IntegrityError):
        crypto.decrypt_blob(DATA_KEY, NONCE, BLOB, other, BlobField.FACTORS)


def test_other_field_and_master_version_rejected():
    kek = crypto.derive_kek(MASTER, SHRED)
    with pytest.raises(IntegrityError):
        crypto.unwrap_data_key(kek, NONCE, WRAPPED, CONTEXT, 2)
    with pytest.raises(IntegrityError):
        crypto.decrypt_blob(DATA_KEY, NONCE, BLOB, CONTEXT, BlobField.CONTENT)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_rejected(data: st.DataObject):
    payload = data.draw(st.binary(min_size=0, max_size=64))
    nonce, sealed = crypto.encrypt_blob(DATA_KEY, payload, CONTEXT, BlobField.CONTENT)
    stored = nonce + sealed
    index = data.draw(st.integers(0, len(stored) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = stored[:index] + bytes([stored[index] ^ (1 << bit)]) + stored[index + 1 :]
    with pytest.raises(IntegrityError):
        crypto.decrypt_blob(DATA_KEY, tampered[:12], tampered[12:], CONTEXT, BlobField.CONTENT)


def test_error_message_has_no_key_bytes():
    kek = crypto.derive_kek(MASTER, SHRED)
    with pytest.raises(IntegrityError) as caught:
        crypto.unwrap_data_key(kek, NONCE, WRAPPED[:-1], CONTEXT, 1)
    message = str(caught.value)
    for secret in (MASTER, SHRED, DATA_KEY, kek):
        assert secret.hex() not in message
        assert repr(secret) not in message
    assert "adapter_version 3" in message


def test_oversized_blob_rejected(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(crypto, "MAX_BLOB_BYTES", 16)
    with pytest.raises(InvalidInputError, match="blob limit"):
        crypto.encrypt_blob(DATA_KEY, bytes(17), CONTEXT, BlobField.FACTORS)

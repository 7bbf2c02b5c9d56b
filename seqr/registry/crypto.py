"""Envelope encryption: AES-256-GCM blobs under per-object data keys, wrapped under derived keys.

Key hierarchy (docs/security.md has the full account)::

    master key version v  (key file or environment; outside the database)
    shred key of object o (key store; outside the database; deleted on destruction)
        -> KEK(v, o) = HKDF-SHA256(master_v, salt=shred_o, info="seqr-kek-v1")
            -> data key of o (random 32 bytes), stored wrapped: AES-GCM(KEK, dk, aad=wrap context)
                -> blobs of o: AES-GCM(dk, payload, aad=blob context)

The associated data of a blob binds the format version, tenant, silo, owner (adapter version or
document), field and data key reference, so a blob moved to any other row fails to decrypt. The
wrap context adds the master key version, so rewrapping under a new master version changes only
the wrapped key and never the blobs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from seqr.errors import IntegrityError, InvalidInputError
from seqr.registry.enums import BlobField

FORMAT_VERSION = 1
NONCE_BYTES = 12
DATA_KEY_BYTES = 32
# Blobs are encrypted in one piece, so the whole payload sits in memory twice while it is
# processed. 256 MiB fits the factors of rank-16 adapters on every linear module of a 7B model
# (about 100 MB, estimated from the module shapes) with room to spare, and stays well below the 1 GB value limit of both SQLite
# and PostgreSQL.
MAX_BLOB_BYTES = 256 * 1024 * 1024


class OwnerKind(StrEnum):
    ADAPTER_VERSION = "adapter_version"
    DOCUMENT = "document"


@dataclass(frozen=True)
class KeyContext:
    """Where a data key belongs: bound into the associated data of its wrap and of its blobs."""

    tenant_id: int
    silo_id: int
    owner_kind: OwnerKind
    owner_id: int
    key_ref: str

    def describe(self) -> str:
        return f"{self.owner_kind.value} {self.owner_id} (tenant {self.tenant_id}, silo {self.silo_id})"

    def _common(self) -> str:
        return (
            f"format={FORMAT_VERSION}|tenant={self.tenant_id}|silo={self.silo_id}"
            f"|owner={self.owner_kind.value}:{self.owner_id}|key={self.key_ref}"
        )

    def wrap_aad(self, master_version: int) -> bytes:
        return f"seqr-wrap|{self._common()}|master={master_version}".encode()

    def blob_aad(self, field: BlobField) -> bytes:
        return f"seqr-blob|{self._common()}|field={field.value}".encode()


def derive_kek(master_key: bytes, shred_key: bytes) -> bytes:
    """Derive the key-encryption key of one object from a master key version and its shred key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=shred_key, info=b"seqr-kek-v1").derive(master_key)


def derive_audit_key(master_key: bytes) -> bytes:
    """Derive the HMAC key of the audit chain from a master key version."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"seqr-audit-v1").derive(master_key)


def new_data_key() -> bytes:
    return secrets.token_bytes(DATA_KEY_BYTES)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt with AES-256-GCM under a fresh random nonce; return (nonce, ciphertext with tag)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes, *, what: str) -> bytes:
    """Decrypt and authenticate, or raise :class:`IntegrityError` naming ``what``."""
    if len(nonce) != NONCE_BYTES:
        raise IntegrityError(f"{what} failed verification: stored nonce is {len(nonce)} bytes, not {NONCE_BYTES}")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as error:
        raise IntegrityError(
            f"{what} failed verification: it was modified, truncated, moved from another object, or its "
            "keys were destroyed; nothing was loaded"
        ) from error


def wrap_data_key(kek: bytes, data_key: bytes, context: KeyContext, master_version: int) -> tuple[bytes, bytes]:
    return seal(kek, data_key, context.wrap_aad(master_version))


def unwrap_data_key(
    kek: bytes, nonce: bytes, wrapped: bytes, context: KeyContext, master_version: int
) -> bytes:
    data_key = open_sealed(
        kek, nonce, wrapped, context.wrap_aad(master_version), what=f"wrapped data key of {context.describe()}"
    )
    if len(data_key) != DATA_KEY_BYTES:
        raise IntegrityError(f"wrapped data key of {context.describe()} has the wrong length")
    return data_key


def encrypt_blob(data_key: bytes, plaintext: bytes, context: KeyContext, field: BlobField) -> tuple[bytes, bytes]:
    if len(plaintext) > MAX_BLOB_BYTES:
        raise InvalidInputError(
            f"{field.value} of {context.describe()} is {len(plaintext)} bytes, above the blob limit of "
            f"{MAX_BLOB_BYTES} bytes; lower the rank or the number of target modules"
        )
    return seal(data_key, plaintext, context.blob_aad(field))


def decrypt_blob(data_key: bytes, nonce: bytes, ciphertext: bytes, context: KeyContext, field: BlobField) -> bytes:
    return open_sealed(
        data_key, nonce, ciphertext, context.blob_aad(field), what=f"{field.value} blob of {context.describe()}"
    )

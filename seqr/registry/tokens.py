"""API token format: ``seqr_`` + 32 base32 characters of secret (160 bits) + a 7-character CRC32.

The checksum lets a mistyped or truncated token be rejected before any database query. The
database stores only the SHA-256 digest of the whole token, and ``public_id`` (derived from the
digest) names a token in listings and in ``seqr token revoke`` without revealing it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

from seqr.errors import AuthenticationError

PREFIX = "seqr_"
SECRET_BYTES = 20
_BODY_CHARS = 32  # base32 of 20 bytes, no padding
_CHECKSUM_CHARS = 7  # base32 of 4 bytes, padding stripped
_SHAPE = re.compile(rf"^{PREFIX}[a-z2-7]{{{_BODY_CHARS}}}[a-z2-7]{{{_CHECKSUM_CHARS}}}$")


@dataclass(frozen=True)
class IssuedToken:
    """A freshly generated token: ``secret`` is shown once and never stored."""

    secret: str
    digest: str
    public_id: str


def _checksum(body: str) -> str:
    crc = zlib.crc32((PREFIX + body).encode()).to_bytes(4, "big")
    return base64.b32encode(crc).decode().rstrip("=").lower()


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def public_id_of(digest: str) -> str:
    return digest[:12]


def generate() -> IssuedToken:
    body = base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().lower()
    token = PREFIX + body + _checksum(body)
    digest = digest_of(token)
    return IssuedToken(secret=token, digest=digest, public_id=public_id_of(digest))


def check_format(token: str) -> str:
    """Return the token's digest, or raise :class:`AuthenticationError` when its shape or checksum is wrong."""
    if not _SHAPE.match(token):
        raise AuthenticationError(
            f"malformed token: expected {PREFIX} followed by {_BODY_CHARS + _CHECKSUM_CHARS} base32 characters; "
            "copy the token again"
        )
    body, checksum = token[len(PREFIX) : len(PREFIX) + _BODY_CHARS], token[len(PREFIX) + _BODY_CHARS :]
    if not hmac.compare_digest(checksum, _checksum(body)):
        raise AuthenticationError("token checksum does not match: the token was mistyped or truncated; copy it again")
    return digest_of(token)


def digests_match(stored: str, presented: str) -> bool:
    return hmac.compare_digest(stored.encode(), presented.encode())

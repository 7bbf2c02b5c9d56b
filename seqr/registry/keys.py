"""Key providers: where the master key versions and the per-object shred keys come from.

The registry never keeps a master key or a shred key in its database. A :class:`KeyProvider`
supplies

- master key versions (32 bytes each, numbered from 1); the highest is the current one, used for
  new wraps, and ``keys rotate`` adds one;
- shred keys (32 bytes each, one per adapter version or document, named by a ``key_ref``), kept
  in a key store outside the database. Deleting one leaves every copy of the database unable to
  unwrap that object's data key.

:class:`FileKeyProvider` keeps both in the registry directory (``master.key`` and ``keystore/``);
:class:`EnvKeyProvider` reads the master key versions from an environment variable and keeps the
shred keys in a directory. A KMS-backed provider implements the same protocol.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Protocol

from seqr.errors import InvalidInputError, KeyProviderError

logger = logging.getLogger(__name__)

KEY_BYTES = 32
MASTER_KEY_FILE = "master.key"
KEY_STORE_DIR = "keystore"
MASTER_KEY_VARIABLE = "SEQR_MASTER_KEY"
_KEY_REF = re.compile(r"^[0-9a-f]{32}$")


class KeyProvider(Protocol):
    """The interface the registry uses for every key that lives outside the database."""

    def current_master_version(self) -> int: ...

    def master_key(self, version: int) -> bytes: ...

    def add_master_version(self) -> int:
        """Create a new master key version, make it current and return its number."""
        ...

    def create_shred_key(self, key_ref: str) -> bytes: ...

    def shred_key(self, key_ref: str) -> bytes: ...

    def destroy_shred_key(self, key_ref: str) -> bool:
        """Delete the shred key; return False when it was already gone."""
        ...

    def shred_key_refs(self) -> set[str]: ...


def new_key_ref() -> str:
    return secrets.token_hex(16)


def _check_ref(key_ref: str) -> None:
    if not _KEY_REF.match(key_ref):
        raise InvalidInputError(f"invalid key reference {key_ref!r}: expected 32 lowercase hex digits")


def _decode_versions(text: str, source: str) -> dict[int, bytes]:
    """Parse ``{"versions": {"1": "<base64>", ...}}`` into version -> key bytes."""
    try:
        document = json.loads(text)
        versions = {int(number): base64.b64decode(value, validate=True) for number, value in document["versions"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
        raise KeyProviderError(
            f"{source} is not a valid master key document; expected JSON "
            '{"versions": {"1": "<base64 of 32 bytes>"}}'
        ) from error
    if not versions:
        raise KeyProviderError(f"{source} contains no master key version; add one as {{\"versions\": {{\"1\": ...}}}}")
    for number, key in versions.items():
        if len(key) != KEY_BYTES or number < 1:
            raise KeyProviderError(f"{source}: master key version {number} is not {KEY_BYTES} bytes")
    return versions


def _encode_versions(versions: dict[int, bytes]) -> str:
    return json.dumps(
        {"versions": {str(number): base64.b64encode(key).decode() for number, key in sorted(versions.items())}}
    )


def _write_private(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600, fsynced; replace atomically unless ``exclusive``."""
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class DirectoryShredKeyStore:
    """Shred keys as one 0600 file per key in a 0700 directory.

    Destroying a key overwrites the file with zeros, fsyncs and unlinks it. On copy-on-write file
    systems, SSDs with wear levelling and in backups or snapshots the old bytes can survive; see
    docs/security.md.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key_ref: str) -> Path:
        _check_ref(key_ref)
        return self.directory / f"{key_ref}.key"

    def create(self, key_ref: str) -> bytes:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            _write_private(self._path(key_ref), key, exclusive=True)
        except FileExistsError as error:
            raise KeyProviderError(f"shred key {key_ref} already exists; key references must be unique") from error
        return key

    def get(self, key_ref: str) -> bytes:
        try:
            key = self._path(key_ref).read_bytes()
        except FileNotFoundError as error:
            raise KeyProviderError(f"shred key {key_ref} does not exist (destroyed or never created)") from error
        if len(key) != KEY_BYTES:
            raise KeyProviderError(f"shred key {key_ref} is {len(key)} bytes, expected {KEY_BYTES}")
        return key

    def destroy(self, key_ref: str) -> bool:
        path = self._path(key_ref)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\0" * KEY_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink(missing_ok=True)
        _fsync_directory(self.directory)
        return True

    def refs(self) -> set[str]:
        if not self.directory.is_dir():
            return set()
        return {path.stem for path in self.directory.glob("*.key") if _KEY_REF.match(path.stem)}


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ShredKeysInDirectory:
    """The shred-key half of the protocol, shared by the two providers below."""

    store: DirectoryShredKeyStore

    def create_shred_key(self, key_ref: str) -> bytes:
        return self.store.create(key_ref)

    def shred_key(self, key_ref: str) -> bytes:
        return self.store.get(key_ref)

    def destroy_shred_key(self, key_ref: str) -> bool:
        return self.store.destroy(key_ref)

    def shred_key_refs(self) -> set[str]:
        return self.store.refs()


class FileKeyProvider(_ShredKeysInDirectory):
    """Master key versions in ``DIR/master.key`` (JSON, mode 0600) and shred keys in ``DIR/keystore``."""

    def __init__(self, directory: Path, key_file: Path | None = None) -> None:
        self.directory = Path(directory)
        self.path = Path(key_file) if key_file is not None else self.directory / MASTER_KEY_FILE
        self.store = DirectoryShredKeyStore(self.directory / KEY_STORE_DIR)

    @classmethod
    def create(cls, directory: Path) -> FileKeyProvider:
        """Write a new key file with one random master key version; fail if one exists."""
        provider = cls(directory)
        provider.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            _write_private(provider.path, _encode_versions({1: secrets.token_bytes(KEY_BYTES)}).encode(), exclusive=True)
        except FileExistsError as error:
            raise KeyProviderError(f"{provider.path} already exists; refusing to overwrite a master key") from error
        provider.store.directory.mkdir(mode=0o700, exist_ok=True)
        return provider

    def _versions(self) -> dict[int, bytes]:
        try:
            mode = self.path.stat().st_mode & 0o777
            text = self.path.read_text()
        except FileNotFoundError as error:
            raise KeyProviderError(
                f"master key file {self.path} is missing; restore it from backup or set {MASTER_KEY_VARIABLE}"
            ) from error
        if mode & 0o077:
            raise KeyProviderError(f"master key file {self.path} has mode {mode:o}; run chmod 600 on it")
        return _decode_versions(text, str(self.path))

    def current_master_version(self) -> int:
        return max(self._versions())

    def master_key(self, version: int) -> bytes:
        versions = self._versions()
        if version not in versions:
            raise KeyProviderError(f"master key version {version} is not in {self.path}")
        return versions[version]

    def add_master_version(self) -> int:
        versions = self._versions()
        number = max(versions) + 1
        versions[number] = secrets.token_bytes(KEY_BYTES)
        _write_private(self.path, _encode_versions(versions).encode(), exclusive=False)
        logger.info("added master key version %d to %s", number, self.path)
        return number


class EnvKeyProvider(_ShredKeysInDirectory):
    """Master key versions from an environment variable (same JSON as the key file)."""

    def __init__(self, key_store_directory: Path, variable: str = MASTER_KEY_VARIABLE) -> None:
        self.variable = variable
        self.store = DirectoryShredKeyStore(Path(key_store_directory))
        if not os.environ.get(variable):
            raise KeyProviderError(f"environment variable {variable} is not set")

    def _versions(self) -> dict[int, bytes]:
        return _decode_versions(os.environ.get(self.variable, ""), f"${self.variable}")

    def current_master_version(self) -> int:
        return max(self._versions())

    def master_key(self, version: int) -> bytes:
        versions = self._versions()
        if version not in versions:
            raise KeyProviderError(f"master key version {version} is not in ${self.variable}")
        return versions[version]

    def add_master_version(self) -> int:
        raise KeyProviderError(
            f"cannot add a master key version to ${self.variable}; add the new version to the variable "
            "yourself, restart, and run `seqr keys rotate` again"
        )

"""Key providers: file permissions, environment keys, versions and shred keys."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from seqr.errors import ConflictError, IntegrityError, KeyProviderError
from seqr.registry import EnvKeyProvider, FileKeyProvider, Registry
from seqr.registry.keys import MASTER_KEY_VARIABLE, new_key_ref


def test_key_file_created_private(tmp_path: Path):
    provider = FileKeyProvider.create(tmp_path / "registry")
    assert stat.S_IMODE(provider.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(provider.store.directory.stat().st_mode) == 0o700
    assert provider.current_master_version() == 1
    assert len(provider.master_key(1)) == 32


def test_key_file_never_overwritten(tmp_path: Path):
    FileKeyProvider.create(tmp_path)
    with pytest.raises(KeyProviderError, match="already exists"):
        FileKeyProvider.create(tmp_path)


def test_readable_key_file_rejected(tmp_path: Path):
    provider = FileKeyProvider.create(tmp_path)
    os.chmod(provider.path, 0o644)
    with pytest.raises(KeyProviderError, match="chmod 600"):
        provider.master_key(1)


def test_add_version_keeps_old_versions(tmp_path: Path):
    provider = FileKeyProvider.create(tmp_path)
    first = provider.master_key(1)
    assert provider.add_master_version() == 2
    assert provider.master_key(1) == first
    assert provider.master_key(2) != first
    assert stat.S_IMODE(provider.path.stat().st_mode) == 0o600


def test_shred_key_lifecycle(tmp_path: Path):
    provider = FileKeyProvider.create(tmp_path)
    ref = new_key_ref()
    key = provider.create_shred_key(ref)
    assert provider.shred_key(ref) == key
    assert ref in provider.shred_key_refs()
    assert provider.destroy_shred_key(ref)
    assert not provider.destroy_shred_key(ref)
    with pytest.raises(KeyProviderError, match="does not exist"):
        provider.shred_key(ref)


def test_key_ref_path_traversal_rejected(tmp_path: Path):
    provider = FileKeyProvider.create(tmp_path)
    with pytest.raises(ValueError):
        provider.shred_key("../master")


def test_environment_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key = os.urandom(32)
    monkeypatch.setenv(MASTER_KEY_VARIABLE, json.dumps({"versions": {"1": base64.b64encode(key).decode()}}))
    provider = EnvKeyProvider(tmp_path / "keystore")
    assert provider.master_key(1) == key
    with pytest.raises(KeyProviderError, match="cannot add"):
        provider.add_master_version()


def test_registry_with_environment_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MASTER_KEY_VARIABLE, json.dumps({"versions": {"1": base64.b64encode(os.urandom(32)).decode()}}))
    directory = tmp_path / "registry"
    registry, token = Registry.init(directory, key_provider=EnvKeyProvider(directory / "keystore"))
    registry.close()
    assert not (directory / "master.key").exists()
    reopened = Registry.open(directory)
    try:
        admin = reopened.authenticate(token.token)
        reopened.verify_audit(admin)
    finally:
        reopened.close()


def test_malformed_environment_key_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MASTER_KEY_VARIABLE, "not json")
    with pytest.raises(KeyProviderError, match=MASTER_KEY_VARIABLE):
        EnvKeyProvider(tmp_path).master_key(1)


def test_wrong_master_key_fails_closed(tmp_path: Path):
    directory = tmp_path / "registry"
    registry, token = Registry.init(directory)
    admin = registry.authenticate(token.token)
    registry.create_silo(admin, "s")
    registry.add_document(admin, "s", b"text")
    registry.close()
    path = directory / "master.key"
    path.write_text(json.dumps({"versions": {"1": base64.b64encode(os.urandom(32)).decode()}}))
    reopened = Registry.open(directory)
    try:
        admin = reopened.authenticate(token.token)
        with pytest.raises(IntegrityError):
            reopened.read_document(admin, 1)
    finally:
        reopened.close()


def test_init_on_used_database_rejected(tmp_path: Path, database_url: str):
    first, _token = Registry.init(tmp_path / "first", database_url)
    first.close()
    with pytest.raises(ConflictError, match="already contains a registry"):
        Registry.init(tmp_path / "second", database_url)
    assert not (tmp_path / "second" / "master.key").exists()

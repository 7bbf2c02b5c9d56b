"""Crypto-shredding: once a version is destroyed, no copy of the database can decrypt it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from seqr.errors import ConflictError, IntegrityError, NotFoundError
from seqr.registry import AdapterStatus, Registry, crypto
from seqr.registry.crypto import KeyContext, OwnerKind
from seqr.registry.enums import BlobField, Permission
from seqr.registry.models import Blob, DataKey

from registry_helpers import World


def _snapshot(world: World, version_id: int) -> tuple[DataKey, Blob]:
    with world.registry._read() as session:
        key = session.scalars(select(DataKey).where(DataKey.adapter_version_id == version_id)).one()
        blob = session.scalars(select(Blob).where(Blob.data_key_id == key.id)).one()
        return key, blob


def _replace_version(world: World, seed: int) -> tuple[int, int]:
    """Activate a first version, replace it by a second and return both ids."""
    old = world.active_version("finance", seed=seed)
    new = world.active_version("finance", seed=seed + 1)
    return old, new


def test_destroy_requires_inactive_version(world: World):
    version_id = world.active_version("finance", seed=1)
    with pytest.raises(ConflictError):
        world.registry.destroy_adapter_version(world.admin, version_id)


def test_destroyed_version_rows_and_key_gone(world: World):
    old, new = _replace_version(world, seed=1)
    key, _blob = _snapshot(world, old)
    info = world.registry.destroy_adapter_version(world.admin, old)
    assert info.status is AdapterStatus.DESTROYED
    assert key.key_ref not in world.registry.keys.shred_key_refs()
    with world.registry._read() as session:
        assert session.scalars(select(DataKey).where(DataKey.adapter_version_id == old)).first() is None
        assert session.scalars(select(Blob).where(Blob.data_key_id == key.id)).first() is None
    with pytest.raises(NotFoundError):
        world.registry.load_adapter(world.admin, old)
    assert world.registry.load_adapter(world.admin, new).info.id == new


def test_rows_saved_before_destroy_cannot_decrypt(world: World):
    """A copy of the rows taken before destruction, with the master key, cannot unwrap the data key."""
    old, _new = _replace_version(world, seed=1)
    key, blob = _snapshot(world, old)
    with world.registry._read() as session:
        version = world.registry._visible_version(session, world.admin, old, Permission.ADMIN)[0]
        context = KeyContext(version.tenant_id, version.silo_id, OwnerKind.ADAPTER_VERSION, old, key.key_ref)
    # Before destruction the saved rows decrypt, so the check below is meaningful.
    data_key = world.registry._unwrap(key, context)
    assert crypto.decrypt_blob(data_key, blob.nonce, blob.ciphertext, context, BlobField.FACTORS)

    world.registry.destroy_adapter_version(world.admin, old)

    with pytest.raises(IntegrityError):
        world.registry._unwrap(key, context)
    master = world.registry.keys.master_key(key.master_key_version)
    for other_ref in world.registry.keys.shred_key_refs():
        kek = crypto.derive_kek(master, world.registry.keys.shred_key(other_ref))
        with pytest.raises(IntegrityError):
            crypto.unwrap_data_key(kek, key.wrap_nonce, key.wrapped_key, context, key.master_key_version)


def test_database_file_copied_before_destroy_cannot_decrypt(sqlite_world: World, tmp_path: Path):
    world = sqlite_world
    old, new = _replace_version(world, seed=1)
    copy = tmp_path / "copy"
    # A consistent copy of the whole registry directory (database, WAL folded in, key file, key store).
    shutil.copytree(world.directory, copy, ignore=shutil.ignore_patterns("registry.db*"))
    with sqlite3.connect(world.directory / "registry.db") as source, sqlite3.connect(copy / "registry.db") as target:
        source.backup(target)
    world.registry.destroy_adapter_version(world.admin, old)

    # The copy still has the version, its blobs and its wrapped key. Give it the live key store:
    # an attacker who steals an old database file later holds that one, not the old key store.
    shutil.rmtree(copy / "keystore")
    shutil.copytree(world.directory / "keystore", copy / "keystore")
    (copy / "registry.json").write_text(f'{{"database_url": "sqlite:///{copy / "registry.db"}"}}')
    stolen = Registry.open(copy, clock=world.clock)
    try:
        assert stolen.list_adapter_versions(world.admin, tenant="acme")[0].status is AdapterStatus.RETIRED
        with pytest.raises(IntegrityError):
            stolen.load_adapter(world.admin, old)
        assert stolen.load_adapter(world.admin, new).info.id == new
    finally:
        stolen.close()


def test_interrupted_destroy_finishes_on_rerun(world: World):
    old, _new = _replace_version(world, seed=1)
    key, _blob = _snapshot(world, old)
    original = world.registry.keys.destroy_shred_key

    def crash(_key_ref: str) -> bool:
        raise OSError("simulated crash before the shred key was deleted")

    world.registry.keys.destroy_shred_key = crash  # type: ignore[method-assign]
    with pytest.raises(OSError):
        world.registry.destroy_adapter_version(world.admin, old)
    world.registry.keys.destroy_shred_key = original  # type: ignore[method-assign]

    # The version is already unusable, and the rerun removes the key and the rows.
    with pytest.raises(NotFoundError):
        world.registry.load_adapter(world.admin, old)
    world.registry.destroy_adapter_version(world.admin, old)
    assert key.key_ref not in world.registry.keys.shred_key_refs()
    with world.registry._read() as session:
        assert session.get(DataKey, key.id) is None


def test_removed_document_cannot_decrypt(world: World):
    document = world.registry.add_document(world.admin, "finance", b"secret text", tenant="acme")
    with world.registry._read() as session:
        key = session.scalars(select(DataKey).where(DataKey.document_id == document.id)).one()
    world.registry.remove_document(world.admin, document.id)
    context = KeyContext(key.tenant_id, key.silo_id, OwnerKind.DOCUMENT, document.id, key.key_ref)
    with pytest.raises(IntegrityError):
        world.registry._unwrap(key, context)
    with pytest.raises(NotFoundError):
        world.registry.read_document(world.admin, document.id)

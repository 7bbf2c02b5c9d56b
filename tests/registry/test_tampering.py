"""Tampering with stored blobs, wrapped keys or the shared A raises IntegrityError and loads nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from seqr.errors import IntegrityError, NotFoundError
from seqr.registry import AuditAction
from seqr.registry.enums import BlobField
from seqr.registry.models import Blob, DataKey, Library

from registry_helpers import World, add_tenant, make_factors


def _key_row(world: World, version_id: int) -> DataKey:
    with world.registry._read() as session:
        return session.scalars(select(DataKey).where(DataKey.adapter_version_id == version_id)).one()


def _set_blob(world: World, data_key_id: int, **values: bytes | int) -> None:
    with world.registry._write() as (session, _state):
        session.execute(update(Blob).where(Blob.data_key_id == data_key_id, Blob.field == BlobField.FACTORS).values(**values))


def _blob(world: World, data_key_id: int) -> Blob:
    with world.registry._read() as session:
        return session.scalars(select(Blob).where(Blob.data_key_id == data_key_id)).one()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _assert_rejected(world: World, version_id: int) -> None:
    with pytest.raises(IntegrityError) as caught:
        world.registry.load_adapter(world.admin, version_id)
    assert caught.value.__cause__ is not None
    last = world.registry.list_audit_events(world.admin, limit=1)[0]
    assert last.action == AuditAction.INTEGRITY_FAILURE.value


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_blob_byte_rejected(sqlite_world: World, where: str):
    world = sqlite_world
    version_id = world.active_version("finance", seed=1)
    key = _key_row(world, version_id)
    ciphertext = _blob(world, key.id).ciphertext
    index = {"first": 0, "middle": len(ciphertext) // 2, "last": len(ciphertext) - 1}[where]
    _set_blob(world, key.id, ciphertext=_flip(ciphertext, index))
    _assert_rejected(world, version_id)


def test_flipped_blob_byte_rejected_postgres_too(world: World):
    """The one byte-flip case that runs on both databases (the variants above run on SQLite)."""
    version_id = world.active_version("finance", seed=1)
    key = _key_row(world, version_id)
    _set_blob(world, key.id, ciphertext=_flip(_blob(world, key.id).ciphertext, 7))
    _assert_rejected(world, version_id)


def test_flipped_nonce_rejected(world: World):
    version_id = world.active_version("finance", seed=1)
    key = _key_row(world, version_id)
    _set_blob(world, key.id, nonce=_flip(_blob(world, key.id).nonce, 3))
    _assert_rejected(world, version_id)


@pytest.mark.parametrize("column", ["wrapped_key", "wrap_nonce"])
def test_flipped_wrapped_key_rejected(world: World, column: str):
    version_id = world.active_version("finance", seed=1)
    key = _key_row(world, version_id)
    with world.registry._write() as (session, _state):
        session.execute(update(DataKey).where(DataKey.id == key.id).values({column: _flip(getattr(key, column), 5)}))
    _assert_rejected(world, version_id)


def test_changed_master_version_rejected(world: World):
    version_id = world.active_version("finance", seed=1)
    world.registry.rotate_keys(world.admin)
    key = _key_row(world, version_id)
    with world.registry._write() as (session, _state):
        session.execute(update(DataKey).where(DataKey.id == key.id).values(master_key_version=1))
    _assert_rejected(world, version_id)


@pytest.mark.parametrize("keep", [0, 12, -1])
def test_truncated_blob_rejected(sqlite_world: World, keep: int):
    world = sqlite_world
    version_id = world.active_version("finance", seed=1)
    key = _key_row(world, version_id)
    ciphertext = _blob(world, key.id).ciphertext
    _set_blob(world, key.id, ciphertext=ciphertext[:keep])
    _assert_rejected(world, version_id)


def test_truncated_wrapped_key_rejected(world: World):
    version_id = world.active_version("finance", seed=1)
    key = _key_row(world, version_id)
    with world.registry._write() as (session, _state):
        session.execute(update(DataKey).where(DataKey.id == key.id).values(wrapped_key=key.wrapped_key[:-1]))
    _assert_rejected(world, version_id)


def _swap_blob_contents(world: World, first: int, second: int) -> None:
    """Exchange the ciphertext and nonce of the factors blobs of two versions."""
    one, two = _blob(world, _key_row(world, first).id), _blob(world, _key_row(world, second).id)
    _set_blob(world, one.data_key_id, ciphertext=two.ciphertext, nonce=two.nonce)
    _set_blob(world, two.data_key_id, ciphertext=one.ciphertext, nonce=one.nonce)


def _swap_key_rows(world: World, first: int, second: int) -> None:
    """Exchange the wrapped data keys and shred key references of two versions."""
    one, two = _key_row(world, first), _key_row(world, second)
    with world.registry._write() as (session, _state):
        session.execute(update(DataKey).where(DataKey.id == one.id).values(key_ref="0" * 32))
        for row, other in ((two, one), (one, two)):
            session.execute(update(DataKey).where(DataKey.id == row.id).values(
                wrapped_key=other.wrapped_key, wrap_nonce=other.wrap_nonce, key_ref=other.key_ref
            ))


@pytest.mark.parametrize("scope", ["version", "silo", "tenant"])
def test_swapped_blobs_rejected(world: World, scope: str):
    first = world.active_version("finance", seed=1)
    if scope == "version":
        second = world.registry.add_adapter_version(world.admin, "finance", "lib", make_factors(2), tenant="acme").id
    elif scope == "silo":
        second = world.active_version("legal", seed=2)
    else:
        add_tenant(world.registry, world.admin, "globex")
        second = world.active_version("finance", seed=2, tenant="globex")
    _swap_blob_contents(world, first, second)
    _assert_rejected(world, first)
    _assert_rejected(world, second)


@pytest.mark.parametrize("scope", ["silo", "tenant"])
def test_swapped_blobs_with_keys_rejected(world: World, scope: str):
    first = world.active_version("finance", seed=1)
    if scope == "silo":
        second = world.active_version("legal", seed=2)
    else:
        add_tenant(world.registry, world.admin, "globex")
        second = world.active_version("finance", seed=2, tenant="globex")
    _swap_blob_contents(world, first, second)
    _swap_key_rows(world, first, second)
    _assert_rejected(world, first)
    _assert_rejected(world, second)


def test_tampered_shared_a_rejected(world: World):
    version_id = world.active_version("finance", seed=1)
    with world.registry._read() as session:
        library = session.scalars(select(Library).where(Library.name == "lib")).first()
        assert library is not None
    with world.registry._write() as (session, _state):
        session.execute(update(Library).where(Library.id == library.id).values(shared_a=_flip(library.shared_a, len(library.shared_a) - 2)))
    with pytest.raises(IntegrityError):
        world.registry.library(world.admin, "lib", tenant="acme")
    with pytest.raises(IntegrityError):
        world.registry.load_adapter(world.admin, version_id)


def test_untampered_version_still_loads(world: World):
    first = world.active_version("finance", seed=1)
    second = world.active_version("legal", seed=2)
    key = _key_row(world, first)
    _set_blob(world, key.id, ciphertext=_flip(_blob(world, key.id).ciphertext, 0))
    with pytest.raises(IntegrityError):
        world.registry.load_adapter(world.admin, first)
    assert world.registry.load_adapter(world.admin, second).info.id == second


def test_missing_version_not_found(world: World):
    with pytest.raises(NotFoundError):
        world.registry.load_adapter(world.admin, 999)

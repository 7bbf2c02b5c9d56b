"""Documents: encrypted round trip, expiry by the registry clock, permissions, removal."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from registry_helpers import World

from seqr.errors import ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from seqr.registry import Permission


def test_document_round_trip(world: World):
    added = world.registry.add_document(world.admin, "finance", b"line one\nline two", metadata={"source": "crm", "n": 2}, tenant="acme")
    read = world.registry.read_document(world.admin, added.id)
    assert read.content == b"line one\nline two"
    assert read.metadata == {"source": "crm", "n": 2}
    assert read.info.size == len(b"line one\nline two")
    assert [d.id for d in world.registry.list_documents(world.admin, "finance", tenant="acme")] == [added.id]


def test_expired_documents_follow_clock(world: World):
    soon = world.registry.add_document(world.admin, "finance", b"a", expires_at=world.clock.now + timedelta(days=1), tenant="acme")
    world.registry.add_document(world.admin, "finance", b"b", expires_at=world.clock.now + timedelta(days=10), tenant="acme")
    world.registry.add_document(world.admin, "legal", b"c", tenant="acme")
    assert world.registry.expired_documents(world.admin, tenant="acme") == []
    world.clock.advance(timedelta(days=1))
    assert [d.id for d in world.registry.expired_documents(world.admin, tenant="acme")] == [soon.id]


def test_naive_expiry_rejected(world: World):
    with pytest.raises(InvalidInputError, match="time zone"):
        world.registry.add_document(world.admin, "finance", b"a", expires_at=datetime(2030, 1, 1), tenant="acme")


def test_document_permissions(world: World):
    added = world.registry.add_document(world.admin, "finance", b"secret", tenant="acme")
    user = world.user("uma")
    with pytest.raises(NotFoundError):
        world.registry.read_document(user, added.id)
    world.registry.grant(world.admin, "finance", Permission.USE, principal="uma", tenant="acme")
    with pytest.raises(PermissionDeniedError):
        world.registry.read_document(user, added.id)
    world.registry.grant(world.admin, "finance", Permission.TRAIN, principal="uma", tenant="acme")
    assert world.registry.read_document(user, added.id).content == b"secret"


def test_removed_document_hidden(world: World):
    added = world.registry.add_document(world.admin, "finance", b"gone soon", tenant="acme")
    removed = world.registry.remove_document(world.admin, added.id)
    assert removed.removed_at == world.clock.now
    assert world.registry.list_documents(world.admin, "finance", tenant="acme") == []
    assert [d.id for d in world.registry.list_documents(world.admin, "finance", tenant="acme", include_removed=True)] == [added.id]
    with pytest.raises(ConflictError):
        world.registry.remove_document(world.admin, added.id)

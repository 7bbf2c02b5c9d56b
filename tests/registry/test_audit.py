"""Audit chain: every edit, deletion or reordering is detected and the first bad event named."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select, update

from seqr.registry import AuditChainError, Permission
from seqr.registry.models import AuditEvent

from registry_helpers import World


def _populate(world: World) -> None:
    world.registry.create_principal(world.admin, "alice", tenant="acme")
    world.registry.grant(world.admin, "finance", Permission.USE, principal="alice", tenant="acme")
    world.registry.create_token(world.admin, "alice", tenant="acme")


def _events(world: World) -> list[AuditEvent]:
    with world.registry._read() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_untouched_chain_verifies(world: World):
    _populate(world)
    report = world.registry.verify_audit(world.admin)
    assert report.events == len(_events(world)) - 0
    assert report.events >= 10


@pytest.mark.parametrize("column", ["actor", "action", "target", "outcome", "detail", "occurred_at"])
def test_edited_event_detected(sqlite_world: World, column: str):
    world = sqlite_world
    _populate(world)
    victim = _events(world)[4]
    value = {"occurred_at": victim.occurred_at.replace(year=2020)}.get(column, "edited")
    with world.registry._write() as (session, _state):
        session.execute(update(AuditEvent).where(AuditEvent.id == victim.id).values({column: value}))
    with pytest.raises(AuditChainError) as caught:
        world.registry.verify_audit(world.admin)
    assert caught.value.event_id == victim.id
    assert f"audit event {victim.id}" in str(caught.value)


def test_edited_event_with_recomputed_hash_detected(world: World):
    """An attacker without the master key cannot forge the HMAC, even with a plain SHA-256."""
    import hashlib

    _populate(world)
    victim = _events(world)[3]
    with world.registry._write() as (session, _state):
        session.execute(update(AuditEvent).where(AuditEvent.id == victim.id).values(
            target="silo acme/other", hash=hashlib.sha256(b"forged").hexdigest()))
    with pytest.raises(AuditChainError) as caught:
        world.registry.verify_audit(world.admin)
    assert caught.value.event_id == victim.id


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_deleted_event_detected(world: World, position: str):
    _populate(world)
    events = _events(world)
    victim = {"first": events[0], "middle": events[len(events) // 2], "last": events[-1]}[position]
    with world.registry._write() as (session, _state):
        session.execute(delete(AuditEvent).where(AuditEvent.id == victim.id))
    with pytest.raises(AuditChainError) as caught:
        world.registry.verify_audit(world.admin)
    assert caught.value.event_id == victim.id


def test_reordered_events_detected(world: World):
    _populate(world)
    events = _events(world)
    first, second = events[2], events[3]
    fields = ("occurred_at", "tenant_id", "actor", "action", "target", "outcome", "detail", "master_key_version", "prev_hash", "hash")
    with world.registry._write() as (session, _state):
        for row, other in ((first, second), (second, first)):
            session.execute(update(AuditEvent).where(AuditEvent.id == row.id).values({f: getattr(other, f) for f in fields}))
    with pytest.raises(AuditChainError) as caught:
        world.registry.verify_audit(world.admin)
    assert caught.value.event_id == first.id


def test_failed_verify_is_recorded(world: World):
    _populate(world)
    victim = _events(world)[1]
    with world.registry._write() as (session, _state):
        session.execute(update(AuditEvent).where(AuditEvent.id == victim.id).values(actor="someone else"))
    with pytest.raises(AuditChainError):
        world.registry.verify_audit(world.admin)
    assert _events(world)[-1].action == "integrity.failure"


def test_chain_verifies_across_key_rotation(world: World):
    _populate(world)
    world.registry.rotate_keys(world.admin)
    world.registry.create_silo(world.admin, "ops", tenant="acme")
    versions = {event.master_key_version for event in _events(world)}
    assert versions == {1, 2}
    world.registry.verify_audit(world.admin)


def test_no_secret_in_audit_log(world: World):
    created = world.registry.create_token(world.admin)
    world.registry.authenticate(created.token)
    for event in _events(world):
        text = " ".join(str(value) for value in (event.actor, event.target, event.detail))
        assert created.token not in text
        assert created.token[len("seqr_"):][:12] not in text

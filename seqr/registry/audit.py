"""The audit log: an HMAC-SHA256 hash chain of security-relevant events.

Event ``n`` stores ``hash_n = HMAC(audit_key_v, canonical(n, fields..., hash_{n-1}))`` where
``audit_key_v`` is derived from master key version ``v`` (recorded per event). Someone who can
write the database but lacks the master key cannot recompute the chain after editing, deleting or
reordering events. The state row keeps the latest hash, so dropping events from the end is
detected too, unless the state row is rolled back to an earlier head in the same edit (see the
limits in docs/security.md).

Callers append inside the write transaction that performs the action, after locking the state
row, so the chain has exactly one order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seqr.errors import IntegrityError
from seqr.registry.crypto import derive_audit_key
from seqr.registry.enums import AuditAction, Outcome
from seqr.registry.models import AuditEvent, RegistryState

GENESIS_HASH = "0" * 64


class AuditChainError(IntegrityError):
    """The audit chain fails verification; ``event_id`` is the first event that does not check out."""

    def __init__(self, message: str, event_id: int) -> None:
        super().__init__(message)
        self.event_id = event_id


@dataclass(frozen=True)
class AuditRecord:
    id: int
    occurred_at: datetime
    tenant_id: int | None
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class AuditReport:
    events: int
    head: str


def _canonical(event: AuditEvent) -> bytes:
    fields = [
        event.id,
        event.occurred_at.isoformat(),
        event.tenant_id,
        event.actor,
        event.action,
        event.target,
        event.outcome,
        event.detail,
        event.master_key_version,
        event.prev_hash,
    ]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(master_key: bytes, event: AuditEvent) -> str:
    return hmac.new(derive_audit_key(master_key), _canonical(event), hashlib.sha256).hexdigest()


def append(
    session: Session,
    state: RegistryState,
    *,
    master_version: int,
    master_key: bytes,
    now: datetime,
    actor: str,
    action: AuditAction,
    target: str,
    outcome: Outcome = Outcome.SUCCESS,
    tenant_id: int | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; ``state`` must be the locked state row of this transaction."""
    last_id = session.scalar(select(func.max(AuditEvent.id))) or 0
    event = AuditEvent(
        id=last_id + 1,
        occurred_at=now.astimezone(UTC),
        tenant_id=tenant_id,
        actor=actor,
        action=action.value,
        target=target,
        outcome=outcome.value,
        detail=json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":")),
        master_key_version=master_version,
        prev_hash=state.audit_head,
    )
    event.hash = _mac(master_key, event)
    state.audit_head = event.hash
    session.add(event)
    return event


def verify(session: Session, master_key: Callable[[int], bytes], batch: int = 1000) -> AuditReport:
    """Walk the chain from the first event; raise :class:`AuditChainError` at the first bad one."""
    expected_prev, expected_id, count = GENESIS_HASH, 1, 0
    last_seen = 0
    while True:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.id > last_seen).order_by(AuditEvent.id).limit(batch)
        ).all()
        if not events:
            break
        for event in events:
            if event.id != expected_id:
                raise AuditChainError(
                    f"audit event {expected_id} is missing (the next stored event is {event.id}): events were deleted",
                    expected_id,
                )
            if event.prev_hash != expected_prev:
                raise AuditChainError(
                    f"audit event {event.id} does not link to event {event.id - 1}: events were deleted or reordered",
                    event.id,
                )
            if not hmac.compare_digest(event.hash, _mac(master_key(event.master_key_version), event)):
                raise AuditChainError(f"audit event {event.id} was modified: its HMAC does not match", event.id)
            expected_prev, expected_id, count = event.hash, event.id + 1, count + 1
            last_seen = event.id
        session.expunge_all()
    head = session.scalar(select(RegistryState.audit_head).where(RegistryState.id == 1))
    if head != expected_prev:
        raise AuditChainError(
            f"the audit log ends at event {expected_id - 1}, but the recorded head is a later event: "
            "events were deleted from the end",
            expected_id,
        )
    return AuditReport(events=count, head=expected_prev)


def to_record(event: AuditEvent) -> AuditRecord:
    return AuditRecord(
        id=event.id,
        occurred_at=event.occurred_at,
        tenant_id=event.tenant_id,
        actor=event.actor,
        action=event.action,
        target=event.target,
        outcome=event.outcome,
        detail=json.loads(event.detail),
    )

"""Shared machinery of the registry API: transactions, caller checks, scoping, audit and envelopes.

The public operations live in the mixins of :mod:`seqr.registry.identity`,
:mod:`seqr.registry.silos`, :mod:`seqr.registry.adapters` and :mod:`seqr.registry.documents`,
combined into :class:`seqr.registry.registry.Registry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from seqr.errors import AuthenticationError, IntegrityError, KeyProviderError, NotFoundError, PermissionDeniedError
from seqr.policies import access
from seqr.registry import audit, crypto
from seqr.registry.crypto import KeyContext, OwnerKind
from seqr.registry.db import read_transaction, write_transaction
from seqr.registry.enums import AdapterStatus, AuditAction, BlobField, Outcome, Permission, Role
from seqr.registry.keys import KeyProvider, new_key_ref
from seqr.registry.models import AdapterVersion, Blob, DataKey, Document, RegistryState, Silo, Tenant, Token
from seqr.registry.models import Principal as PrincipalRow
from seqr.registry.views import Principal

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_RANK = {Role.MEMBER: 0, Role.TENANT_ADMIN: 1, Role.REGISTRY_ADMIN: 2}


def utc_now() -> datetime:
    return datetime.now(UTC)


class RegistryCore:
    """Engine, key provider and clock, plus the helpers every operation uses."""

    def __init__(self, engine: Engine, keys: KeyProvider, clock: Clock = utc_now) -> None:
        self.engine = engine
        self.keys = keys
        self.clock = clock

    # Transactions -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with read_transaction(self.engine) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[tuple[Session, RegistryState]]:
        with write_transaction(self.engine) as (session, state):
            yield session, state

    def generation(self) -> int:
        """Return the change counter, bumped in the same transaction as every change to principals,
        tokens, groups, silos, grants and adapter versions. Compare it to detect a stale cache."""
        with self._read() as session:
            return int(session.scalar(select(RegistryState.generation).where(RegistryState.id == 1)) or 0)

    def check_principal(self, actor: Principal) -> int:
        """Re-check that ``actor`` and its token are still valid and return :meth:`generation`.

        One read transaction and no audit event, so a long-lived session can call it on every
        request. Raises :class:`AuthenticationError` like any other operation of a revoked caller.
        """
        with self._read() as session:
            self._check_actor(session, actor)
            return int(session.scalar(select(RegistryState.generation).where(RegistryState.id == 1)) or 0)

    # Audit --------------------------------------------------------------------------------

    def _audit(
        self,
        session: Session,
        state: RegistryState,
        actor: Principal | str,
        action: AuditAction,
        target: str,
        *,
        outcome: Outcome = Outcome.SUCCESS,
        tenant_id: int | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        version = self.keys.current_master_version()
        if isinstance(actor, Principal):
            actor_text = f"{actor.describe()}#{actor.id}"
            tenant_id = actor.tenant_id if tenant_id is None else tenant_id
        else:
            actor_text = actor
        audit.append(
            session,
            state,
            master_version=version,
            master_key=self.keys.master_key(version),
            now=self.clock(),
            actor=actor_text,
            action=action,
            target=target,
            outcome=outcome,
            tenant_id=tenant_id,
            detail=detail,
        )

    def _record_integrity_failure(self, actor: Principal | str, target: str, error: Exception) -> None:
        """Append an integrity-failure event in its own transaction, logging (not raising) a failure to do so."""
        try:
            with self._write() as (session, state):
                self._audit(
                    session, state, actor, AuditAction.INTEGRITY_FAILURE, target,
                    outcome=Outcome.FAILURE, detail={"error": type(error).__name__},
                )
        except Exception:  # noqa: BLE001 - the original integrity error is what the caller must see
            logger.exception("could not record the integrity failure on %s in the audit log", target)

    # Callers and scoping -----------------------------------------------------------------

    def _check_actor(self, session: Session, actor: Principal) -> PrincipalRow:
        """Re-check on every operation that the caller and its token are still valid."""
        row = session.get(PrincipalRow, actor.id)
        if row is None or row.disabled or row.tenant_id != actor.tenant_id:
            raise AuthenticationError(f"principal {actor.describe()} is disabled or no longer exists")
        if actor.token_id is not None:
            token = session.get(Token, actor.token_id)
            now = self.clock()
            if token is None or token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
                raise AuthenticationError("the token of this session was revoked or has expired; log in again")
        return row

    def _tenant(self, session: Session, actor: Principal, name: str | None) -> Tenant:
        """Resolve a tenant name (None: the caller's own); other tenants exist only for registry admins."""
        if name is None or name == actor.tenant:
            tenant = session.get(Tenant, actor.tenant_id)
        elif actor.role is Role.REGISTRY_ADMIN:
            tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
        else:
            tenant = None
        if tenant is None:
            raise NotFoundError(f"tenant {name!r} not found; check the name with `seqr tenant list`")
        return tenant

    @staticmethod
    def _is_admin_of(actor: Principal, tenant_id: int) -> bool:
        return actor.role is Role.REGISTRY_ADMIN or (actor.role is Role.TENANT_ADMIN and actor.tenant_id == tenant_id)

    def _require_admin(self, actor: Principal, tenant: Tenant, what: str) -> None:
        if not self._is_admin_of(actor, tenant.id):
            raise PermissionDeniedError(
                f"{actor.describe()} may not {what} in tenant {tenant.name!r}: it needs the tenant_admin role"
            )

    @staticmethod
    def _require_rank(actor: Principal, target: PrincipalRow, what: str) -> None:
        """Reject acting on a principal whose role outranks the caller's (no escalation by impersonation)."""
        if actor.id != target.id and _RANK[target.role] > _RANK[actor.role]:
            raise PermissionDeniedError(
                f"{actor.describe()} may not {what} principal {target.name!r}: its role {target.role.value} "
                f"outranks {actor.role.value}"
            )

    def _silo(self, session: Session, tenant: Tenant, name: str) -> Silo:
        silo = session.scalars(select(Silo).where(Silo.tenant_id == tenant.id, Silo.name == name)).one_or_none()
        if silo is None:
            raise NotFoundError(f"silo {name!r} not found in tenant {tenant.name!r}")
        return silo

    def _require_silo_permission(
        self, session: Session, actor: Principal, silo: Silo, tenant: Tenant, permission: Permission
    ) -> None:
        """Allow tenant admins and holders of ``permission``; a silo the caller has no grant on is 'not found'."""
        granted: frozenset[Permission] = frozenset()
        if not self._is_admin_of(actor, silo.tenant_id):
            granted = access.silo_permissions(session, actor.id, actor.tenant_id).get(silo.id, frozenset())
        self._check_silo_grants(actor, silo, tenant, permission, granted)

    def _check_silo_grants(
        self, actor: Principal, silo: Silo, tenant: Tenant, permission: Permission, granted: frozenset[Permission]
    ) -> None:
        """Raise unless the caller administers the silo's tenant or its ``granted`` permissions imply ``permission``."""
        if self._is_admin_of(actor, silo.tenant_id):
            return
        if not granted:
            raise NotFoundError(f"silo {silo.name!r} not found in tenant {tenant.name!r}")
        if not granted & permission.implied_by():
            raise PermissionDeniedError(
                f"{actor.describe()} lacks the {permission.value} permission on silo {silo.name!r}; "
                "ask a tenant admin for a grant"
            )

    # Envelopes ---------------------------------------------------------------------------

    def _create_data_key(
        self, session: Session, tenant_id: int, silo_id: int, owner_kind: OwnerKind, owner_id: int
    ) -> tuple[DataKey, bytes, KeyContext]:
        """Create a shred key in the key store and a wrapped data key row; return (row, data key, context)."""
        key_ref = new_key_ref()
        context = KeyContext(tenant_id, silo_id, owner_kind, owner_id, key_ref)
        shred_key = self.keys.create_shred_key(key_ref)
        version = self.keys.current_master_version()
        data_key = crypto.new_data_key()
        kek = crypto.derive_kek(self.keys.master_key(version), shred_key)
        nonce, wrapped = crypto.wrap_data_key(kek, data_key, context, version)
        row = DataKey(
            key_ref=key_ref,
            tenant_id=tenant_id,
            silo_id=silo_id,
            adapter_version_id=owner_id if owner_kind is OwnerKind.ADAPTER_VERSION else None,
            document_id=owner_id if owner_kind is OwnerKind.DOCUMENT else None,
            master_key_version=version,
            wrap_nonce=nonce,
            wrapped_key=wrapped,
            created_at=self.clock(),
        )
        session.add(row)
        return row, data_key, context

    @staticmethod
    def _context_of(row: DataKey) -> KeyContext:
        if row.adapter_version_id is not None:
            return KeyContext(row.tenant_id, row.silo_id, OwnerKind.ADAPTER_VERSION, row.adapter_version_id, row.key_ref)
        assert row.document_id is not None  # guaranteed by the one_owner check constraint
        return KeyContext(row.tenant_id, row.silo_id, OwnerKind.DOCUMENT, row.document_id, row.key_ref)

    def _unwrap(self, row: DataKey, expected: KeyContext) -> bytes:
        """Unwrap a data key for the object ``expected`` names (tenant, silo, owner).

        ``expected.key_ref`` is ignored in favour of the row's, but the owner comes from the object
        the caller asked for, never from the key row, so a key row moved to another owner fails.
        """
        context = KeyContext(expected.tenant_id, expected.silo_id, expected.owner_kind, expected.owner_id, row.key_ref)
        try:
            shred_key = self.keys.shred_key(row.key_ref)
        except KeyProviderError as error:
            raise IntegrityError(
                f"the data key of {context.describe()} cannot be unwrapped: its shred key is gone "
                "(the object was destroyed) or the key store is incomplete"
            ) from error
        kek = crypto.derive_kek(self.keys.master_key(row.master_key_version), shred_key)
        return crypto.unwrap_data_key(kek, row.wrap_nonce, row.wrapped_key, context, row.master_key_version)

    def _seal_blob(self, session: Session, row: DataKey, data_key: bytes, context: KeyContext, field: BlobField, plaintext: bytes) -> None:
        nonce, ciphertext = crypto.encrypt_blob(data_key, plaintext, context, field)
        session.add(Blob(data_key_id=row.id, field=field, nonce=nonce, ciphertext=ciphertext))

    def _open_blobs(
        self, session: Session, expected: KeyContext, fields: tuple[BlobField, ...]
    ) -> dict[BlobField, bytes]:
        """Decrypt the named blobs of the object ``expected`` names, all or nothing (see :meth:`_unwrap`)."""
        owner_column = DataKey.adapter_version_id if expected.owner_kind is OwnerKind.ADAPTER_VERSION else DataKey.document_id
        row = session.scalars(select(DataKey).where(owner_column == expected.owner_id)).one_or_none()
        if row is None:
            raise IntegrityError(f"the data key of {expected.describe()} is missing from the database")
        data_key = self._unwrap(row, expected)
        context = KeyContext(expected.tenant_id, expected.silo_id, expected.owner_kind, expected.owner_id, row.key_ref)
        blobs = {blob.field: blob for blob in session.scalars(select(Blob).where(Blob.data_key_id == row.id))}
        plaintexts: dict[BlobField, bytes] = {}
        for field in fields:
            blob = blobs.get(field)
            if blob is None:
                raise IntegrityError(f"the {field.value} blob of {context.describe()} is missing")
            plaintexts[field] = crypto.decrypt_blob(data_key, blob.nonce, blob.ciphertext, context, field)
        return plaintexts

    def finish_destruction(self) -> int:
        """Shred the keys and delete the rows of every destroyed version or removed document whose
        data key still exists; return how many were finished. Safe to run at any time."""
        with self._read() as session:
            pending: list[tuple[int, str]] = [(key_id, key_ref) for key_id, key_ref in session.execute(
                select(DataKey.id, DataKey.key_ref)
                .join(AdapterVersion, AdapterVersion.id == DataKey.adapter_version_id)
                .where(AdapterVersion.status == AdapterStatus.DESTROYED)
            )]
            pending += [(key_id, key_ref) for key_id, key_ref in session.execute(
                select(DataKey.id, DataKey.key_ref)
                .join(Document, Document.id == DataKey.document_id)
                .where(Document.removed_at.is_not(None))
            )]
        # The shred key goes first: once it is deleted no copy of the database can unwrap the data
        # key, whatever happens to the rows afterwards. A crash in between leaves rows that the
        # next call deletes.
        for _, key_ref in pending:
            if self.keys.destroy_shred_key(key_ref):
                logger.info("destroyed shred key %s", key_ref)
        if pending:
            ids = [key_id for key_id, _ in pending]
            with self._write() as (session, _state):
                session.execute(delete(Blob).where(Blob.data_key_id.in_(ids)))
                session.execute(delete(DataKey).where(DataKey.id.in_(ids)))
        return len(pending)

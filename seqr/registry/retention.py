"""Retention in the registry: policies, removal requests, the job lock and the retention run log.

The retention job itself (:mod:`seqr.policies.retention`) only calls public methods of this mixin
and of the others. Its work is derived from the database each time: documents that are due for
removal, and versions whose manifest names a removed document. So a run that was killed leaves
nothing that the next run cannot find.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from seqr.errors import ConflictError, IntegrityError, InvalidInputError, LockHeldError, NotFoundError
from seqr.registry.crypto import KeyContext, OwnerKind
from seqr.registry.documents import DocumentMixin
from seqr.registry.enums import AdapterStatus, AuditAction, BlobField, Outcome, Permission, Role, RunStatus
from seqr.registry.models import (
    AdapterVersion,
    DataKey,
    Document,
    JobLock,
    RemovalRequest,
    RetentionPolicy,
    RetentionRun,
    Silo,
    Tenant,
)
from seqr.registry.models import Library as LibraryRow
from seqr.registry.views import DocumentInfo, JsonView, Principal

logger = logging.getLogger(__name__)

RETENTION_LOCK = "retention"
# Manifest keys the retention job writes into the versions it trains.
MANIFEST_RUN_KEY = "retention_run"
MANIFEST_REPLACES_KEY = "replaces_version"


class Unchanged(enum.Enum):
    """Marker for a policy field that :meth:`RetentionMixin.set_retention_policy` leaves as it is."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


class RemovalReason(enum.StrEnum):
    """Reason a document is due for removal."""

    EXPIRED = "expired"  # its own expiry time has passed
    MAX_AGE = "max_age"  # it is older than its silo's (or tenant's) maximum age
    REQUESTED = "requested"  # a removal request names it


@dataclass(frozen=True)
class RetentionPolicyInfo(JsonView):
    """A stored or effective policy; ``silo`` None is the tenant default."""

    tenant: str
    silo: str | None
    max_age_seconds: int | None
    legal_hold: bool
    updated_at: datetime | None


@dataclass(frozen=True)
class RemovalRequestInfo(JsonView):
    id: int
    tenant: str
    silo: str
    document_id: int
    reason: str | None
    requested_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class DueDocument(JsonView):
    """A document the retention job should remove; ``held`` when a legal hold blocks it."""

    id: int
    tenant: str
    silo: str
    reasons: list[RemovalReason]
    held: bool


@dataclass(frozen=True)
class VersionRef(JsonView):
    """A version that is not destroyed, with the removed documents its manifest names."""

    id: int
    tenant: str
    silo: str
    library: str
    number: int
    status: AdapterStatus
    document_ids: list[int]  # every document its manifest names
    removed_documents: list[int]  # those of them that are removed
    retention_run: int | None  # the retention run that trained it, if one did

    def describe(self) -> str:
        return f"{self.tenant}/{self.silo}/{self.library}@{self.number}"


@dataclass
class DestructionCheck:
    """Destroyed versions and removed documents, and those still decryptable (``leftovers``)."""

    destroyed_versions: int = 0
    removed_documents: int = 0
    leftovers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JobLease:
    """A held job lock: ``holder`` identifies this holder when renewing and releasing."""

    name: str
    holder: str
    expires_at: datetime
    took_over: str | None  # description of the stale holder this lease replaced, if any


def manifest_document_ids(manifest: Mapping[str, Any]) -> list[int]:
    """Return the document ids a version's manifest lists (see :mod:`seqr.policies.training_jobs`)."""
    entries = manifest.get("documents", [])
    return [int(entry["id"]) for entry in entries if isinstance(entry, Mapping) and "id" in entry]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists but belongs to another user
    return True


class RetentionMixin(DocumentMixin):
    # Policies ----------------------------------------------------------------------------

    def set_retention_policy(
        self,
        actor: Principal,
        silo: str | None = None,
        *,
        max_age: timedelta | None | Unchanged = UNCHANGED,
        legal_hold: bool | Unchanged = UNCHANGED,
        tenant: str | None = None,
    ) -> RetentionPolicyInfo:
        """Create or change the policy of ``silo`` (None: the tenant default); needs the tenant_admin role.

        ``max_age`` None removes the age limit. A silo's policy replaces the tenant default as a
        whole, so a new silo policy starts from the tenant default's values.
        """
        if isinstance(max_age, timedelta) and max_age <= timedelta(0):
            raise InvalidInputError(f"maximum age {max_age} must be positive; pass None to remove the limit")
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "set retention policies")
            silo_row = self._silo(session, tenant_row, silo) if silo is not None else None
            row = self._policy_row(session, tenant_row.id, silo_row.id if silo_row else None)
            if row is None:
                default = self._policy_row(session, tenant_row.id, None) if silo_row is not None else None
                row = RetentionPolicy(
                    tenant_id=tenant_row.id, silo_id=silo_row.id if silo_row else None,
                    max_age_seconds=default.max_age_seconds if default else None,
                    legal_hold=default.legal_hold if default else False,
                )
                session.add(row)
            if not isinstance(max_age, Unchanged):
                row.max_age_seconds = None if max_age is None else int(max_age.total_seconds())
            if not isinstance(legal_hold, Unchanged):
                row.legal_hold = legal_hold
            row.updated_by, row.updated_at = actor.id, self.clock()
            session.flush()
            target = f"silo {tenant_row.name}/{silo}" if silo is not None else f"tenant {tenant_row.name}"
            self._audit(session, state, actor, AuditAction.RETENTION_POLICY, target, tenant_id=tenant_row.id,
                        detail={"max_age_seconds": row.max_age_seconds, "legal_hold": row.legal_hold})
            return RetentionPolicyInfo(tenant_row.name, silo, row.max_age_seconds, row.legal_hold, row.updated_at)

    @staticmethod
    def _policy_row(session: Session, tenant_id: int, silo_id: int | None) -> RetentionPolicy | None:
        query = select(RetentionPolicy).where(RetentionPolicy.tenant_id == tenant_id)
        query = query.where(RetentionPolicy.silo_id.is_(None) if silo_id is None else RetentionPolicy.silo_id == silo_id)
        return session.scalars(query).one_or_none()

    def _effective_policy(self, session: Session, tenant: Tenant, silo: Silo | None) -> RetentionPolicyInfo:
        row = self._policy_row(session, tenant.id, silo.id) if silo is not None else None
        if row is None:
            row = self._policy_row(session, tenant.id, None)
        silo_name = silo.name if silo is not None else None
        if row is None:
            return RetentionPolicyInfo(tenant.name, silo_name, None, False, None)
        return RetentionPolicyInfo(tenant.name, silo_name, row.max_age_seconds, row.legal_hold, row.updated_at)

    def retention_policy(self, actor: Principal, silo: str | None = None, *, tenant: str | None = None) -> RetentionPolicyInfo:
        """Return the policy that applies to ``silo`` (its own, else the tenant default, else none)."""
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            silo_row = None
            if silo is not None:
                silo_row = self._silo(session, tenant_row, silo)
                self._require_silo_permission(session, actor, silo_row, tenant_row, Permission.TRAIN)
            return self._effective_policy(session, tenant_row, silo_row)

    def list_retention_policies(self, actor: Principal, *, tenant: str | None = None) -> list[RetentionPolicyInfo]:
        """Return the tenant's stored policies, the tenant default first."""
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "list retention policies")
            rows = session.execute(
                select(RetentionPolicy, Silo.name).outerjoin(Silo, Silo.id == RetentionPolicy.silo_id)
                .where(RetentionPolicy.tenant_id == tenant_row.id).order_by(RetentionPolicy.silo_id.is_not(None), Silo.name)
            ).all()
            return [RetentionPolicyInfo(tenant_row.name, silo_name, row.max_age_seconds, row.legal_hold, row.updated_at)
                    for row, silo_name in rows]

    def _held_silo_ids(self, session: Session, tenant_id: int) -> set[int]:
        """Ids of the tenant's silos under a legal hold, their own or the tenant default's."""
        policies = {row.silo_id: row for row in session.scalars(select(RetentionPolicy).where(RetentionPolicy.tenant_id == tenant_id))}
        default = policies.get(None)
        held: set[int] = set()
        for silo_id in session.scalars(select(Silo.id).where(Silo.tenant_id == tenant_id)):
            policy = policies.get(silo_id, default)
            if policy is not None and policy.legal_hold:
                held.add(silo_id)
        return held

    # Removal requests --------------------------------------------------------------------

    def request_removal(
        self,
        actor: Principal,
        silo: str,
        *,
        document_ids: Iterable[int] = (),
        metadata_match: Mapping[str, str] | None = None,
        reason: str | None = None,
        tenant: str | None = None,
    ) -> list[RemovalRequestInfo]:
        """Record a removal request for documents of ``silo`` named by id or by metadata match.

        A metadata match selects the documents whose metadata holds every given key with that value
        (compared as text); the metadata is decrypted to compare. Needs the train permission on the
        silo. Raises NotFoundError when an id is not a live document of the silo or nothing
        matches. Documents that already have a pending request are not requested twice.
        """
        ids = sorted(set(document_ids))
        if not ids and not metadata_match:
            raise InvalidInputError("name the documents to remove: give document ids or a metadata match (KEY=VALUE)")
        if reason is not None and len(reason) > 300:
            raise InvalidInputError(f"removal reason of {len(reason)} characters is too long; use at most 300")
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            silo_row = self._silo(session, tenant_row, silo)
            self._require_silo_permission(session, actor, silo_row, tenant_row, Permission.TRAIN)
            live = {row.id: row for row in session.scalars(
                select(Document).where(Document.silo_id == silo_row.id, Document.removed_at.is_(None)))}
            missing = [document_id for document_id in ids if document_id not in live]
            if missing:
                raise NotFoundError(f"document(s) {missing} not found among the live documents of silo {silo!r}; "
                                    f"list them with `seqr data list {silo}`")
            selected = set(ids)
            if metadata_match:
                matched = {row.id for row in live.values()
                           if self._metadata_matches(session, tenant_row, silo_row, row, metadata_match)}
                if not matched:
                    raise NotFoundError(f"no live document of silo {silo!r} has metadata matching {dict(metadata_match)}")
                selected |= matched
            pending = set(session.scalars(select(RemovalRequest.document_id).where(
                RemovalRequest.silo_id == silo_row.id, RemovalRequest.completed_at.is_(None))))
            now = self.clock()
            created: list[RemovalRequest] = []
            for document_id in sorted(selected - pending):
                request = RemovalRequest(tenant_id=tenant_row.id, silo_id=silo_row.id, document_id=document_id,
                                         reason=reason, requested_by=actor.id, requested_at=now)
                session.add(request)
                created.append(request)
            session.flush()
            if created:
                # The match itself is not logged: metadata values can be personal data.
                self._audit(session, state, actor, AuditAction.REMOVAL_REQUEST, f"silo {tenant_row.name}/{silo}",
                            tenant_id=tenant_row.id,
                            detail={"documents": [request.document_id for request in created],
                                    "by_metadata": bool(metadata_match)})
            return [self._request_info(request, tenant_row.name, silo) for request in created]

    def _metadata_matches(
        self, session: Session, tenant: Tenant, silo: Silo, document: Document, match: Mapping[str, str]
    ) -> bool:
        context = KeyContext(tenant.id, silo.id, OwnerKind.DOCUMENT, document.id, key_ref="")
        metadata = json.loads(self._open_blobs(session, context, (BlobField.METADATA,))[BlobField.METADATA])
        return all(key in metadata and str(metadata[key]) == value for key, value in match.items())

    @staticmethod
    def _request_info(row: RemovalRequest, tenant: str, silo: str) -> RemovalRequestInfo:
        return RemovalRequestInfo(row.id, tenant, silo, row.document_id, row.reason, row.requested_at, row.completed_at)

    def list_removal_requests(
        self, actor: Principal, *, tenant: str | None = None, pending_only: bool = False
    ) -> list[RemovalRequestInfo]:
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "list removal requests")
            query = (select(RemovalRequest, Silo.name).join(Silo, Silo.id == RemovalRequest.silo_id)
                     .where(RemovalRequest.tenant_id == tenant_row.id).order_by(RemovalRequest.id))
            if pending_only:
                query = query.where(RemovalRequest.completed_at.is_(None))
            return [self._request_info(row, tenant_row.name, silo_name) for row, silo_name in session.execute(query)]

    def remove_document(self, actor: Principal, document_id: int) -> DocumentInfo:
        """Crypto-shred a document, unless a legal hold covers its silo (then raise ConflictError)."""
        with self._read() as session:
            self._check_actor(session, actor)
            document, tenant, silo = self._visible_document(session, actor, document_id)
            if document.silo_id in self._held_silo_ids(session, tenant.id):
                raise ConflictError(
                    f"document {document_id} of silo {tenant.name}/{silo.name} is under a legal hold and cannot be "
                    "removed; lift the hold with `seqr retention policy set --release` first"
                )
        # NOTE: a hold placed between this check and the removal is not seen; holds are rare
        # administrative changes, and the removal is audited either way.
        return super().remove_document(actor, document_id)

    def complete_removal_requests(self, actor: Principal, document_id: int) -> int:
        """Mark the pending requests for a removed document as completed; return how many."""
        with self._write() as (session, _state):
            self._check_actor(session, actor)
            document, _tenant, _silo = self._visible_document(session, actor, document_id)
            if document.removed_at is None:
                raise ConflictError(f"document {document_id} is not removed yet; remove it before completing its requests")
            result = session.execute(update(RemovalRequest).where(
                RemovalRequest.document_id == document_id, RemovalRequest.completed_at.is_(None),
            ).values(completed_at=self.clock()))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # What a run has to do ----------------------------------------------------------------

    def _scoped_tenants(self, session: Session, actor: Principal, tenant: str | None) -> list[Tenant]:
        """The tenants a run covers: the named one, else every tenant for a registry admin, else the caller's."""
        if tenant is None and actor.role is Role.REGISTRY_ADMIN:
            return list(session.scalars(select(Tenant).order_by(Tenant.id)))
        tenant_row = self._tenant(session, actor, tenant)
        self._require_admin(actor, tenant_row, "run retention")
        return [tenant_row]

    def due_documents(self, actor: Principal, *, tenant: str | None = None) -> list[DueDocument]:
        """Live documents that expired, outlived their maximum age, or are requested for removal.

        Uses the registry clock. Documents of silos under a legal hold are included with ``held`` set.
        """
        now = self.clock()
        with self._read() as session:
            self._check_actor(session, actor)
            due: list[DueDocument] = []
            for tenant_row in self._scoped_tenants(session, actor, tenant):
                held = self._held_silo_ids(session, tenant_row.id)
                requested = set(session.scalars(select(RemovalRequest.document_id).where(
                    RemovalRequest.tenant_id == tenant_row.id, RemovalRequest.completed_at.is_(None))))
                silos = {silo.id: silo for silo in session.scalars(select(Silo).where(Silo.tenant_id == tenant_row.id))}
                max_ages = {silo_id: self._effective_policy(session, tenant_row, silo).max_age_seconds
                            for silo_id, silo in silos.items()}
                for document in session.scalars(select(Document).where(
                        Document.tenant_id == tenant_row.id, Document.removed_at.is_(None)).order_by(Document.id)):
                    reasons: list[RemovalReason] = []
                    if document.expires_at is not None and document.expires_at <= now:
                        reasons.append(RemovalReason.EXPIRED)
                    max_age = max_ages.get(document.silo_id)
                    if max_age is not None and document.added_at + timedelta(seconds=max_age) <= now:
                        reasons.append(RemovalReason.MAX_AGE)
                    if document.id in requested:
                        reasons.append(RemovalReason.REQUESTED)
                    if reasons:
                        due.append(DueDocument(document.id, tenant_row.name, silos[document.silo_id].name, reasons,
                                               document.silo_id in held))
            return due

    def tainted_versions(self, actor: Principal, *, tenant: str | None = None) -> list[VersionRef]:
        """Versions that are not destroyed and whose manifest names a removed document."""
        return [ref for ref in self.version_refs(actor, tenant=tenant) if ref.removed_documents]

    def retention_versions(self, actor: Principal, *, tenant: str | None = None, status: AdapterStatus | None = None) -> list[VersionRef]:
        """Versions that are not destroyed and were trained by a retention run."""
        return [ref for ref in self.version_refs(actor, tenant=tenant)
                if ref.retention_run is not None and (status is None or ref.status is status)]

    def version_refs(self, actor: Principal, *, tenant: str | None = None) -> list[VersionRef]:
        """Every version that is not destroyed, with the documents its manifest names."""
        with self._read() as session:
            self._check_actor(session, actor)
            refs: list[VersionRef] = []
            for tenant_row in self._scoped_tenants(session, actor, tenant):
                removed = set(session.scalars(select(Document.id).where(
                    Document.tenant_id == tenant_row.id, Document.removed_at.is_not(None))))
                rows = session.execute(
                    select(AdapterVersion, Silo.name, LibraryRow.name)
                    .join(Silo, Silo.id == AdapterVersion.silo_id)
                    .join(LibraryRow, LibraryRow.id == AdapterVersion.library_id)
                    .where(AdapterVersion.tenant_id == tenant_row.id, AdapterVersion.status != AdapterStatus.DESTROYED)
                    .order_by(AdapterVersion.id)
                ).all()
                for version, silo_name, library_name in rows:
                    run = version.manifest.get(MANIFEST_RUN_KEY)
                    named = manifest_document_ids(version.manifest)
                    refs.append(VersionRef(
                        version.id, tenant_row.name, silo_name, library_name, version.number, version.status,
                        named, sorted(set(named) & removed),
                        int(run) if isinstance(run, int) else None,
                    ))
            return refs

    def check_destruction(self, actor: Principal, *, tenant: str | None = None) -> DestructionCheck:
        """Count destroyed versions and removed documents and list those that are still decryptable.

        One counts as undecryptable once its wrapped data key (and so its ciphertext) is deleted
        from the database; a leftover row is reported with whether its shred key still exists.
        """
        with self._read() as session:
            self._check_actor(session, actor)
            check = DestructionCheck()
            store = self.keys.shred_key_refs()
            for tenant_row in self._scoped_tenants(session, actor, tenant):
                check.destroyed_versions += len(session.scalars(select(AdapterVersion.id).where(
                    AdapterVersion.tenant_id == tenant_row.id, AdapterVersion.status == AdapterStatus.DESTROYED)).all())
                check.removed_documents += len(session.scalars(select(Document.id).where(
                    Document.tenant_id == tenant_row.id, Document.removed_at.is_not(None))).all())
                versions = session.execute(
                    select(AdapterVersion.id, DataKey.key_ref).join(DataKey, DataKey.adapter_version_id == AdapterVersion.id)
                    .where(AdapterVersion.tenant_id == tenant_row.id, AdapterVersion.status == AdapterStatus.DESTROYED)
                ).all()
                documents = session.execute(
                    select(Document.id, DataKey.key_ref).join(DataKey, DataKey.document_id == Document.id)
                    .where(Document.tenant_id == tenant_row.id, Document.removed_at.is_not(None))
                ).all()
                for kind, rows in (("destroyed adapter version", versions), ("removed document", documents)):
                    for owner_id, key_ref in rows:
                        shred = "its shred key is still in the key store" if key_ref in store else "its shred key is gone"
                        check.leftovers.append(f"{kind} {owner_id} still has a wrapped data key in the database ({shred})")
            return check

    # Job lock ----------------------------------------------------------------------------

    def acquire_job_lock(self, name: str, holder: str, lease: timedelta) -> JobLease:
        """Take the named lock for ``lease``, or raise LockHeldError while another holder's lease is valid.

        A lease whose time has passed, or whose holder process on this host no longer exists, is
        taken over. The check and the write happen in one write transaction, which the registry
        serialises, so two processes never both succeed.
        """
        host, pid = socket.gethostname(), os.getpid()
        with self._write() as (session, _state):
            now = self.clock()
            row = session.get(JobLock, name)
            took_over: str | None = None
            if row is not None:
                described = f"pid {row.pid} on {row.host}, started {row.acquired_at.isoformat(timespec='seconds')}"
                stale = row.expires_at <= now or (row.host == host and not _process_alive(row.pid))
                if not stale:
                    raise LockHeldError(
                        f"another {name} job holds the registry's lock ({described}, lease until "
                        f"{row.expires_at.isoformat(timespec='seconds')}); it exits when done, so try again later"
                    )
                logger.warning("taking over the %s lock from a stale holder (%s)", name, described)
                took_over = described
                session.delete(row)
                session.flush()
            session.add(JobLock(name=name, holder=holder, host=host, pid=pid, acquired_at=now, expires_at=now + lease))
            return JobLease(name, holder, now + lease, took_over)

    def renew_job_lock(self, lease: JobLease, duration: timedelta) -> JobLease:
        """Extend a held lease; raise LockHeldError when this holder lost it (its lease expired and was taken)."""
        with self._write() as (session, _state):
            expires = self.clock() + duration
            result = session.execute(update(JobLock).where(
                JobLock.name == lease.name, JobLock.holder == lease.holder).values(expires_at=expires))
            if not result.rowcount:  # type: ignore[attr-defined]
                raise LockHeldError(f"this process lost the {lease.name} lock: its lease expired and another job took it")
            return JobLease(lease.name, lease.holder, expires, lease.took_over)

    def release_job_lock(self, lease: JobLease) -> None:
        with self._write() as (session, _state):
            session.execute(delete(JobLock).where(JobLock.name == lease.name, JobLock.holder == lease.holder))

    # Run log -----------------------------------------------------------------------------

    def start_retention_run(self, actor: Principal, *, tenant: str | None = None) -> int:
        """Record a run as running; mark runs left running by a killed job as interrupted. Return its id.

        Call only while holding the retention lock, because a run still marked running is then dead.
        """
        self.close_interrupted_runs()
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenants = self._scoped_tenants(session, actor, tenant)
            run = RetentionRun(tenant_id=tenants[0].id if len(tenants) == 1 else None, actor=f"{actor.describe()}#{actor.id}",
                               status=RunStatus.RUNNING, started_at=self.clock(), summary={})
            session.add(run)
            session.flush()
            self._audit(session, state, actor, AuditAction.RETENTION_RUN, f"retention run {run.id}",
                        detail={"phase": "start", "tenant": tenant})
            return run.id

    def close_interrupted_runs(self) -> int:
        """Mark runs still recorded as running as interrupted; return how many.

        Call only while holding the retention lock, because a run still marked running is then dead.
        """
        with self._write() as (session, _state):
            result = session.execute(update(RetentionRun).where(RetentionRun.status == RunStatus.RUNNING)
                                     .values(status=RunStatus.INTERRUPTED, finished_at=self.clock()))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def finish_retention_run(self, actor: Principal, run_id: int, status: RunStatus, summary: Mapping[str, Any]) -> None:
        with self._write() as (session, state):
            self._check_actor(session, actor)
            run = session.get(RetentionRun, run_id)
            if run is None:
                raise IntegrityError(f"retention run {run_id} is missing from the run log")
            run.status, run.finished_at, run.summary = status, self.clock(), dict(summary)
            self._audit(session, state, actor, AuditAction.RETENTION_RUN, f"retention run {run_id}",
                        outcome=Outcome.SUCCESS if status is RunStatus.COMPLETED else Outcome.FAILURE,
                        detail={"phase": status.value, **summary})

    def record_retention_step(self, actor: Principal, tenant: str, target: str, detail: Mapping[str, Any]) -> None:
        """Append one step of a retention run (a retrain, a retirement) to the audit log of ``tenant``."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._audit(session, state, actor, AuditAction.RETENTION_RETRAIN, target, tenant_id=tenant_row.id, detail=detail)

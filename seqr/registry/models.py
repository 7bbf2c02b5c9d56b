"""SQLAlchemy models of the registry database.

Every row that belongs to a tenant carries ``tenant_id`` so that each query can be scoped to one
tenant. Secret payloads live only in :class:`Blob` (AES-256-GCM ciphertext) and :class:`DataKey`
(wrapped data keys); no other table stores a token, a key or a document in plaintext.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from seqr.registry.enums import AdapterStatus, BlobField, Permission, PrincipalKind, Role, RunStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored naive because SQLite has no time zones."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} reached the database; pass an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _enum(enum_class: type) -> Enum:
    # Stored as plain strings with a CHECK constraint so new values need no ALTER TYPE.
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [member.value for member in members],
        name=enum_class.__name__.lower(),
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RegistryState(Base):
    """The single row (id 1) that serialises writers and carries the change counter and audit head."""

    __tablename__ = "registry_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    audit_head: Mapped[str] = mapped_column(String(64), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class Principal(Base):
    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[PrincipalKind] = mapped_column(_enum(PrincipalKind), nullable=False)
    role: Mapped[Role] = mapped_column(_enum(Role), nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class Group(Base):
    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class Membership(Base):
    __tablename__ = "memberships"
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    principal_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Token(Base):
    """An API token, stored only as the SHA-256 digest of the full token string."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"), nullable=False, index=True)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    public_id: Mapped[str] = mapped_column(String(16), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Silo(Base):
    __tablename__ = "silos"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class Grant(Base):
    """A permission on a silo, held by exactly one principal or one group."""

    __tablename__ = "grants"
    __table_args__ = (
        CheckConstraint("(principal_id IS NULL) <> (group_id IS NULL)", name="one_grantee"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    silo_id: Mapped[int] = mapped_column(ForeignKey("silos.id"), nullable=False, index=True)
    principal_id: Mapped[int | None] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), index=True
    )
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    permission: Mapped[Permission] = mapped_column(_enum(Permission), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class Library(Base):
    """A base model, its target modules, rank, alpha, seed and the shared A (plaintext safetensors)."""

    __tablename__ = "libraries"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    base_model_fingerprint: Mapped[str] = mapped_column(String(128), nullable=False)
    target_modules: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    alpha: Mapped[float] = mapped_column(Float, nullable=False)
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    shared_a: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    a_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    # Where a scheduled retrain loads the base model from (a local directory or GGUF file);
    # None means the default SmolLM2 model. Added by migration 0002.
    base_model_source: Mapped[str | None] = mapped_column(String(1000))


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("silo_id", "library_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    silo_id: Mapped[int] = mapped_column(ForeignKey("silos.id"), nullable=False, index=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id"), nullable=False, index=True)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[AdapterStatus] = mapped_column(_enum(AdapterStatus), nullable=False, index=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    activated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    destroyed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Document(Base):
    """A training document of a silo; its content and metadata are encrypted blobs."""

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    silo_id: Mapped[int] = mapped_column(ForeignKey("silos.id"), nullable=False, index=True)
    added_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    removed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    size: Mapped[int] = mapped_column(Integer, nullable=False)


class DataKey(Base):
    """The data key of one adapter version or one document, wrapped under a key-encryption key.

    The key-encryption key is derived from the master key version ``master_key_version`` and the
    shred key ``key_ref`` in the key store outside the database; see docs/security.md.
    """

    __tablename__ = "data_keys"
    __table_args__ = (
        CheckConstraint(
            "(adapter_version_id IS NULL) <> (document_id IS NULL)", name="one_owner"
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_ref: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    silo_id: Mapped[int] = mapped_column(ForeignKey("silos.id"), nullable=False)
    adapter_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id"), unique=True
    )
    document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id"), unique=True)
    master_key_version: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    wrap_nonce: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class Blob(Base):
    """One AES-256-GCM ciphertext under the data key ``data_key_id``."""

    __tablename__ = "blobs"
    __table_args__ = (UniqueConstraint("data_key_id", "field"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    data_key_id: Mapped[int] = mapped_column(
        ForeignKey("data_keys.id", ondelete="CASCADE"), nullable=False, index=True
    )
    field: Mapped[BlobField] = mapped_column(_enum(BlobField), nullable=False)
    nonce: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class AuditEvent(Base):
    """One link of the audit hash chain; ``hash`` is an HMAC over ``prev_hash`` and the fields."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    # No foreign key: the log outlives what it describes.
    tenant_id: Mapped[int | None] = mapped_column(Integer, index=True)
    actor: Mapped[str] = mapped_column(String(300), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(String(300), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False)
    master_key_version: Mapped[int] = mapped_column(Integer, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


# Retention (migration 0002) -----------------------------------------------------------------


class RetentionPolicy(Base):
    """A retention policy: a tenant's default when ``silo_id`` is NULL, else one silo's.

    A silo's policy replaces its tenant's default as a whole. ``max_age_seconds`` NULL means
    documents never expire by age; ``legal_hold`` blocks every deletion of the silo's documents.
    """

    __tablename__ = "retention_policies"
    __table_args__ = (UniqueConstraint("tenant_id", "silo_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    silo_id: Mapped[int | None] = mapped_column(ForeignKey("silos.id"), index=True)
    max_age_seconds: Mapped[int | None] = mapped_column(Integer)
    legal_hold: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class RemovalRequest(Base):
    """A request to erase one document, completed by the retention run that removes it."""

    __tablename__ = "removal_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False, index=True)
    silo_id: Mapped[int] = mapped_column(ForeignKey("silos.id"), nullable=False)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"), nullable=False, index=True)
    reason: Mapped[str | None] = mapped_column(String(300))
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("principals.id", ondelete="SET NULL"))
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class JobLock(Base):
    """A named lease held by one job process; a lease past ``expires_at`` may be taken over."""

    __tablename__ = "job_locks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64), nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class RetentionRun(Base):
    """One retention run and its summary; the work itself is derived from documents and versions."""

    __tablename__ = "retention_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    actor: Mapped[str] = mapped_column(String(300), nullable=False)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), nullable=False, index=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)

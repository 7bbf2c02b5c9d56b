"""Training documents of a silo: content and metadata encrypted like adapter blobs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from seqr.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from seqr.registry.adapters import AdapterMixin
from seqr.registry.crypto import KeyContext, OwnerKind
from seqr.registry.enums import AuditAction, BlobField, Permission, Role
from seqr.registry.models import Document, Silo, Tenant
from seqr.registry.views import DocumentContent, DocumentInfo, Principal


class DocumentMixin(AdapterMixin):
    def add_document(
        self,
        actor: Principal,
        silo: str,
        content: bytes,
        *,
        metadata: Mapping[str, Any] | None = None,
        expires_at: datetime | None = None,
        tenant: str | None = None,
    ) -> DocumentInfo:
        """Encrypt and store a training document; needs the train permission on the silo."""
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidInputError(f"expiry time {expires_at.isoformat()} has no time zone; pass an aware UTC datetime")
        metadata_bytes = json.dumps(dict(metadata or {}), sort_keys=True).encode()
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            silo_row = self._silo(session, tenant_row, silo)
            self._require_silo_permission(session, actor, silo_row, tenant_row, Permission.TRAIN)
            document = Document(
                tenant_id=tenant_row.id, silo_id=silo_row.id, added_at=self.clock(),
                expires_at=expires_at, size=len(content),
            )
            session.add(document)
            session.flush()
            key_row, data_key, context = self._create_data_key(session, tenant_row.id, silo_row.id, OwnerKind.DOCUMENT, document.id)
            try:
                session.flush()
                self._seal_blob(session, key_row, data_key, context, BlobField.CONTENT, content)
                self._seal_blob(session, key_row, data_key, context, BlobField.METADATA, metadata_bytes)
                self._audit(session, state, actor, AuditAction.DOCUMENT_ADD, f"document {document.id} of silo {tenant_row.name}/{silo}",
                            tenant_id=tenant_row.id)
                session.flush()
            except BaseException:
                self.keys.destroy_shred_key(context.key_ref)
                raise
            return self._document_info(document, tenant_row.name, silo)

    @staticmethod
    def _document_info(row: Document, tenant: str, silo: str) -> DocumentInfo:
        return DocumentInfo(row.id, tenant, silo, row.size, row.added_at, row.expires_at, row.removed_at)

    def _visible_document(self, session: Session, actor: Principal, document_id: int) -> tuple[Document, Tenant, Silo]:
        document = session.get(Document, document_id)
        if document is None or not (actor.role is Role.REGISTRY_ADMIN or document.tenant_id == actor.tenant_id):
            raise NotFoundError(f"document {document_id} not found")
        tenant = session.get(Tenant, document.tenant_id)
        silo = session.get(Silo, document.silo_id)
        assert tenant is not None and silo is not None  # foreign keys
        try:
            self._require_silo_permission(session, actor, silo, tenant, Permission.TRAIN)
        except NotFoundError as error:
            raise NotFoundError(f"document {document_id} not found") from error
        return document, tenant, silo

    def list_documents(
        self,
        actor: Principal,
        silo: str,
        *,
        tenant: str | None = None,
        include_removed: bool = False,
    ) -> list[DocumentInfo]:
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            silo_row = self._silo(session, tenant_row, silo)
            self._require_silo_permission(session, actor, silo_row, tenant_row, Permission.TRAIN)
            query = select(Document).where(Document.silo_id == silo_row.id).order_by(Document.id)
            if not include_removed:
                query = query.where(Document.removed_at.is_(None))
            return [self._document_info(row, tenant_row.name, silo) for row in session.scalars(query)]

    def expired_documents(self, actor: Principal, *, tenant: str | None = None) -> list[DocumentInfo]:
        """Documents of the tenant whose expiry time is at or before the registry clock's now."""
        now = self.clock()
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "list expired documents")
            rows = session.execute(
                select(Document, Silo.name).join(Silo, Silo.id == Document.silo_id).where(
                    Document.tenant_id == tenant_row.id, Document.removed_at.is_(None),
                    Document.expires_at.is_not(None), Document.expires_at <= now,
                ).order_by(Document.id)
            ).all()
            return [self._document_info(row, tenant_row.name, silo_name) for row, silo_name in rows]

    def read_document(self, actor: Principal, document_id: int) -> DocumentContent:
        """Decrypt a document; needs the train permission on its silo."""
        with self._read() as session:
            self._check_actor(session, actor)
            document, tenant, silo = self._visible_document(session, actor, document_id)
            if document.removed_at is not None:
                raise NotFoundError(f"document {document_id} was removed")
            context = KeyContext(tenant.id, silo.id, OwnerKind.DOCUMENT, document.id, key_ref="")
            try:
                plain = self._open_blobs(session, context, (BlobField.CONTENT, BlobField.METADATA))
                metadata = json.loads(plain[BlobField.METADATA])
            except IntegrityError as error:
                failure = error
            else:
                return DocumentContent(self._document_info(document, tenant.name, silo.name), plain[BlobField.CONTENT], metadata)
        self._record_integrity_failure(actor, f"document {document_id}", failure)
        raise failure

    def remove_document(self, actor: Principal, document_id: int) -> DocumentInfo:
        """Remove a document by crypto-shredding; its row stays as a tombstone with ``removed_at`` set."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            document, tenant, silo = self._visible_document(session, actor, document_id)
            if document.removed_at is not None:
                raise ConflictError(f"document {document_id} was already removed")
            document.removed_at = self.clock()
            self._audit(session, state, actor, AuditAction.DOCUMENT_REMOVE, f"document {document_id} of silo {tenant.name}/{silo.name}",
                        tenant_id=tenant.id)
            info = self._document_info(document, tenant.name, silo.name)
        self.finish_destruction()
        return info

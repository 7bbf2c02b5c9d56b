"""Master key rotation: add a master key version and rewrap every data key under it.

Blobs are never re-encrypted: their associated data does not include the master key version.
Each batch of rewraps commits on its own, and a row records the master version it is wrapped
under, so an interrupted rotation resumes where it stopped when run again. Readers keep working
throughout because earlier master versions stay in the key provider.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seqr.errors import PermissionDeniedError
from seqr.registry import crypto
from seqr.registry.documents import DocumentMixin
from seqr.registry.enums import AuditAction, Role
from seqr.registry.models import DataKey
from seqr.registry.views import Principal

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RotationReport:
    master_version: int
    rewrapped: int
    resumed: bool


class RotationMixin(DocumentMixin):
    def rotate_keys(
        self, actor: Principal, *, batch_size: int = 100, on_batch: ProgressCallback | None = None
    ) -> RotationReport:
        """Add a master key version (unless an earlier rotation is unfinished) and rewrap every data key.

        ``on_batch(done, total)`` runs after each committed batch. Needs the registry_admin role
        and a key provider that can add versions (or one already given the new version).
        """
        self.finish_destruction()
        with self._write() as (session, state):
            self._check_actor(session, actor)
            if actor.role is not Role.REGISTRY_ADMIN:
                raise PermissionDeniedError(f"{actor.describe()} may not rotate keys: it needs the registry_admin role")
            current = self.keys.current_master_version()
            pending = self._pending(session, current)
            resumed = pending > 0
            if not resumed:
                # NOTE: the earlier master versions stay in the key provider (readers and the
                # audit chain of older events need them), so rotation does not revoke them.
                current = self.keys.add_master_version()
                pending = self._pending(session, current)
            self._audit(session, state, actor, AuditAction.KEYS_ROTATE, f"master key version {current}",
                        detail={"phase": "resume" if resumed else "start", "pending": pending})
        done = 0
        while True:
            with self._write() as (session, _state):
                rows = session.scalars(
                    select(DataKey).where(DataKey.master_key_version < current).order_by(DataKey.id).limit(batch_size)
                ).all()
                for row in rows:
                    self._rewrap(row, current)
            if not rows:
                break
            done += len(rows)
            logger.info("rewrapped %d of %d data keys under master key version %d", done, pending, current)
            if on_batch is not None:
                on_batch(done, pending)
        with self._write() as (session, state):
            self._audit(session, state, actor, AuditAction.KEYS_ROTATE, f"master key version {current}",
                        detail={"phase": "complete", "rewrapped": done})
        return RotationReport(master_version=current, rewrapped=done, resumed=resumed)

    @staticmethod
    def _pending(session: Session, version: int) -> int:
        return int(session.scalar(select(func.count()).select_from(DataKey).where(DataKey.master_key_version < version)) or 0)

    def _rewrap(self, row: DataKey, version: int) -> None:
        context = self._context_of(row)
        data_key = self._unwrap(row, context)
        kek = crypto.derive_kek(self.keys.master_key(version), self.keys.shred_key(row.key_ref))
        row.wrap_nonce, row.wrapped_key = crypto.wrap_data_key(kek, data_key, context, version)
        row.master_key_version = version

"""The :class:`Registry`: open or create a registry and act on it as an authenticated principal.

A registry is a directory holding ``registry.json`` (the database URL), ``master.key`` (master
key versions, mode 0600), ``keystore/`` (one shred key per adapter version and document) and, for
the default SQLite database, ``registry.db``. Every operation takes the acting
:class:`~seqr.registry.views.Principal` returned by :meth:`Registry.authenticate`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from seqr import migrations
from seqr.errors import ConflictError, NotFoundError, PermissionDeniedError, RegistryError
from seqr.registry import audit
from seqr.registry.audit import AuditRecord, AuditReport, GENESIS_HASH
from seqr.registry.core import Clock, utc_now
from seqr.registry.db import make_engine, write_session
from seqr.registry.enums import AuditAction, PrincipalKind, Role
from seqr.registry.identity import token_info
from seqr.registry.keys import MASTER_KEY_VARIABLE, EnvKeyProvider, FileKeyProvider, KeyProvider, KEY_STORE_DIR
from seqr.registry.models import AuditEvent, RegistryState, Tenant
from seqr.registry.models import Principal as PrincipalRow
from seqr.registry.retention import RetentionMixin
from seqr.registry.rotation import RotationMixin
from seqr.registry.views import CreatedToken, Principal

if TYPE_CHECKING:
    from seqr.api.session import Session as ApiSession

logger = logging.getLogger(__name__)

CONFIG_FILE = "registry.json"
SQLITE_FILE = "registry.db"


@dataclass(frozen=True)
class RegistryConfig:
    database_url: str

    @classmethod
    def load(cls, directory: Path) -> RegistryConfig:
        path = directory / CONFIG_FILE
        try:
            document = json.loads(path.read_text())
            return cls(database_url=str(document["database_url"]))
        except FileNotFoundError as error:
            raise NotFoundError(f"no registry at {directory}: {path} is missing; create one with `seqr init --dir {directory}`") from error
        except (ValueError, KeyError, TypeError) as error:
            raise RegistryError(f"{path} is not a valid registry configuration; restore it from backup") from error

    def save(self, directory: Path) -> None:
        path = directory / CONFIG_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"format": 1, "database_url": self.database_url}, handle, indent=2)


def default_key_provider(directory: Path) -> KeyProvider:
    """``$SEQR_MASTER_KEY`` when set (shred keys still in ``DIR/keystore``), else ``DIR/master.key``."""
    if os.environ.get(MASTER_KEY_VARIABLE):
        return EnvKeyProvider(directory / KEY_STORE_DIR)
    return FileKeyProvider(directory)


class Registry(RetentionMixin, RotationMixin):
    """The registry API. Construct with :meth:`init` or :meth:`open`; close with :meth:`close`."""

    def __init__(self, engine: Engine, keys: KeyProvider, clock: Clock = utc_now, directory: Path | None = None) -> None:
        super().__init__(engine, keys, clock)
        self.directory = directory

    # Construction ------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path | str,
        database_url: str | None = None,
        *,
        tenant: str = "default",
        admin: str = "admin",
        key_provider: KeyProvider | None = None,
        clock: Clock = utc_now,
    ) -> tuple[Registry, CreatedToken]:
        """Create a registry: directory, key file (0600), database at the latest migration, a first
        tenant and a registry admin. Return the open registry and the admin's token (shown once)."""
        directory = Path(directory)
        if (directory / CONFIG_FILE).exists():
            raise ConflictError(f"{directory} already contains a registry; open it instead of running init again")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if database_url is None:
            database = directory.resolve() / SQLITE_FILE
            # SQLite creates the file (and later its -wal and -shm files, which copy the database
            # file's mode) with the process umask; create it owner-only first.
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            url = f"sqlite:///{database}"
        else:
            url = database_url
        engine = make_engine(url)
        migrations.upgrade(engine)
        with Session(engine) as session:
            if session.get(RegistryState, 1) is not None:
                engine.dispose()
                raise ConflictError("the database already contains a registry; use a fresh database for `seqr init`")
        keys = key_provider if key_provider is not None else FileKeyProvider.create(directory)
        registry = cls(engine, keys, clock, directory)
        token = registry._bootstrap(tenant, admin)
        RegistryConfig(url).save(directory)
        logger.info("created registry in %s", directory)
        return registry, token

    def _bootstrap(self, tenant_name: str, admin_name: str) -> CreatedToken:
        with write_session(self.engine) as session:
            if session.get(RegistryState, 1) is not None:
                raise ConflictError("the database already contains a registry; use a fresh database for `seqr init`")
            session.add(RegistryState(id=1, generation=0, audit_head=GENESIS_HASH))
        with self._write() as (session, state):
            now = self.clock()
            tenant = Tenant(name=tenant_name, created_at=now)
            session.add(tenant)
            session.flush()
            row = PrincipalRow(tenant_id=tenant.id, name=admin_name, kind=PrincipalKind.USER,
                               role=Role.REGISTRY_ADMIN, disabled=False, created_at=now)
            session.add(row)
            session.flush()
            token_row, secret = self._issue_token(session, row, None)
            state.generation += 1
            for action, target in (
                (AuditAction.TENANT_CREATE, f"tenant {tenant_name}"),
                (AuditAction.PRINCIPAL_CREATE, f"principal {tenant_name}/{admin_name}"),
                (AuditAction.TOKEN_CREATE, f"token {token_row.public_id} of {tenant_name}/{admin_name}"),
            ):
                self._audit(session, state, "system:init", action, target, tenant_id=tenant.id)
            return CreatedToken(secret, token_info(token_row, row, tenant_name))

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        key_provider: KeyProvider | None = None,
        clock: Clock = utc_now,
        check_schema: bool = True,
        database_url: str | None = None,
    ) -> Registry:
        """Open an existing registry; raise :class:`ConflictError` when its database needs ``seqr db upgrade``.

        ``database_url`` overrides the URL stored in the directory's ``registry.json``.
        """
        directory = Path(directory)
        config = RegistryConfig.load(directory)
        engine = make_engine(database_url or config.database_url)
        registry = cls(engine, key_provider or default_key_provider(directory), clock, directory)
        if check_schema:
            registry._check_schema()
        return registry

    def _check_schema(self) -> None:
        try:
            current = migrations.current_revision(self.engine)
        except (OperationalError, ProgrammingError) as error:
            raise RegistryError(f"cannot read the registry database: {error.orig}") from error
        heads = migrations.heads()
        if current not in heads:
            raise ConflictError(
                f"the registry database is at revision {current}, but this seqr expects {heads[0]}; "
                "run `seqr db upgrade`"
            )

    @classmethod
    def upgrade_database(cls, directory: Path | str, *, key_provider: KeyProvider | None = None) -> str:
        """Migrate the database to the latest revision and return it. Needs the master key, which is
        read first so that a wrong or missing key fails before anything changes."""
        directory = Path(directory)
        keys = key_provider or default_key_provider(directory)
        keys.master_key(keys.current_master_version())
        engine = make_engine(RegistryConfig.load(directory).database_url)
        try:
            migrations.upgrade(engine)
            return migrations.heads()[0]
        finally:
            engine.dispose()

    def close(self) -> None:
        self.engine.dispose()

    def login(self, token: str) -> ApiSession:
        """Authenticate ``token`` (audited as a login) and return an application session for it."""
        from seqr.api.session import Session as ApiSession

        return ApiSession(self, self.authenticate(token))

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Audit -------------------------------------------------------------------------------

    def list_audit_events(self, actor: Principal, *, limit: int = 100, tenant: str | None = None) -> list[AuditRecord]:
        """Return the latest events, newest first: all events for a registry admin, the tenant's for a tenant admin."""
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "read the audit log")
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if actor.role is not Role.REGISTRY_ADMIN or tenant is not None:
                query = query.where(AuditEvent.tenant_id == tenant_row.id)
            return [audit.to_record(event) for event in session.scalars(query)]

    def verify_audit(self, actor: Principal) -> AuditReport:
        """Verify the whole chain; on failure record an integrity-failure event and raise
        :class:`~seqr.registry.audit.AuditChainError` naming the first bad event."""
        with self._read() as session:
            self._check_actor(session, actor)
            if actor.role is not Role.REGISTRY_ADMIN:
                raise PermissionDeniedError(f"{actor.describe()} may not verify the audit log: it needs the registry_admin role")
            try:
                return audit.verify(session, self.keys.master_key)
            except audit.AuditChainError as error:
                failure = error
        self._record_integrity_failure(actor, f"audit event {failure.event_id}", failure)
        raise failure

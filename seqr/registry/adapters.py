"""Libraries and adapter versions: add, activate, retire, destroy, list, resolve and load."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seqr.errors import AdapterFormatError, ConflictError, IntegrityError, NotFoundError
from seqr.policies import access
from seqr.registry import codec
from seqr.registry.crypto import KeyContext, OwnerKind
from seqr.registry.enums import AdapterStatus, AuditAction, BlobField, Permission, Role
from seqr.registry.models import AdapterVersion, Library as LibraryRow, Silo, Tenant
from seqr.registry.silos import SiloMixin
from seqr.registry.identity import check_name
from seqr.registry.views import AdapterVersionInfo, Library, LibraryInfo, LoadedAdapter, Principal
from seqr.routing.factors import AdapterFactors

logger = logging.getLogger(__name__)

# Ids per IN list when reading rows by id: below the default limits on bound parameters of
# SQLite 3.32 and later (32,766) and PostgreSQL (65,535).
_IDS_PER_QUERY = 5000

_Row = TypeVar("_Row", AdapterVersion, LibraryRow, Silo, Tenant)


def _rows_by_id(session: Session, model: type[_Row], ids: Iterable[int]) -> dict[int, _Row]:
    """Read the rows of ``model`` with the given ids, one query per 5,000 distinct ids; missing ids are left out."""
    requested = sorted(set(ids))
    found: dict[int, _Row] = {}
    for start in range(0, len(requested), _IDS_PER_QUERY):
        for row in session.scalars(select(model).where(model.id.in_(requested[start:start + _IDS_PER_QUERY]))):
            found[row.id] = row
    return found


@dataclass(frozen=True)
class _VersionRows:
    """Adapter versions read by id, their tenants, silos and libraries, and the caller's silo permissions."""

    versions: dict[int, AdapterVersion]
    tenants: dict[int, Tenant]
    silos: dict[int, Silo]
    libraries: dict[int, LibraryRow]
    granted: dict[int, frozenset[Permission]]  # silo id -> the caller's permissions; empty when it administers every silo read


def _library_info(row: LibraryRow, tenant: str) -> LibraryInfo:
    return LibraryInfo(
        row.id, tenant, row.name, row.base_model_fingerprint, list(row.target_modules),
        row.rank, row.alpha, row.seed, row.a_fingerprint, row.base_model_source,
    )


class AdapterMixin(SiloMixin):
    # Libraries ---------------------------------------------------------------------------

    def add_library(
        self,
        actor: Principal,
        name: str,
        *,
        base_model_fingerprint: str,
        target_modules: list[str],
        rank: int,
        alpha: float,
        seed: int,
        shared_a: Mapping[str, torch.Tensor],
        tenant: str | None = None,
        base_model_source: str | None = None,
    ) -> LibraryInfo:
        """Store a library; ``shared_a`` maps each full module name to its frozen A (rank, in_features).

        ``base_model_source`` is where a scheduled retrain loads the base model from (None: the default model).
        """
        check_name("library", name)
        if rank < 1:
            raise AdapterFormatError(f"library rank {rank} must be at least 1")
        payload, fingerprint = codec.encode_shared_a(shared_a, rank)
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "add libraries")
            if session.scalars(select(LibraryRow.id).where(LibraryRow.tenant_id == tenant_row.id, LibraryRow.name == name)).first():
                raise ConflictError(f"library {name!r} already exists in tenant {tenant_row.name!r}")
            row = LibraryRow(
                tenant_id=tenant_row.id, name=name, base_model_fingerprint=base_model_fingerprint,
                target_modules=list(target_modules), rank=rank, alpha=float(alpha), seed=int(seed),
                shared_a=payload, a_fingerprint=fingerprint, created_at=self.clock(),
                base_model_source=base_model_source,
            )
            session.add(row)
            session.flush()
            state.generation += 1
            self._audit(
                session, state, actor, AuditAction.LIBRARY_ADD, f"library {tenant_row.name}/{name}",
                tenant_id=tenant_row.id, detail={"a_fingerprint": fingerprint},
            )
            return _library_info(row, tenant_row.name)

    def _library(self, session: Session, tenant: Tenant, name: str) -> LibraryRow:
        row = session.scalars(select(LibraryRow).where(LibraryRow.tenant_id == tenant.id, LibraryRow.name == name)).one_or_none()
        if row is None:
            raise NotFoundError(f"library {name!r} not found in tenant {tenant.name!r}")
        return row

    @staticmethod
    def _library_modules(row: LibraryRow) -> set[str]:
        """Return the full module names of the library's shared A, after checking its fingerprint."""
        return set(codec.decode_shared_a(row.shared_a, row.rank, row.a_fingerprint, library=row.name))

    def library(self, actor: Principal, name: str, *, tenant: str | None = None) -> Library:
        """Load a library of the caller's tenant with its shared A, checked against its fingerprint."""
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            row = self._library(session, tenant_row, name)
            shared_a = codec.decode_shared_a(row.shared_a, row.rank, row.a_fingerprint, library=name)
            return Library(_library_info(row, tenant_row.name), shared_a)

    def list_libraries(self, actor: Principal, *, tenant: str | None = None) -> list[LibraryInfo]:
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            rows = session.scalars(select(LibraryRow).where(LibraryRow.tenant_id == tenant_row.id).order_by(LibraryRow.name))
            return [_library_info(row, tenant_row.name) for row in rows]

    # Adapter versions --------------------------------------------------------------------

    def add_adapter_version(
        self,
        actor: Principal,
        silo: str,
        library: str,
        factors: AdapterFactors,
        *,
        manifest: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        tenant: str | None = None,
    ) -> AdapterVersionInfo:
        """Encrypt and store a new version in status ``training``; needs the train permission.

        ``manifest`` records the training documents, ``config`` the training settings and
        ``metrics`` the evaluation results. They are stored as plaintext JSON: keep secrets and
        document text out of them.
        """
        payload = codec.encode_factors(factors)
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            silo_row = self._silo(session, tenant_row, silo)
            self._require_silo_permission(session, actor, silo_row, tenant_row, Permission.TRAIN)
            library_row = self._library(session, tenant_row, library)
            # Reject factors that do not fit the library before anything is written.
            codec.decode_factors(payload, rank=library_row.rank, modules=self._library_modules(library_row))
            number = 1 + (session.scalar(
                select(func.max(AdapterVersion.number)).where(
                    AdapterVersion.silo_id == silo_row.id, AdapterVersion.library_id == library_row.id)
            ) or 0)
            version = AdapterVersion(
                tenant_id=tenant_row.id, silo_id=silo_row.id, library_id=library_row.id, number=number,
                status=AdapterStatus.TRAINING, manifest=dict(manifest or {}), config=dict(config or {}),
                metrics=dict(metrics or {}), created_by=actor.id, created_at=self.clock(),
            )
            session.add(version)
            session.flush()
            key_row, data_key, context = self._create_data_key(
                session, tenant_row.id, silo_row.id, OwnerKind.ADAPTER_VERSION, version.id
            )
            try:
                session.flush()
                self._seal_blob(session, key_row, data_key, context, BlobField.FACTORS, payload)
                state.generation += 1
                self._audit(
                    session, state, actor, AuditAction.ADAPTER_ADD, self._version_target(tenant_row, silo_row, library, number),
                    tenant_id=tenant_row.id, detail={"version_id": version.id},
                )
                session.flush()
            except BaseException:
                self.keys.destroy_shred_key(context.key_ref)
                raise
            return self._version_info(version, tenant_row.name, silo_row.name, library)

    @staticmethod
    def _version_target(tenant: Tenant, silo: Silo, library: str, number: int) -> str:
        return f"adapter {tenant.name}/{silo.name}/{library}@{number}"

    @staticmethod
    def _version_info(row: AdapterVersion, tenant: str, silo: str, library: str) -> AdapterVersionInfo:
        return AdapterVersionInfo(
            row.id, tenant, silo, library, row.number, row.status, dict(row.manifest), dict(row.config),
            dict(row.metrics), row.created_at, row.activated_at, row.retired_at, row.destroyed_at,
        )

    def _read_versions(self, session: Session, actor: Principal, version_ids: Iterable[int]) -> _VersionRows:
        """Read versions by id with everything :meth:`_require_visible` checks, in five queries per 5,000 ids.

        Ids of missing versions are left out. The caller's permissions are read only when it does
        not administer every silo read.
        """
        versions = _rows_by_id(session, AdapterVersion, version_ids)
        tenants = _rows_by_id(session, Tenant, {version.tenant_id for version in versions.values()})
        silos = _rows_by_id(session, Silo, {version.silo_id for version in versions.values()})
        libraries = _rows_by_id(session, LibraryRow, {version.library_id for version in versions.values()})
        granted: dict[int, frozenset[Permission]] = {}
        if any(not self._is_admin_of(actor, silo.tenant_id) for silo in silos.values()):
            granted = access.silo_permissions(session, actor.id, actor.tenant_id)
        return _VersionRows(versions, tenants, silos, libraries, granted)

    def _require_visible(
        self, actor: Principal, rows: _VersionRows, version_id: int, permission: Permission
    ) -> tuple[AdapterVersion, Tenant, Silo, LibraryRow]:
        """Return a version of ``rows`` on whose silo the caller has ``permission``.

        Raises :class:`NotFoundError` for a missing version, another tenant's version (unless the
        caller is a registry admin) and a version of a silo the caller has no grant on, so the
        caller cannot distinguish these cases. Raises :class:`PermissionDeniedError` when the caller's
        grants on the silo do not include ``permission``. Tenant admins hold every permission on
        their tenant's silos (:meth:`_check_silo_grants`, shared with ``_require_silo_permission``).
        """
        not_found = f"adapter version {version_id} not found; list versions with `seqr adapter list`"
        version = rows.versions.get(version_id)
        if version is None or not (actor.role is Role.REGISTRY_ADMIN or version.tenant_id == actor.tenant_id):
            raise NotFoundError(not_found)
        tenant = rows.tenants[version.tenant_id]
        silo = rows.silos[version.silo_id]
        library = rows.libraries[version.library_id]
        try:
            self._check_silo_grants(actor, silo, tenant, permission, rows.granted.get(silo.id, frozenset()))
        except NotFoundError as error:
            raise NotFoundError(not_found) from error
        return version, tenant, silo, library

    def _visible_version(
        self, session: Session, actor: Principal, version_id: int, permission: Permission
    ) -> tuple[AdapterVersion, Tenant, Silo, LibraryRow]:
        """Load a version on whose silo the caller has ``permission``; see :meth:`_require_visible`."""
        return self._require_visible(actor, self._read_versions(session, actor, [version_id]), version_id, permission)

    def activate_adapter_version(self, actor: Principal, version_id: int) -> AdapterVersionInfo:
        """Make a version active and retire the silo's previously active version of that library.

        Both happen in one transaction, so a reader sees exactly one active version at any time."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            version, tenant, silo, library = self._visible_version(session, actor, version_id, Permission.ADMIN)
            if version.status not in (AdapterStatus.TRAINING, AdapterStatus.RETIRED):
                raise ConflictError(f"adapter version {version_id} is {version.status.value}; only training or retired versions can be activated")
            now = self.clock()
            for previous in session.scalars(select(AdapterVersion).where(
                AdapterVersion.silo_id == silo.id, AdapterVersion.library_id == library.id,
                AdapterVersion.status == AdapterStatus.ACTIVE,
            )):
                previous.status, previous.retired_at = AdapterStatus.RETIRED, now
                self._audit(session, state, actor, AuditAction.ADAPTER_RETIRE,
                            self._version_target(tenant, silo, library.name, previous.number), tenant_id=tenant.id)
            version.status, version.activated_at, version.retired_at = AdapterStatus.ACTIVE, now, None
            state.generation += 1
            self._audit(session, state, actor, AuditAction.ADAPTER_ACTIVATE,
                        self._version_target(tenant, silo, library.name, version.number), tenant_id=tenant.id)
            return self._version_info(version, tenant.name, silo.name, library.name)

    def retire_adapter_version(self, actor: Principal, version_id: int) -> AdapterVersionInfo:
        with self._write() as (session, state):
            self._check_actor(session, actor)
            version, tenant, silo, library = self._visible_version(session, actor, version_id, Permission.ADMIN)
            if version.status not in (AdapterStatus.TRAINING, AdapterStatus.ACTIVE):
                raise ConflictError(f"adapter version {version_id} is already {version.status.value}")
            version.status, version.retired_at = AdapterStatus.RETIRED, self.clock()
            state.generation += 1
            self._audit(session, state, actor, AuditAction.ADAPTER_RETIRE,
                        self._version_target(tenant, silo, library.name, version.number), tenant_id=tenant.id)
            return self._version_info(version, tenant.name, silo.name, library.name)

    def destroy_adapter_version(self, actor: Principal, version_id: int) -> AdapterVersionInfo:
        """Crypto-shred a version that is not active: mark it destroyed, delete its shred key from the
        key store, then delete its blobs and wrapped data key. Rerunning finishes an interrupted destroy."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            version, tenant, silo, library = self._visible_version(session, actor, version_id, Permission.ADMIN)
            if version.status is AdapterStatus.ACTIVE:
                raise ConflictError(
                    f"adapter version {version_id} is active; activate another version or retire it before destroying it"
                )
            if version.status is not AdapterStatus.DESTROYED:
                version.status, version.destroyed_at = AdapterStatus.DESTROYED, self.clock()
                state.generation += 1
                self._audit(session, state, actor, AuditAction.ADAPTER_DESTROY,
                            self._version_target(tenant, silo, library.name, version.number), tenant_id=tenant.id)
            info = self._version_info(version, tenant.name, silo.name, library.name)
        self.finish_destruction()
        return info

    def list_adapter_versions(
        self,
        actor: Principal,
        *,
        tenant: str | None = None,
        silo: str | None = None,
        status: AdapterStatus | None = None,
    ) -> list[AdapterVersionInfo]:
        """Return versions of the tenant's silos: all for tenant admins, else those of silos the caller has a grant on."""
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            query = (
                select(AdapterVersion, Silo.name, LibraryRow.name)
                .join(Silo, Silo.id == AdapterVersion.silo_id)
                .join(LibraryRow, LibraryRow.id == AdapterVersion.library_id)
                .where(AdapterVersion.tenant_id == tenant_row.id)
                .order_by(AdapterVersion.id)
            )
            if silo is not None:
                query = query.where(Silo.name == silo)
            if status is not None:
                query = query.where(AdapterVersion.status == status)
            if not self._is_admin_of(actor, tenant_row.id):
                query = query.where(AdapterVersion.silo_id.in_(access.silo_permissions(session, actor.id, actor.tenant_id)))
            return [self._version_info(row, tenant_row.name, silo_name, library_name)
                    for row, silo_name, library_name in session.execute(query)]

    # Resolution and loading --------------------------------------------------------------

    def authorized_adapters(self, actor: Principal) -> list[AdapterVersionInfo]:
        """Return the active versions the caller may route among (see :mod:`seqr.policies.access`).

        The returned ``manifest``, ``config`` and ``metrics`` are always empty because routing does
        not need them. Even empty, decoding them doubled the time of this read for 10,000 silos
        (benchmarks/bench_resolve.py). Read them with :meth:`list_adapter_versions` or
        :meth:`load_adapter`.
        """
        with self._read() as session:
            self._check_actor(session, actor)
            rows = access.authorized_adapter_versions(session, actor.id, actor.tenant_id)
            # Unpacked by position because attribute access on a Row took more than half of this
            # loop's time for 10,000 rows (2-core benchmark machine).
            return [
                AdapterVersionInfo(
                    version_id, actor.tenant, silo, library, number, status, {}, {}, {},
                    created_at, activated_at, retired_at, destroyed_at,
                )
                for version_id, silo, library, number, status, created_at, activated_at, retired_at, destroyed_at in rows
            ]

    def load_adapter(self, actor: Principal, version_id: int) -> LoadedAdapter:
        """Decrypt one version's factors.

        An active version needs the use permission; a training or retired one needs train. Only
        this version's data key is unwrapped. Raises :class:`IntegrityError` (and records it in
        the audit log) when any stored byte fails verification; nothing is returned then.
        """
        return self.load_adapters(actor, [version_id])[0]

    def load_adapters(self, actor: Principal, version_ids: Sequence[int]) -> list[LoadedAdapter]:
        """Decrypt several versions' factors in one read transaction, in the order given.

        Each version is checked as in :meth:`load_adapter`, in the order given, and the first
        version that fails raises its error; nothing is returned then. The versions, their
        tenants, silos and libraries and the caller's permissions are read up front with a fixed
        number of queries (five per 5,000 ids), so the checks run no query per version. A
        library's module names are decoded once per call rather than once per version: that
        decoding took about a quarter of each version's load in benchmarks/bench_cold_start.py.
        """
        loaded: list[LoadedAdapter] = []
        library_modules: dict[int, set[str]] = {}
        with self._read() as session:
            self._check_actor(session, actor)
            rows = self._read_versions(session, actor, version_ids)
            for version_id in version_ids:
                version = rows.versions.get(version_id)
                needed = Permission.USE if version is not None and version.status is AdapterStatus.ACTIVE else Permission.TRAIN
                version, tenant, silo, library = self._require_visible(actor, rows, version_id, needed)
                if version.status is AdapterStatus.DESTROYED:
                    raise NotFoundError(f"adapter version {version_id} was destroyed; load the silo's active version instead")
                context = KeyContext(tenant.id, silo.id, OwnerKind.ADAPTER_VERSION, version.id, key_ref="")
                target = self._version_target(tenant, silo, library.name, version.number)
                try:
                    if library.id not in library_modules:
                        library_modules[library.id] = self._library_modules(library)
                    payload = self._open_blobs(session, context, (BlobField.FACTORS,))[BlobField.FACTORS]
                    factors = codec.decode_factors(payload, rank=library.rank, modules=library_modules[library.id])
                except (IntegrityError, AdapterFormatError) as error:
                    failure = error
                    break
                loaded.append(LoadedAdapter(self._version_info(version, tenant.name, silo.name, library.name), factors))
            else:
                return loaded
        self._record_integrity_failure(actor, target, failure)
        if isinstance(failure, AdapterFormatError):
            raise IntegrityError(f"{target} decrypted but its factors are invalid: {failure}") from failure
        raise failure

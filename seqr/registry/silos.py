"""Silos and grants."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from seqr.errors import ConflictError, InvalidInputError, NotFoundError
from seqr.policies import access
from seqr.registry.enums import AuditAction, Permission
from seqr.registry.identity import IdentityMixin, check_name
from seqr.registry.models import Grant, Group, Silo, Tenant
from seqr.registry.models import Principal as PrincipalRow
from seqr.registry.views import GrantInfo, Principal, SiloInfo


class SiloMixin(IdentityMixin):
    def create_silo(self, actor: Principal, name: str, *, tenant: str | None = None) -> SiloInfo:
        check_name("silo", name)
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "create silos")
            if session.scalars(select(Silo.id).where(Silo.tenant_id == tenant_row.id, Silo.name == name)).first():
                raise ConflictError(f"silo {name!r} already exists in tenant {tenant_row.name!r}")
            silo = Silo(tenant_id=tenant_row.id, name=name, created_at=self.clock())
            session.add(silo)
            session.flush()
            state.generation += 1
            self._audit(session, state, actor, AuditAction.SILO_CREATE, f"silo {tenant_row.name}/{name}", tenant_id=tenant_row.id)
            return SiloInfo(silo.id, tenant_row.name, name, silo.created_at)

    def list_silos(self, actor: Principal, *, tenant: str | None = None) -> list[SiloInfo]:
        """Return every silo of the tenant for its admins, and for anyone else the silos it has a grant on."""
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            query = select(Silo).where(Silo.tenant_id == tenant_row.id).order_by(Silo.name)
            if not self._is_admin_of(actor, tenant_row.id):
                query = query.where(Silo.id.in_(access.silo_permissions(session, actor.id, actor.tenant_id)))
            return [SiloInfo(s.id, tenant_row.name, s.name, s.created_at) for s in session.scalars(query)]

    def _grantee(
        self, session: Session, tenant: Tenant, principal: str | None, group: str | None
    ) -> tuple[PrincipalRow | None, Group | None]:
        if (principal is None) == (group is None):
            raise InvalidInputError("name exactly one grantee: a principal (--user) or a group (--group)")
        if principal is not None:
            return self._principal(session, tenant, principal), None
        assert group is not None
        return None, self._group(session, tenant, group)

    def grant(
        self,
        actor: Principal,
        silo: str,
        permission: Permission = Permission.USE,
        *,
        principal: str | None = None,
        group: str | None = None,
        tenant: str | None = None,
    ) -> GrantInfo:
        """Grant ``permission`` on a silo to one principal or one group of the same tenant."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            silo_row = self._silo(session, tenant_row, silo)
            self._require_silo_permission(session, actor, silo_row, tenant_row, Permission.ADMIN)
            principal_row, group_row = self._grantee(session, tenant_row, principal, group)
            existing = self._find_grant(session, silo_row, permission, principal_row, group_row)
            if existing is not None:
                raise ConflictError(f"{self._grantee_text(principal, group)} already has {permission.value} on silo {silo!r}")
            row = Grant(
                tenant_id=tenant_row.id,
                silo_id=silo_row.id,
                principal_id=principal_row.id if principal_row else None,
                group_id=group_row.id if group_row else None,
                permission=permission,
                created_at=self.clock(),
            )
            session.add(row)
            session.flush()
            state.generation += 1
            self._audit(
                session, state, actor, AuditAction.GRANT, f"silo {tenant_row.name}/{silo}", tenant_id=tenant_row.id,
                detail={"permission": permission.value, "grantee": self._grantee_text(principal, group)},
            )
            return GrantInfo(row.id, tenant_row.name, silo, permission, principal, group)

    def revoke(
        self,
        actor: Principal,
        silo: str,
        permission: Permission = Permission.USE,
        *,
        principal: str | None = None,
        group: str | None = None,
        tenant: str | None = None,
    ) -> GrantInfo:
        """Remove a grant; the grantee loses the permission on its next request."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            silo_row = self._silo(session, tenant_row, silo)
            self._require_silo_permission(session, actor, silo_row, tenant_row, Permission.ADMIN)
            principal_row, group_row = self._grantee(session, tenant_row, principal, group)
            row = self._find_grant(session, silo_row, permission, principal_row, group_row)
            if row is None:
                raise NotFoundError(f"{self._grantee_text(principal, group)} has no {permission.value} grant on silo {silo!r}")
            info = GrantInfo(row.id, tenant_row.name, silo, permission, principal, group)
            session.delete(row)
            state.generation += 1
            self._audit(
                session, state, actor, AuditAction.REVOKE, f"silo {tenant_row.name}/{silo}", tenant_id=tenant_row.id,
                detail={"permission": permission.value, "grantee": self._grantee_text(principal, group)},
            )
            return info

    def list_grants(self, actor: Principal, *, silo: str | None = None, tenant: str | None = None) -> list[GrantInfo]:
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "list grants")
            query = (
                select(Grant, Silo.name, PrincipalRow.name, Group.name)
                .join(Silo, Silo.id == Grant.silo_id)
                .outerjoin(PrincipalRow, PrincipalRow.id == Grant.principal_id)
                .outerjoin(Group, Group.id == Grant.group_id)
                .where(Grant.tenant_id == tenant_row.id)
                .order_by(Grant.id)
            )
            if silo is not None:
                query = query.where(Silo.name == silo)
            return [
                GrantInfo(grant.id, tenant_row.name, silo_name, grant.permission, principal_name, group_name)
                for grant, silo_name, principal_name, group_name in session.execute(query)
            ]

    @staticmethod
    def _find_grant(
        session: Session, silo: Silo, permission: Permission, principal: PrincipalRow | None, group: Group | None
    ) -> Grant | None:
        query = select(Grant).where(Grant.silo_id == silo.id, Grant.permission == permission)
        if principal is not None:
            query = query.where(Grant.principal_id == principal.id)
        else:
            assert group is not None
            query = query.where(Grant.group_id == group.id)
        return session.scalars(query).first()

    @staticmethod
    def _grantee_text(principal: str | None, group: str | None) -> str:
        return f"principal {principal}" if principal is not None else f"group {group}"

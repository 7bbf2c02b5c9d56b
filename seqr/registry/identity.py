"""Tenants, principals, tokens, groups and authentication."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from seqr.errors import AuthenticationError, ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from seqr.registry import tokens
from seqr.registry.core import RegistryCore
from seqr.registry.enums import AuditAction, Outcome, PrincipalKind, Role
from seqr.registry.models import Group, Membership, Tenant, Token
from seqr.registry.models import Principal as PrincipalRow
from seqr.registry.views import CreatedToken, GroupInfo, Principal, PrincipalInfo, TenantInfo, TokenInfo

logger = logging.getLogger(__name__)


def check_name(kind: str, name: str) -> str:
    """Names are 1-128 printable characters without '/' (which separates tenant and name in output)."""
    if not name or len(name) > 128 or "/" in name or not name.isprintable() or name != name.strip():
        raise InvalidInputError(
            f"invalid {kind} name {name!r}: use 1-128 printable characters, no '/' and no surrounding spaces"
        )
    return name


def _principal_info(row: PrincipalRow, tenant: str) -> PrincipalInfo:
    return PrincipalInfo(row.id, tenant, row.name, row.kind, row.role, row.disabled, row.created_at)


def token_info(row: Token, principal: PrincipalRow, tenant: str) -> TokenInfo:
    return TokenInfo(row.public_id, tenant, principal.name, row.created_at, row.expires_at, row.revoked_at, row.last_used_at)


class IdentityMixin(RegistryCore):
    # Authentication ----------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        """Return the principal a token belongs to, or raise :class:`AuthenticationError`.

        A malformed token (wrong prefix, length or checksum) is rejected before any database query
        and is not audited; every other attempt appends a login event.
        """
        digest = tokens.check_format(token)
        now = self.clock()
        failure: str | None = None
        principal: Principal | None = None
        with self._write() as (session, state):
            row = session.scalars(select(Token).where(Token.digest == digest)).one_or_none()
            owner = session.get(PrincipalRow, row.principal_id) if row is not None else None
            if row is None or owner is None or not tokens.digests_match(row.digest, digest):
                failure = "unknown token"
            elif row.revoked_at is not None:
                failure = "token revoked"
            elif row.expires_at is not None and row.expires_at <= now:
                failure = "token expired"
            elif owner.disabled:
                failure = "principal disabled"
            if failure is not None or row is None or owner is None:
                target = f"token {row.public_id}" if row is not None else "token"
                self._audit(
                    session, state, "anonymous", AuditAction.LOGIN, target,
                    outcome=Outcome.FAILURE, tenant_id=owner.tenant_id if owner else None,
                    detail={"reason": failure},
                )
            else:
                tenant = session.get(Tenant, owner.tenant_id)
                assert tenant is not None  # foreign key
                row.last_used_at = now
                principal = Principal(owner.id, owner.name, tenant.id, tenant.name, owner.kind, owner.role, row.id)
                self._audit(session, state, principal, AuditAction.LOGIN, f"token {row.public_id}")
        if principal is None:
            logger.info("login rejected: %s", failure)
            raise AuthenticationError(f"authentication failed ({failure}); create a new token with `seqr token create`")
        return principal

    # Tenants -----------------------------------------------------------------------------

    def create_tenant(self, actor: Principal, name: str) -> TenantInfo:
        check_name("tenant", name)
        with self._write() as (session, state):
            self._check_actor(session, actor)
            if actor.role is not Role.REGISTRY_ADMIN:
                raise PermissionDeniedError(f"{actor.describe()} may not create tenants: it needs the registry_admin role")
            if session.scalars(select(Tenant.id).where(Tenant.name == name)).first() is not None:
                raise ConflictError(f"tenant {name!r} already exists")
            tenant = Tenant(name=name, created_at=self.clock())
            session.add(tenant)
            session.flush()
            state.generation += 1
            self._audit(session, state, actor, AuditAction.TENANT_CREATE, f"tenant {name}", tenant_id=tenant.id)
            return TenantInfo(tenant.id, tenant.name, tenant.created_at)

    def list_tenants(self, actor: Principal) -> list[TenantInfo]:
        """Return every tenant for a registry admin, and only the caller's own tenant for anyone else."""
        with self._read() as session:
            self._check_actor(session, actor)
            query = select(Tenant).order_by(Tenant.name)
            if actor.role is not Role.REGISTRY_ADMIN:
                query = query.where(Tenant.id == actor.tenant_id)
            return [TenantInfo(t.id, t.name, t.created_at) for t in session.scalars(query)]

    # Principals --------------------------------------------------------------------------

    def create_principal(
        self,
        actor: Principal,
        name: str,
        *,
        tenant: str | None = None,
        kind: PrincipalKind = PrincipalKind.USER,
        role: Role = Role.MEMBER,
    ) -> PrincipalInfo:
        check_name("principal", name)
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "create principals")
            if role is Role.REGISTRY_ADMIN and actor.role is not Role.REGISTRY_ADMIN:
                raise PermissionDeniedError("only a registry admin may create another registry admin")
            if self._find_principal(session, tenant_row, name) is not None:
                raise ConflictError(f"principal {name!r} already exists in tenant {tenant_row.name!r}")
            row = PrincipalRow(tenant_id=tenant_row.id, name=name, kind=kind, role=role, disabled=False, created_at=self.clock())
            session.add(row)
            session.flush()
            state.generation += 1
            self._audit(
                session, state, actor, AuditAction.PRINCIPAL_CREATE, f"principal {tenant_row.name}/{name}",
                tenant_id=tenant_row.id, detail={"kind": kind.value, "role": role.value},
            )
            return _principal_info(row, tenant_row.name)

    def set_principal_disabled(self, actor: Principal, name: str, disabled: bool, *, tenant: str | None = None) -> PrincipalInfo:
        """Disable (or re-enable) a principal; its tokens stop working on the next request."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "disable principals")
            row = self._principal(session, tenant_row, name)
            self._require_rank(actor, row, "disable or enable")
            if row.id == actor.id and disabled:
                raise ConflictError("a principal may not disable itself; ask another admin")
            row.disabled = disabled
            state.generation += 1
            action = AuditAction.PRINCIPAL_DISABLE if disabled else AuditAction.PRINCIPAL_ENABLE
            self._audit(session, state, actor, action, f"principal {tenant_row.name}/{name}", tenant_id=tenant_row.id)
            return _principal_info(row, tenant_row.name)

    def list_principals(self, actor: Principal, *, tenant: str | None = None) -> list[PrincipalInfo]:
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "list principals")
            rows = session.scalars(select(PrincipalRow).where(PrincipalRow.tenant_id == tenant_row.id).order_by(PrincipalRow.name))
            return [_principal_info(row, tenant_row.name) for row in rows]

    @staticmethod
    def _find_principal(session: Session, tenant: Tenant, name: str) -> PrincipalRow | None:
        return session.scalars(
            select(PrincipalRow).where(PrincipalRow.tenant_id == tenant.id, PrincipalRow.name == name)
        ).one_or_none()

    def _principal(self, session: Session, tenant: Tenant, name: str) -> PrincipalRow:
        row = self._find_principal(session, tenant, name)
        if row is None:
            raise NotFoundError(f"principal {name!r} not found in tenant {tenant.name!r}")
        return row

    # Tokens ------------------------------------------------------------------------------

    def create_token(
        self,
        actor: Principal,
        principal: str | None = None,
        *,
        tenant: str | None = None,
        expires_in: timedelta | None = None,
    ) -> CreatedToken:
        """Create a token for ``principal`` (default: the caller). The secret is returned only here."""
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInputError(f"token lifetime {expires_in} is not positive; pass a duration such as 30d")
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            owner = self._principal(session, tenant_row, principal or actor.name)
            if owner.id != actor.id:
                self._require_admin(actor, tenant_row, "create tokens for other principals")
                self._require_rank(actor, owner, "create a token for")
            row, secret = self._issue_token(session, owner, expires_in)
            state.generation += 1
            self._audit(
                session, state, actor, AuditAction.TOKEN_CREATE, f"token {row.public_id} of {tenant_row.name}/{owner.name}",
                tenant_id=tenant_row.id,
            )
            return CreatedToken(secret, token_info(row, owner, tenant_row.name))

    def _issue_token(self, session: Session, owner: PrincipalRow, expires_in: timedelta | None) -> tuple[Token, str]:
        """Insert a token row for ``owner``; return the row and the secret (not stored)."""
        issued = tokens.generate()
        now = self.clock()
        row = Token(
            principal_id=owner.id,
            digest=issued.digest,
            public_id=issued.public_id,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
        )
        session.add(row)
        session.flush()
        return row, issued.secret

    def revoke_token(self, actor: Principal, public_id: str) -> TokenInfo:
        """Revoke a token by its public id: the caller's own, or any in a tenant it administers."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            row = session.scalars(select(Token).where(Token.public_id == public_id)).one_or_none()
            owner = session.get(PrincipalRow, row.principal_id) if row is not None else None
            visible = owner is not None and (owner.id == actor.id or self._is_admin_of(actor, owner.tenant_id))
            if row is None or owner is None or not visible:
                raise NotFoundError(f"token {public_id!r} not found; list tokens with `seqr token list`")
            self._require_rank(actor, owner, "revoke a token of")
            tenant_row = session.get(Tenant, owner.tenant_id)
            assert tenant_row is not None
            if row.revoked_at is None:
                row.revoked_at = self.clock()
                state.generation += 1
                self._audit(
                    session, state, actor, AuditAction.TOKEN_REVOKE, f"token {public_id} of {tenant_row.name}/{owner.name}",
                    tenant_id=owner.tenant_id,
                )
            return token_info(row, owner, tenant_row.name)

    def list_tokens(self, actor: Principal, principal: str | None = None, *, tenant: str | None = None) -> list[TokenInfo]:
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            query = select(Token, PrincipalRow).join(PrincipalRow, PrincipalRow.id == Token.principal_id)
            query = query.where(PrincipalRow.tenant_id == tenant_row.id)
            if principal is not None:
                query = query.where(PrincipalRow.name == principal)
            if not self._is_admin_of(actor, tenant_row.id):
                query = query.where(PrincipalRow.id == actor.id)
            rows = session.execute(query.order_by(Token.id)).all()
            return [token_info(token, owner, tenant_row.name) for token, owner in rows]

    # Groups ------------------------------------------------------------------------------

    def create_group(self, actor: Principal, name: str, *, tenant: str | None = None) -> GroupInfo:
        check_name("group", name)
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "create groups")
            if session.scalars(select(Group.id).where(Group.tenant_id == tenant_row.id, Group.name == name)).first():
                raise ConflictError(f"group {name!r} already exists in tenant {tenant_row.name!r}")
            group = Group(tenant_id=tenant_row.id, name=name, created_at=self.clock())
            session.add(group)
            session.flush()
            state.generation += 1
            self._audit(session, state, actor, AuditAction.GROUP_CREATE, f"group {tenant_row.name}/{name}", tenant_id=tenant_row.id)
            return GroupInfo(group.id, tenant_row.name, name, [])

    def _group(self, session: Session, tenant: Tenant, name: str) -> Group:
        group = session.scalars(select(Group).where(Group.tenant_id == tenant.id, Group.name == name)).one_or_none()
        if group is None:
            raise NotFoundError(f"group {name!r} not found in tenant {tenant.name!r}")
        return group

    def set_group_member(
        self, actor: Principal, group: str, principal: str, member: bool, *, tenant: str | None = None
    ) -> GroupInfo:
        """Add (``member=True``) or remove a principal of the same tenant to or from a group."""
        with self._write() as (session, state):
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "change group membership")
            group_row = self._group(session, tenant_row, group)
            principal_row = self._principal(session, tenant_row, principal)
            existing = session.get(Membership, (group_row.id, principal_row.id))
            if member and existing is None:
                session.add(Membership(group_id=group_row.id, principal_id=principal_row.id))
            elif not member and existing is not None:
                session.delete(existing)
            elif not member:
                raise NotFoundError(f"principal {principal!r} is not a member of group {group!r}")
            session.flush()
            state.generation += 1
            action = AuditAction.GROUP_ADD if member else AuditAction.GROUP_REMOVE
            self._audit(
                session, state, actor, action, f"group {tenant_row.name}/{group}",
                tenant_id=tenant_row.id, detail={"principal": principal},
            )
            return self._group_info(session, tenant_row, group_row)

    def list_groups(self, actor: Principal, *, tenant: str | None = None) -> list[GroupInfo]:
        with self._read() as session:
            self._check_actor(session, actor)
            tenant_row = self._tenant(session, actor, tenant)
            self._require_admin(actor, tenant_row, "list groups")
            groups = session.scalars(select(Group).where(Group.tenant_id == tenant_row.id).order_by(Group.name))
            return [self._group_info(session, tenant_row, group) for group in groups]

    @staticmethod
    def _group_info(session: Session, tenant: Tenant, group: Group) -> GroupInfo:
        members = session.scalars(
            select(PrincipalRow.name)
            .join(Membership, Membership.principal_id == PrincipalRow.id)
            .where(Membership.group_id == group.id)
            .order_by(PrincipalRow.name)
        )
        return GroupInfo(group.id, tenant.name, group.name, list(members))

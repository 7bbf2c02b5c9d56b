"""Access resolution: which silos and adapter versions a principal may use. Deny by default.

A principal holds a permission on a silo when a grant names it directly, or names a group it is a
member of. Only grants, groups and silos of the principal's own tenant count, and a disabled
principal holds nothing. ``admin`` implies ``train`` and ``use`` (see
:meth:`seqr.registry.enums.Permission.implied_by`). Roles (tenant or registry admin) administer
but do not by themselves allow using an adapter.

Every function reads the database in the caller's transaction, so a change to a grant, a
membership or a principal is seen by the next request; nothing is cached here.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from seqr.registry.enums import AdapterStatus, Permission
from seqr.registry.models import AdapterVersion, Grant, Group, Membership, Principal, Silo


def silo_permissions(session: Session, principal_id: int, tenant_id: int) -> dict[int, frozenset[Permission]]:
    """Return silo id -> permissions granted to the principal, directly or through its groups."""
    principal = session.get(Principal, principal_id)
    if principal is None or principal.disabled or principal.tenant_id != tenant_id:
        return {}
    group_ids = (
        select(Membership.group_id)
        .join(Group, Group.id == Membership.group_id)
        .where(Membership.principal_id == principal_id, Group.tenant_id == tenant_id)
    )
    rows = session.execute(
        select(Grant.silo_id, Grant.permission)
        .join(Silo, Silo.id == Grant.silo_id)
        .where(
            Grant.tenant_id == tenant_id,
            Silo.tenant_id == tenant_id,
            or_(Grant.principal_id == principal_id, Grant.group_id.in_(group_ids)),
        )
    ).all()
    held: dict[int, set[Permission]] = defaultdict(set)
    for silo_id, permission in rows:
        held[silo_id].add(Permission(permission))
    return {silo_id: frozenset(permissions) for silo_id, permissions in held.items()}


def permitted_silo_ids(session: Session, principal_id: int, tenant_id: int, permission: Permission) -> set[int]:
    accepted = permission.implied_by()
    return {
        silo_id
        for silo_id, held in silo_permissions(session, principal_id, tenant_id).items()
        if held & accepted
    }


def authorized_adapter_versions(session: Session, principal_id: int, tenant_id: int) -> list[AdapterVersion]:
    """Return the active adapter versions of the silos the principal may use, ordered by id.

    This is the one place that decides which adapters a principal's requests can route among.
    """
    silo_ids = permitted_silo_ids(session, principal_id, tenant_id, Permission.USE)
    if not silo_ids:
        return []
    return list(
        session.scalars(
            select(AdapterVersion)
            .where(
                AdapterVersion.tenant_id == tenant_id,
                AdapterVersion.status == AdapterStatus.ACTIVE,
                AdapterVersion.silo_id.in_(silo_ids),
            )
            .order_by(AdapterVersion.id)
        )
    )

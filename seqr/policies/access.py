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
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, or_, select
from sqlalchemy.orm import Session

from seqr.registry.enums import AdapterStatus, Permission
from seqr.registry.models import AdapterVersion, Grant, Group, Library, Membership, Principal, Silo


def _is_enabled_member(session: Session, principal_id: int, tenant_id: int) -> bool:
    principal = session.get(Principal, principal_id)
    return principal is not None and not principal.disabled and principal.tenant_id == tenant_id


def _grants(principal_id: int, tenant_id: int, *columns: Any) -> Select[Any]:
    """Select ``columns`` of the tenant's grants to the principal or to a group it is a member of."""
    group_ids = (
        select(Membership.group_id)
        .join(Group, Group.id == Membership.group_id)
        .where(Membership.principal_id == principal_id, Group.tenant_id == tenant_id)
    )
    return (
        select(*columns)
        .join(Silo, Silo.id == Grant.silo_id)
        .where(
            Grant.tenant_id == tenant_id,
            Silo.tenant_id == tenant_id,
            or_(Grant.principal_id == principal_id, Grant.group_id.in_(group_ids)),
        )
    )


def silo_permissions(session: Session, principal_id: int, tenant_id: int) -> dict[int, frozenset[Permission]]:
    """Return silo id -> permissions granted to the principal, directly or through its groups."""
    if not _is_enabled_member(session, principal_id, tenant_id):
        return {}
    rows = session.execute(_grants(principal_id, tenant_id, Grant.silo_id, Grant.permission)).all()
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


AuthorizedVersion = Row[int, str, str, int, AdapterStatus, datetime, datetime | None, datetime | None, datetime | None]
"""One active version as :func:`authorized_adapter_versions` returns it: ``id``, ``silo`` (name),
``library`` (name), ``number``, ``status``, ``created_at``, ``activated_at``, ``retired_at`` and
``destroyed_at``."""


def authorized_adapter_versions(session: Session, principal_id: int, tenant_id: int) -> Sequence[AuthorizedVersion]:
    """Return the active adapter versions of the silos the principal may use, ordered by id.

    This is the one place that decides which adapters a principal's requests can route among.
    It runs one query after the principal check. The query reads only the columns named by
    :data:`AuthorizedVersion`, never the JSON columns (manifest, config, metrics), because an
    ORM object per version and their JSON decoding took most of the time with thousands of
    silos.
    """
    if not _is_enabled_member(session, principal_id, tenant_id):
        return []
    usable_silo_ids = _grants(principal_id, tenant_id, Grant.silo_id).where(
        Grant.permission.in_(Permission.USE.implied_by())
    )
    return session.execute(
        select(
            AdapterVersion.id,
            Silo.name.label("silo"),
            Library.name.label("library"),
            AdapterVersion.number,
            AdapterVersion.status,
            AdapterVersion.created_at,
            AdapterVersion.activated_at,
            AdapterVersion.retired_at,
            AdapterVersion.destroyed_at,
        )
        .join(Silo, Silo.id == AdapterVersion.silo_id)
        .join(Library, Library.id == AdapterVersion.library_id)
        .where(
            AdapterVersion.tenant_id == tenant_id,
            AdapterVersion.status == AdapterStatus.ACTIVE,
            AdapterVersion.silo_id.in_(usable_silo_ids),
        )
        .order_by(AdapterVersion.id)
    ).all()

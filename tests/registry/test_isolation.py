"""Isolation: random tenants, principals, groups and grants against a reference model.

Every principal's authorised set must equal the set computed from the grants by hand, and no
listing or error may reveal another tenant's silos, adapters, documents or their counts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqr.errors import NotFoundError, PermissionDeniedError, RegistryError
from seqr.registry import Permission, Principal, Role

from registry_helpers import World, add_tenant, make_factors

SILO_STATES = ("none", "training", "active", "replaced")
_counter = itertools.count()


@dataclass
class TenantSpec:
    principals: int
    groups: int
    silos: list[str]  # one of SILO_STATES per silo
    memberships: set[tuple[int, int]]  # (group, principal)
    grants: set[tuple[int, tuple[str, int], Permission]]  # (silo, ("p"|"g", index), permission)


@dataclass
class Built:
    tenant: str
    principals: list[Principal] = field(default_factory=list)
    active: dict[int, int] = field(default_factory=dict)  # silo index -> active version id
    all_versions: set[int] = field(default_factory=set)
    documents: set[int] = field(default_factory=set)


@st.composite
def tenant_specs(draw: st.DrawFn) -> TenantSpec:
    principals = draw(st.integers(1, 3))
    groups = draw(st.integers(0, 2))
    silos = draw(st.lists(st.sampled_from(SILO_STATES), min_size=1, max_size=3))
    memberships: set[tuple[int, int]] = set()
    if groups:
        memberships = draw(st.sets(st.tuples(st.integers(0, groups - 1), st.integers(0, principals - 1)), max_size=4))
    grantees = [("p", index) for index in range(principals)] + [("g", index) for index in range(groups)]
    grants = draw(st.sets(
        st.tuples(st.integers(0, len(silos) - 1), st.sampled_from(grantees), st.sampled_from(list(Permission))),
        max_size=5,
    ))
    return TenantSpec(principals, groups, silos, memberships, grants)


def _build(world: World, spec: TenantSpec) -> Built:
    registry, admin = world.registry, world.admin
    name = f"t{next(_counter)}"
    add_tenant(registry, admin, name, silos=tuple(f"s{index}" for index in range(len(spec.silos))))
    built = Built(name)
    for index in range(spec.principals):
        built.principals.append(world.user(f"p{index}", tenant=name))
    for index in range(spec.groups):
        registry.create_group(admin, f"g{index}", tenant=name)
    for group, principal in spec.memberships:
        registry.set_group_member(admin, f"g{group}", f"p{principal}", True, tenant=name)
    for silo, (kind, index), permission in spec.grants:
        grantee = {"principal": f"p{index}"} if kind == "p" else {"group": f"g{index}"}
        registry.grant(admin, f"s{silo}", permission, tenant=name, **grantee)
    for silo, state in enumerate(spec.silos):
        if state == "none":
            continue
        first = registry.add_adapter_version(admin, f"s{silo}", "lib", make_factors(silo), tenant=name).id
        built.all_versions.add(first)
        if state in ("active", "replaced"):
            registry.activate_adapter_version(admin, first)
            built.active[silo] = first
        if state == "replaced":
            second = registry.add_adapter_version(admin, f"s{silo}", "lib", make_factors(silo + 10), tenant=name).id
            registry.activate_adapter_version(admin, second)
            built.all_versions.add(second)
            built.active[silo] = second
        built.documents.add(registry.add_document(admin, f"s{silo}", b"doc", tenant=name).id)
    return built


def _reference(spec: TenantSpec, built: Built, principal: int) -> set[int]:
    """Active versions of silos granted use or admin to the principal directly or via a group."""
    groups = {group for group, member in spec.memberships if member == principal}
    allowed = set()
    for silo, (kind, index), permission in spec.grants:
        mine = (kind == "p" and index == principal) or (kind == "g" and index in groups)
        if mine and permission in (Permission.USE, Permission.ADMIN) and silo in built.active:
            allowed.add(built.active[silo])
    return allowed


def _granted_silos(spec: TenantSpec, principal: int) -> set[str]:
    groups = {group for group, member in spec.memberships if member == principal}
    return {
        f"s{silo}" for silo, (kind, index), _ in spec.grants
        if (kind == "p" and index == principal) or (kind == "g" and index in groups)
    }


def _same_error_as_missing(call, missing_call) -> None:
    """The call on another tenant's object raises exactly what the call on a missing object raises."""
    with pytest.raises(RegistryError) as foreign:
        call()
    with pytest.raises(RegistryError) as missing:
        missing_call()
    assert type(foreign.value) is type(missing.value) is NotFoundError


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=st.lists(tenant_specs(), min_size=1, max_size=3))
def test_authorized_sets_match_reference(world: World, specs: list[TenantSpec]):
    registry = world.registry
    built = [_build(world, spec) for spec in specs]
    for spec, tenant in zip(specs, built, strict=True):
        others = [other for other in built if other is not tenant]
        foreign_versions = set().union(*(other.all_versions for other in others)) if others else set()
        foreign_documents = set().union(*(other.documents for other in others)) if others else set()
        for index, principal in enumerate(tenant.principals):
            authorized = {version.id for version in registry.authorized_adapters(principal)}
            assert authorized == _reference(spec, tenant, index)

            silos = registry.list_silos(principal)
            assert {silo.name for silo in silos} == _granted_silos(spec, index)
            assert {silo.tenant for silo in silos} <= {tenant.tenant}
            versions = registry.list_adapter_versions(principal)
            assert {version.tenant for version in versions} <= {tenant.tenant}
            assert not {version.id for version in versions} & foreign_versions
            assert [t.name for t in registry.list_tenants(principal)] == [tenant.tenant]

            for other in others:
                _same_error_as_missing(
                    lambda: registry.list_silos(principal, tenant=other.tenant),
                    lambda: registry.list_silos(principal, tenant="no-such-tenant"),
                )
                _same_error_as_missing(
                    lambda: registry.list_adapter_versions(principal, tenant=other.tenant),
                    lambda: registry.list_adapter_versions(principal, tenant="no-such-tenant"),
                )
            for version_id in foreign_versions:
                _same_error_as_missing(lambda: registry.load_adapter(principal, version_id),
                                       lambda: registry.load_adapter(principal, 10**9))
            for document_id in foreign_documents:
                _same_error_as_missing(lambda: registry.read_document(principal, document_id),
                                       lambda: registry.read_document(principal, 10**9))


def test_cross_tenant_grant_rejected(world: World):
    add_tenant(world.registry, world.admin, "globex")
    world.registry.create_principal(world.admin, "mallory", tenant="globex")
    with pytest.raises(NotFoundError):
        world.registry.grant(world.admin, "finance", Permission.USE, principal="mallory", tenant="acme")


def test_tenant_admin_confined_to_own_tenant(world: World):
    add_tenant(world.registry, world.admin, "globex")
    world.registry.create_principal(world.admin, "boss", tenant="acme", role=Role.TENANT_ADMIN)
    boss = world.registry.authenticate(world.registry.create_token(world.admin, "boss", tenant="acme").token)
    assert {silo.name for silo in world.registry.list_silos(boss)} == {"finance", "legal"}
    with pytest.raises(NotFoundError):
        world.registry.create_silo(boss, "stolen", tenant="globex")
    with pytest.raises(NotFoundError):
        world.registry.list_principals(boss, tenant="globex")
    with pytest.raises(PermissionDeniedError):
        world.registry.create_tenant(boss, "another")


def test_member_sees_forbidden_silo_as_missing(world: World):
    alice = world.user("alice")
    _same_error_as_missing(
        lambda: world.registry.list_documents(alice, "finance"),
        lambda: world.registry.list_documents(alice, "no-such-silo"),
    )


def test_tenant_admin_cannot_impersonate_registry_admin(world: World):
    """A tenant admin of the first admin's tenant may not mint tokens for, disable or revoke it."""
    world.registry.create_principal(world.admin, "deputy", tenant="default", role=Role.TENANT_ADMIN)
    deputy = world.registry.authenticate(world.registry.create_token(world.admin, "deputy", tenant="default").token)
    with pytest.raises(PermissionDeniedError, match="outranks"):
        world.registry.create_token(deputy, "admin")
    with pytest.raises(PermissionDeniedError, match="outranks"):
        world.registry.set_principal_disabled(deputy, "admin", True)
    admin_token = world.registry.list_tokens(world.admin, "admin")[0].public_id
    with pytest.raises(PermissionDeniedError, match="outranks"):
        world.registry.revoke_token(deputy, admin_token)
    with pytest.raises(PermissionDeniedError):
        world.registry.create_principal(deputy, "root2", role=Role.REGISTRY_ADMIN)

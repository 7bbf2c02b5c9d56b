"""Access resolution: deny by default, direct and group grants, tenant confinement, statuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from seqr.policies import access
from seqr.registry import Permission, Principal, Registry
from seqr.routing.factors import AdapterFactors, ModuleFactors

MODULE = "model.layers.0.mlp.down_proj"


def _factors(seed: int) -> AdapterFactors:
    generator = torch.Generator().manual_seed(seed)
    return AdapterFactors({MODULE: ModuleFactors.from_b(torch.randn(8, 2, generator=generator), mu=1.0, sigma=1.0)})


class Setup:
    def __init__(self, registry: Registry, admin: Principal) -> None:
        self.registry, self.admin = registry, admin
        for tenant in ("acme", "globex"):
            registry.create_tenant(admin, tenant)
            registry.add_library(
                admin, "lib", base_model_fingerprint="m", target_modules=["down_proj"], rank=2, alpha=4.0, seed=0,
                shared_a={MODULE: torch.randn(2, 8, generator=torch.Generator().manual_seed(1))}, tenant=tenant,
            )
            for silo in ("a", "b"):
                registry.create_silo(admin, silo, tenant=tenant)

    def user(self, name: str, tenant: str = "acme") -> Principal:
        self.registry.create_principal(self.admin, name, tenant=tenant)
        return self.registry.authenticate(self.registry.create_token(self.admin, name, tenant=tenant).token)

    def active(self, silo: str, tenant: str = "acme", seed: int = 0) -> int:
        version = self.registry.add_adapter_version(self.admin, silo, "lib", _factors(seed), tenant=tenant)
        return self.registry.activate_adapter_version(self.admin, version.id).id

    def resolved(self, principal: Principal) -> set[int]:
        with self.registry._read() as session:
            return {row.id for row in access.authorized_adapter_versions(session, principal.id, principal.tenant_id)}


@pytest.fixture
def setup(tmp_path: Path, database_url: str) -> Iterator[Setup]:
    registry, token = Registry.init(tmp_path / "registry", database_url)
    try:
        yield Setup(registry, registry.authenticate(token.token))
    finally:
        registry.close()


def test_no_grant_no_adapters(setup: Setup):
    setup.active("a")
    alice = setup.user("alice")
    assert setup.resolved(alice) == set()


def test_admin_role_alone_grants_no_use(setup: Setup):
    setup.active("a")
    assert setup.resolved(setup.admin) == set()


@pytest.mark.parametrize(
    ("permission", "usable"),
    [(Permission.USE, True), (Permission.ADMIN, True), (Permission.TRAIN, False)],
    ids=["use", "admin", "train"],
)
def test_direct_grant_permissions(setup: Setup, permission: Permission, usable: bool):
    version = setup.active("a")
    alice = setup.user("alice")
    setup.registry.grant(setup.admin, "a", permission, principal="alice", tenant="acme")
    assert setup.resolved(alice) == ({version} if usable else set())


def test_group_grant(setup: Setup):
    version = setup.active("b")
    bob = setup.user("bob")
    setup.registry.create_group(setup.admin, "team", tenant="acme")
    setup.registry.set_group_member(setup.admin, "team", "bob", True, tenant="acme")
    setup.registry.grant(setup.admin, "b", Permission.USE, group="team", tenant="acme")
    assert setup.resolved(bob) == {version}


def test_only_active_versions(setup: Setup):
    first = setup.active("a", seed=1)
    training = setup.registry.add_adapter_version(setup.admin, "a", "lib", _factors(2), tenant="acme").id
    alice = setup.user("alice")
    setup.registry.grant(setup.admin, "a", Permission.USE, principal="alice", tenant="acme")
    assert setup.resolved(alice) == {first}
    setup.registry.activate_adapter_version(setup.admin, training)
    assert setup.resolved(alice) == {training}
    setup.registry.retire_adapter_version(setup.admin, training)
    assert setup.resolved(alice) == set()


def test_other_tenant_grants_ignored(setup: Setup):
    setup.active("a", tenant="globex")
    alice = setup.user("alice")
    # Resolving alice against the other tenant's id finds nothing: grants are confined to her tenant.
    with setup.registry._read() as session:
        globex_id = setup.registry._tenant(session, setup.admin, "globex").id
        assert access.authorized_adapter_versions(session, alice.id, globex_id) == []


def test_disabled_principal_resolves_nothing(setup: Setup):
    setup.active("a")
    alice = setup.user("alice")
    setup.registry.grant(setup.admin, "a", Permission.USE, principal="alice", tenant="acme")
    setup.registry.set_principal_disabled(setup.admin, "alice", True, tenant="acme")
    assert setup.resolved(alice) == set()


def test_silo_permissions_combine_direct_and_group(setup: Setup):
    alice = setup.user("alice")
    setup.registry.create_group(setup.admin, "team", tenant="acme")
    setup.registry.set_group_member(setup.admin, "team", "alice", True, tenant="acme")
    setup.registry.grant(setup.admin, "a", Permission.USE, principal="alice", tenant="acme")
    setup.registry.grant(setup.admin, "a", Permission.TRAIN, group="team", tenant="acme")
    with setup.registry._read() as session:
        held = access.silo_permissions(session, alice.id, alice.tenant_id)
    assert list(held.values()) == [frozenset({Permission.USE, Permission.TRAIN})]

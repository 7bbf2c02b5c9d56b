"""A revoked token, a disabled principal or a removed grant is rejected on the very next request."""

from __future__ import annotations

import pytest

from seqr.errors import AuthenticationError, NotFoundError
from seqr.registry import Permission

from registry_helpers import World


def test_revoked_token_rejected_next_request(world: World):
    world.registry.create_principal(world.admin, "alice", tenant="acme")
    created = world.registry.create_token(world.admin, "alice", tenant="acme")
    alice = world.registry.authenticate(created.token)
    assert world.registry.authorized_adapters(alice) == []

    world.registry.revoke_token(world.admin, created.info.public_id)

    with pytest.raises(AuthenticationError, match="revoked"):
        world.registry.authenticate(created.token)
    # A principal obtained before the revocation stops working too.
    with pytest.raises(AuthenticationError):
        world.registry.authorized_adapters(alice)


def test_disabled_principal_rejected_next_request(world: World):
    alice = world.user("alice")
    secret = world.registry.create_token(world.admin, "alice", tenant="acme").token
    world.registry.set_principal_disabled(world.admin, "alice", True, tenant="acme")

    with pytest.raises(AuthenticationError, match="disabled"):
        world.registry.authenticate(secret)
    with pytest.raises(AuthenticationError):
        world.registry.list_silos(alice)

    world.registry.set_principal_disabled(world.admin, "alice", False, tenant="acme")
    assert world.registry.authenticate(secret).name == "alice"


def test_removed_grant_rejected_next_request(world: World):
    version_id = world.active_version("finance", seed=1)
    alice = world.user("alice")
    world.registry.grant(world.admin, "finance", Permission.USE, principal="alice", tenant="acme")
    assert [v.id for v in world.registry.authorized_adapters(alice)] == [version_id]
    assert world.registry.load_adapter(alice, version_id).info.id == version_id
    before = world.registry.generation()

    world.registry.revoke(world.admin, "finance", Permission.USE, principal="alice", tenant="acme")

    assert world.registry.generation() > before
    assert world.registry.authorized_adapters(alice) == []
    with pytest.raises(NotFoundError):
        world.registry.load_adapter(alice, version_id)


def test_removed_group_membership_rejected_next_request(world: World):
    version_id = world.active_version("legal", seed=1)
    bob = world.user("bob")
    world.registry.create_group(world.admin, "lawyers", tenant="acme")
    world.registry.set_group_member(world.admin, "lawyers", "bob", True, tenant="acme")
    world.registry.grant(world.admin, "legal", Permission.USE, group="lawyers", tenant="acme")
    assert [v.id for v in world.registry.authorized_adapters(bob)] == [version_id]

    world.registry.set_group_member(world.admin, "lawyers", "bob", False, tenant="acme")

    assert world.registry.authorized_adapters(bob) == []

"""Resolving and loading many adapter versions: same results and errors as one at a time, fixed query counts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from sqlalchemy import event, select, update

from seqr.errors import IntegrityError, NotFoundError, PermissionDeniedError, RegistryError
from seqr.registry import AuditAction, Permission, Principal, Role
from seqr.registry.enums import AdapterStatus, BlobField
from seqr.registry.models import Blob, DataKey
from seqr.registry.views import AdapterVersionInfo

from registry_helpers import World, add_tenant, make_factors


@pytest.fixture
def versions(world: World) -> dict[str, int]:
    """Versions of tenant acme in every status, named by what they are.

    ``finance`` and ``legal`` are active. Silo ``ops`` has a retired version 1 and an active
    version 2. Silo ``archive`` has a destroyed version and a version still in training.
    """
    registry, admin = world.registry, world.admin
    for silo in ("ops", "archive"):
        registry.create_silo(admin, silo, tenant="acme")
    finance = registry.add_adapter_version(
        admin, "finance", "lib", make_factors(1), tenant="acme",
        manifest={"documents": [1, 2]}, config={"epochs": 2}, metrics={"final_epoch_loss": 0.5},
    ).id
    registry.activate_adapter_version(admin, finance)
    ops_retired = world.active_version("ops", seed=3)
    destroyed = world.active_version("archive", seed=5)
    registry.retire_adapter_version(admin, destroyed)
    registry.destroy_adapter_version(admin, destroyed)
    return {
        "finance": finance,
        "legal": world.active_version("legal", seed=2),
        "ops_retired": ops_retired,
        "ops": world.active_version("ops", seed=4),
        "destroyed": destroyed,
        "training": registry.add_adapter_version(admin, "archive", "lib", make_factors(6), tenant="acme").id,
    }


def _active_infos(world: World, silos: set[str]) -> list[AdapterVersionInfo]:
    """Return the active versions of ``silos`` as list_adapter_versions reports them, without the JSON fields."""
    listed = world.registry.list_adapter_versions(world.admin, tenant="acme", status=AdapterStatus.ACTIVE)
    return [replace(info, manifest={}, config={}, metrics={}) for info in listed if info.silo in silos]


def _tenant_admin(world: World, name: str) -> Principal:
    world.registry.create_principal(world.admin, name, tenant="acme", role=Role.TENANT_ADMIN)
    return world.registry.authenticate(world.registry.create_token(world.admin, name, tenant="acme").token)


# authorized_adapters ----------------------------------------------------------------------


def test_authorized_direct_grants(world: World, versions: dict[str, int]):
    alice = world.user("alice")
    world.registry.grant(world.admin, "finance", Permission.USE, principal="alice", tenant="acme")
    world.registry.grant(world.admin, "ops", Permission.ADMIN, principal="alice", tenant="acme")
    world.registry.grant(world.admin, "legal", Permission.TRAIN, principal="alice", tenant="acme")

    resolved = world.registry.authorized_adapters(alice)

    assert resolved == _active_infos(world, {"finance", "ops"})
    assert [info.id for info in resolved] == [versions["finance"], versions["ops"]]


def test_authorized_group_grants(world: World, versions: dict[str, int]):
    bob = world.user("bob")
    world.registry.create_group(world.admin, "team", tenant="acme")
    world.registry.set_group_member(world.admin, "team", "bob", True, tenant="acme")
    world.registry.grant(world.admin, "legal", Permission.USE, group="team", tenant="acme")
    world.registry.grant(world.admin, "archive", Permission.USE, group="team", tenant="acme")

    resolved = world.registry.authorized_adapters(bob)

    assert resolved == _active_infos(world, {"legal"})
    assert [info.id for info in resolved] == [versions["legal"]]


def test_authorized_direct_and_group_combined(world: World, versions: dict[str, int]):
    carol = world.user("carol")
    world.registry.create_group(world.admin, "team", tenant="acme")
    world.registry.set_group_member(world.admin, "team", "carol", True, tenant="acme")
    world.registry.grant(world.admin, "ops", Permission.USE, group="team", tenant="acme")
    world.registry.grant(world.admin, "ops", Permission.USE, principal="carol", tenant="acme")
    world.registry.grant(world.admin, "finance", Permission.USE, principal="carol", tenant="acme")

    resolved = world.registry.authorized_adapters(carol)

    assert [info.id for info in resolved] == [versions["finance"], versions["ops"]]


def test_authorized_no_grants(world: World, versions: dict[str, int]):
    assert world.registry.authorized_adapters(world.user("dave")) == []


def test_authorized_admin_roles_grant_nothing(world: World, versions: dict[str, int]):
    boss = _tenant_admin(world, "boss")
    assert world.registry.authorized_adapters(world.admin) == []
    assert world.registry.authorized_adapters(boss) == []


def test_authorized_tenant_admin_with_grant(world: World, versions: dict[str, int]):
    boss = _tenant_admin(world, "boss")
    world.registry.grant(world.admin, "legal", Permission.USE, principal="boss", tenant="acme")
    assert [info.id for info in world.registry.authorized_adapters(boss)] == [versions["legal"]]


def test_authorized_revoked_grants(world: World, versions: dict[str, int]):
    erin = world.user("erin")
    world.registry.create_group(world.admin, "team", tenant="acme")
    world.registry.set_group_member(world.admin, "team", "erin", True, tenant="acme")
    world.registry.grant(world.admin, "finance", Permission.USE, principal="erin", tenant="acme")
    world.registry.grant(world.admin, "legal", Permission.USE, group="team", tenant="acme")
    assert len(world.registry.authorized_adapters(erin)) == 2

    world.registry.revoke(world.admin, "finance", Permission.USE, principal="erin", tenant="acme")
    assert [info.id for info in world.registry.authorized_adapters(erin)] == [versions["legal"]]

    world.registry.set_group_member(world.admin, "team", "erin", False, tenant="acme")
    assert world.registry.authorized_adapters(erin) == []


def test_authorized_skips_inactive_versions(world: World, versions: dict[str, int]):
    frank = world.user("frank")
    for silo in ("ops", "archive"):
        world.registry.grant(world.admin, silo, Permission.USE, principal="frank", tenant="acme")

    resolved = world.registry.authorized_adapters(frank)

    assert [info.id for info in resolved] == [versions["ops"]]
    assert resolved[0].status is AdapterStatus.ACTIVE
    assert resolved[0].number == 2


def test_authorized_other_tenant_excluded(world: World, versions: dict[str, int]):
    add_tenant(world.registry, world.admin, "globex")
    world.active_version("finance", seed=7, tenant="globex")
    grace = world.user("grace", tenant="globex")
    world.registry.grant(world.admin, "finance", Permission.USE, principal="grace", tenant="globex")

    resolved = world.registry.authorized_adapters(grace)

    assert [(info.tenant, info.silo) for info in resolved] == [("globex", "finance")]


def test_authorized_omits_json_fields(world: World, versions: dict[str, int]):
    alice = world.user("alice")
    world.registry.grant(world.admin, "finance", Permission.USE, principal="alice", tenant="acme")

    (resolved,) = world.registry.authorized_adapters(alice)
    loaded = world.registry.load_adapter(alice, versions["finance"]).info

    assert (resolved.manifest, resolved.config, resolved.metrics) == ({}, {}, {})
    assert loaded.manifest == {"documents": [1, 2]}
    assert replace(loaded, manifest={}, config={}, metrics={}) == resolved


# load_adapters errors ---------------------------------------------------------------------


def _raised(call: Callable[[], object]) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        call()
    return caught.value


@pytest.fixture
def reader(world: World, versions: dict[str, int]) -> Principal:
    """A member with use on finance and ops, train on archive and nothing on legal."""
    principal = world.user("reader")
    for silo in ("finance", "ops"):
        world.registry.grant(world.admin, silo, Permission.USE, principal="reader", tenant="acme")
    world.registry.grant(world.admin, "archive", Permission.TRAIN, principal="reader", tenant="acme")
    return principal


@pytest.mark.parametrize(
    ("bad", "error_type", "message"),
    [
        ("legal", NotFoundError, "adapter version {id} not found; list versions with `seqr adapter list`"),
        ("missing", NotFoundError, "adapter version {id} not found; list versions with `seqr adapter list`"),
        ("ops_retired", PermissionDeniedError,
         "acme/reader lacks the train permission on silo 'ops'; ask a tenant admin for a grant"),
        ("destroyed", NotFoundError, "adapter version {id} was destroyed; load the silo's active version instead"),
    ],
    ids=["ungranted-silo", "missing-id", "retired-needs-train", "destroyed"],
)
def test_load_bad_id_among_many(world: World, versions: dict[str, int], reader: Principal, bad: str, error_type: type, message: str):
    bad_id = versions.get(bad, 10**9)
    alone = _raised(lambda: world.registry.load_adapter(reader, bad_id))
    among_many = _raised(lambda: world.registry.load_adapters(
        reader, [versions["finance"], versions["ops"], bad_id, versions["training"]]))

    assert type(alone) is error_type
    assert str(alone) == message.format(id=bad_id)
    assert type(among_many) is error_type
    assert str(among_many) == str(alone)


def test_load_other_tenant_version_not_found(world: World, versions: dict[str, int]):
    add_tenant(world.registry, world.admin, "globex")
    foreign = world.active_version("finance", seed=8, tenant="globex")
    boss = _tenant_admin(world, "boss")

    error = _raised(lambda: world.registry.load_adapters(boss, [versions["finance"], foreign]))

    assert type(error) is NotFoundError
    assert str(error) == f"adapter version {foreign} not found; list versions with `seqr adapter list`"


def test_load_active_with_train_only_denied(world: World, versions: dict[str, int]):
    trainer = world.user("trainer")
    world.registry.grant(world.admin, "legal", Permission.TRAIN, principal="trainer", tenant="acme")

    error = _raised(lambda: world.registry.load_adapters(trainer, [versions["legal"]]))

    assert type(error) is PermissionDeniedError
    assert str(error) == "acme/trainer lacks the use permission on silo 'legal'; ask a tenant admin for a grant"


def test_load_admins_bypass_grants(world: World, versions: dict[str, int]):
    boss = _tenant_admin(world, "boss")
    ids = [versions["ops_retired"], versions["legal"], versions["training"]]

    assert [loaded.info.id for loaded in world.registry.load_adapters(boss, ids)] == ids
    assert [loaded.info.id for loaded in world.registry.load_adapters(world.admin, ids)] == ids


def test_load_training_version_with_train(world: World, versions: dict[str, int], reader: Principal):
    (loaded,) = world.registry.load_adapters(reader, [versions["training"]])
    assert loaded.info.status is AdapterStatus.TRAINING


def test_load_repeated_ids_in_order(world: World, versions: dict[str, int], reader: Principal):
    ids = [versions["ops"], versions["finance"], versions["ops"]]
    assert [loaded.info.id for loaded in world.registry.load_adapters(reader, ids)] == ids


def _corrupt(world: World, version_id: int) -> None:
    with world.registry._write() as (session, _state):
        key_id = session.scalars(select(DataKey.id).where(DataKey.adapter_version_id == version_id)).one()
        ciphertext = session.scalars(select(Blob.ciphertext).where(Blob.data_key_id == key_id)).one()
        session.execute(update(Blob).where(Blob.data_key_id == key_id, Blob.field == BlobField.FACTORS)
                        .values(ciphertext=bytes([ciphertext[0] ^ 0x01]) + ciphertext[1:]))


def _last_audit_action(world: World) -> str:
    return world.registry.list_audit_events(world.admin, limit=1)[0].action


def test_load_first_failure_wins(world: World, versions: dict[str, int], reader: Principal):
    """Checks and decryption run per version in order, so whichever fails first raises."""
    _corrupt(world, versions["finance"])

    hidden_first = _raised(lambda: world.registry.load_adapters(reader, [versions["legal"], versions["finance"]]))
    assert type(hidden_first) is NotFoundError
    assert _last_audit_action(world) != AuditAction.INTEGRITY_FAILURE.value

    corrupt_first = _raised(lambda: world.registry.load_adapters(reader, [versions["finance"], versions["legal"]]))
    assert type(corrupt_first) is IntegrityError
    assert _last_audit_action(world) == AuditAction.INTEGRITY_FAILURE.value


# Query counts -----------------------------------------------------------------------------


@contextmanager
def _statements(world: World) -> Iterator[list[str]]:
    """Collect the SQL statements the registry's engine sends while the block runs."""
    sent: list[str] = []

    def record(connection, cursor, statement, parameters, context, executemany) -> None:
        sent.append(statement)

    event.listen(world.registry.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(world.registry.engine, "before_cursor_execute", record)


def _add_granted_silos(world: World, names: list[str]) -> list[int]:
    """Create silos with one active version each, granted to the group ``team``; return the version ids."""
    ids = []
    for name in names:
        world.registry.create_silo(world.admin, name, tenant="acme")
        ids.append(world.active_version(name, seed=len(ids)))
        world.registry.grant(world.admin, name, Permission.USE, group="team", tenant="acme")
    return ids


def _reads_blobs(statement: str) -> bool:
    return "FROM data_keys" in statement or "FROM blobs" in statement


def test_query_counts_fixed(world: World):
    member = world.user("member")
    world.registry.create_group(world.admin, "team", tenant="acme")
    world.registry.set_group_member(world.admin, "team", "member", True, tenant="acme")
    resolve_counts, load_counts, blob_counts = [], [], []

    for names in (["s0", "s1"], ["s2", "s3", "s4", "s5", "s6", "s7"]):
        _add_granted_silos(world, names)
        with _statements(world) as resolving:
            ids = [info.id for info in world.registry.authorized_adapters(member)]
        with _statements(world) as loading:
            world.registry.load_adapters(member, ids)
        resolve_counts.append(len(resolving))
        load_counts.append(len([statement for statement in loading if not _reads_blobs(statement)]))
        blob_counts.append(len([statement for statement in loading if _reads_blobs(statement)]))

    assert resolve_counts[0] == resolve_counts[1]
    assert load_counts[0] == load_counts[1]
    # NOTE: decrypting still reads the data key and the blobs of each version with two queries.
    assert blob_counts == [2 * 2, 2 * 8]

"""Retention job with a tiny model: removal, retraining, destruction, audit, holds, expiry and dry runs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from seqr.errors import ConflictError, ModelError, NotFoundError
from seqr.policies.retention import plan_retention, remove_now, run_retention
from seqr.policies.retention_verify import RetentionVerificationError, verify_retention
from seqr.registry.enums import AdapterStatus, AuditAction
from seqr.registry.models import AdapterVersion
from seqr.registry.retention import manifest_document_ids
from seqr.training.base_model import load_base_model


def run(world, **kwargs):
    return run_retention(world.registry, world.admin, load_model=lambda _source: world.base, **kwargs)


def audit_actions(world, since: int) -> list[tuple[str, str, dict]]:
    events = world.registry.list_audit_events(world.admin, limit=500)
    return [(event.action, event.target, event.detail) for event in reversed(events) if event.id > since]


def last_audit_id(world) -> int:
    return world.registry.list_audit_events(world.admin, limit=1)[0].id


def test_removal_retrains_without_document(retention_world):
    world = retention_world
    old = world.active_version("cooking")
    untouched = world.active_version("finance")
    removed = world.documents["cooking"][1]

    world.registry.request_removal(world.admin, "cooking", document_ids=[removed], reason="erasure request")
    summary = run(world)

    new = world.active_version("cooking")
    assert summary.documents_removed == [removed]
    assert summary.silos_retrained == ["default/cooking/main"]
    assert summary.versions_destroyed == [old.id]
    assert new.id != old.id
    assert removed not in manifest_document_ids(new.manifest)
    assert sorted(manifest_document_ids(new.manifest)) == sorted(set(world.documents["cooking"]) - {removed})
    assert new.manifest["replaces_version"] == old.id
    assert new.config["seed"] == old.config["seed"]
    assert new.config["a_fingerprint"] == old.config["a_fingerprint"]
    assert world.active_version("finance").id == untouched.id


def test_removal_makes_old_version_undecryptable(retention_world):
    world = retention_world
    old = world.active_version("cooking")
    keys_before = world.registry.keys.shred_key_refs()
    world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][0]])

    run(world)

    statuses = {v.id: v.status for v in world.registry.list_adapter_versions(world.admin, silo="cooking")}
    assert statuses[old.id] is AdapterStatus.DESTROYED
    with pytest.raises(NotFoundError):
        world.registry.load_adapter(world.admin, old.id)
    with pytest.raises(NotFoundError):
        world.registry.read_document(world.admin, world.documents["cooking"][0])
    keys_after = world.registry.keys.shred_key_refs()
    assert len(keys_before - keys_after) == 2  # the old version's and the document's shred keys
    assert world.registry.check_destruction(world.admin).leftovers == []


def test_removal_audit_trail_shows_each_step(retention_world):
    world = retention_world
    old = world.active_version("cooking")
    since = last_audit_id(world)
    world.registry.request_removal(world.admin, "cooking", metadata_match={"source": "export-1"})

    summary = run(world)

    actions = [action for action, _target, _detail in audit_actions(world, since)]
    assert actions == [
        AuditAction.REMOVAL_REQUEST.value,
        AuditAction.RETENTION_RUN.value,
        AuditAction.DOCUMENT_REMOVE.value,
        AuditAction.ADAPTER_ADD.value,
        AuditAction.ADAPTER_RETIRE.value,
        AuditAction.ADAPTER_ACTIVATE.value,
        AuditAction.RETENTION_RETRAIN.value,
        AuditAction.ADAPTER_DESTROY.value,
        AuditAction.RETENTION_RUN.value,
    ]
    events = audit_actions(world, since)
    assert events[1][2]["phase"] == "start"
    assert events[-1][2]["phase"] == "completed"
    assert events[-1][2]["documents_removed"] == summary.documents_removed
    retrain = events[6][2]
    assert retrain["new_version"] == world.active_version("cooking").id
    assert retrain["removed_documents"] == [world.documents["cooking"][1]]
    assert f"@{old.number}" in events[6][1]
    world.registry.verify_audit(world.admin)


def test_second_run_changes_nothing(retention_world):
    world = retention_world
    world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][2]])
    run(world)
    versions = world.registry.list_adapter_versions(world.admin)
    keys = world.registry.keys.shred_key_refs()
    since = last_audit_id(world)

    summary = run(world)

    assert summary.run_id is None
    assert not summary.changed_anything()
    assert world.registry.list_adapter_versions(world.admin) == versions
    assert world.registry.keys.shred_key_refs() == keys
    assert audit_actions(world, since) == []


def test_dry_run_reports_and_changes_nothing(retention_world):
    world = retention_world
    old = world.active_version("cooking")
    target = world.documents["cooking"][0]
    world.registry.request_removal(world.admin, "cooking", document_ids=[target])
    versions = world.registry.list_adapter_versions(world.admin)
    since = last_audit_id(world)

    summary = run(world, dry_run=True)

    assert summary.dry_run
    assert summary.documents_removed == [target]
    assert summary.silos_retrained == ["default/cooking/main"]
    assert summary.versions_destroyed == [old.id]
    assert world.registry.list_adapter_versions(world.admin) == versions
    assert world.registry.read_document(world.admin, target).info.removed_at is None
    assert audit_actions(world, since) == []


def test_expired_document_is_removed(retention_world):
    world = retention_world
    clock = world.clock
    expiring = world.registry.add_document(world.admin, "finance", b"short-lived note", expires_at=clock.now + timedelta(days=1))
    assert run(world).documents_removed == []

    clock.advance(timedelta(days=2))
    summary = run(world)

    assert summary.documents_removed == [expiring.id]
    # The finance adapter was trained before the document was added, so no retrain is needed.
    assert summary.silos_retrained == []


def test_max_age_policy_removes_old_documents(retention_world):
    world = retention_world
    world.registry.set_retention_policy(world.admin, "cooking", max_age=timedelta(days=30))
    world.clock.advance(timedelta(days=10))
    fresh = world.registry.add_document(world.admin, "cooking", b'{"text": "fresh recipe"}')
    world.clock.advance(timedelta(days=25))

    summary = run(world)

    assert sorted(summary.documents_removed) == sorted(world.documents["cooking"])
    remaining = [d.id for d in world.registry.list_documents(world.admin, "cooking")]
    assert remaining == [fresh.id]
    assert manifest_document_ids(world.active_version("cooking").manifest) == [fresh.id]
    assert world.registry.list_documents(world.admin, "finance") != []


def test_tenant_default_policy_applies_to_silos(retention_world):
    world = retention_world
    world.registry.set_retention_policy(world.admin, max_age=timedelta(days=1))
    world.registry.set_retention_policy(world.admin, "finance", max_age=None)
    world.clock.advance(timedelta(days=2))

    due = {document.id for document in world.registry.due_documents(world.admin)}

    assert due == set(world.documents["cooking"])
    assert world.registry.retention_policy(world.admin, "cooking").max_age_seconds == 86400
    assert world.registry.retention_policy(world.admin, "finance").max_age_seconds is None


def test_legal_hold_blocks_deletion(retention_world):
    world = retention_world
    held = world.documents["finance"][0]
    old = world.active_version("finance")
    world.registry.set_retention_policy(world.admin, "finance", legal_hold=True)
    world.registry.request_removal(world.admin, "finance", document_ids=[held])

    summary = run(world)

    assert summary.documents_removed == []
    assert summary.documents_held == [held]
    assert world.registry.read_document(world.admin, held).content
    assert world.active_version("finance").id == old.id
    with pytest.raises(ConflictError, match="legal hold"):
        remove_now(world.registry, world.admin, "finance", [held])
    with pytest.raises(ConflictError, match="legal hold"):
        world.registry.remove_document(world.admin, held)
    assert verify_retention(world.registry, world.admin).documents_held == [held]

    world.registry.set_retention_policy(world.admin, "finance", legal_hold=False)
    assert run(world).documents_removed == [held]


def test_tenant_legal_hold_covers_every_silo(retention_world):
    world = retention_world
    world.registry.set_retention_policy(world.admin, legal_hold=True)
    world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][0]])

    plan = plan_retention(world.registry, world.admin)

    assert plan.remove == []
    assert [document.id for document in plan.held] == [world.documents["cooking"][0]]


def test_silo_left_empty_has_adapter_retired(retention_world):
    world = retention_world
    old = world.active_version("finance")
    world.registry.request_removal(world.admin, "finance", document_ids=world.documents["finance"])

    summary = run(world)

    assert summary.silos_emptied == ["default/finance"]
    assert world.active_version("finance") is None
    statuses = {v.id: v.status for v in world.registry.list_adapter_versions(world.admin, silo="finance")}
    assert statuses[old.id] is AdapterStatus.DESTROYED
    verify_retention(world.registry, world.admin)


def test_remove_now_shreds_and_next_run_retrains(retention_world):
    world = retention_world
    target = world.documents["cooking"][2]
    requests = world.registry.request_removal(world.admin, "cooking", document_ids=[target])

    assert remove_now(world.registry, world.admin, "cooking", [r.document_id for r in requests]) == [target]
    with pytest.raises(RetentionVerificationError, match="removed document"):
        verify_retention(world.registry, world.admin)

    summary = run(world)

    assert summary.documents_removed == []
    assert summary.silos_retrained == ["default/cooking/main"]
    assert verify_retention(world.registry, world.admin).problems == []
    assert world.registry.list_removal_requests(world.admin, pending_only=True) == []


def test_verify_reports_due_document_in_active_version(retention_world):
    world = retention_world
    world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][0]])

    with pytest.raises(RetentionVerificationError) as raised:
        verify_retention(world.registry, world.admin)

    assert any("due for removal" in problem for problem in raised.value.report.problems)
    run(world)
    assert verify_retention(world.registry, world.admin).problems == []


def test_request_by_metadata_matches_all_pairs(retention_world):
    world = retention_world

    requests = world.registry.request_removal(world.admin, "cooking", metadata_match={"source": "export-0", "index": "2"})

    assert [request.document_id for request in requests] == [world.documents["cooking"][2]]
    with pytest.raises(NotFoundError, match="no live document"):
        world.registry.request_removal(world.admin, "cooking", metadata_match={"source": "nowhere"})
    again = world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][2]])
    assert again == []


def test_tenant_option_limits_run(retention_world):
    world = retention_world
    world.registry.create_tenant(world.admin, "acme")
    world.registry.create_silo(world.admin, "sales", tenant="acme")
    other = world.registry.add_document(world.admin, "sales", b"acme price list", tenant="acme")
    world.registry.request_removal(world.admin, "sales", document_ids=[other.id], tenant="acme")
    local = world.documents["cooking"][0]
    world.registry.request_removal(world.admin, "cooking", document_ids=[local])

    scoped = run(world, tenant="default")
    everywhere = run(world)

    assert scoped.documents_removed == [local]
    assert everywhere.documents_removed == [other.id]
    assert world.registry.list_documents(world.admin, "sales", tenant="acme") == []


def test_retrain_reuses_training_config(retention_world):
    world = retention_world
    old = world.active_version("cooking")
    world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][0]])

    run(world)

    new = world.active_version("cooking")
    assert {key: new.config[key] for key in old.config} == old.config


def test_interrupted_destroy_finished_by_next_run(retention_world):
    world = retention_world
    old = world.active_version("cooking")
    world.registry.retire_adapter_version(world.admin, old.id)
    # The status change of a destroy without its shredding, as a kill between the two leaves it.
    with Session(world.registry.engine) as session, session.begin():
        session.get(AdapterVersion, old.id).status = AdapterStatus.DESTROYED

    leftovers = world.registry.check_destruction(world.admin).leftovers
    with pytest.raises(RetentionVerificationError, match="still has a wrapped data key"):
        verify_retention(world.registry, world.admin)
    run(world)

    assert len(leftovers) == 1
    assert world.registry.check_destruction(world.admin).leftovers == []


def test_failed_run_is_audited_and_retried(retention_world, make_model_dir, tmp_path):
    world = retention_world
    other = load_base_model(make_model_dir(tmp_path / "other-model", seed=1))
    old = world.active_version("cooking")
    world.registry.request_removal(world.admin, "cooking", document_ids=[world.documents["cooking"][0]])
    since = last_audit_id(world)

    with pytest.raises(ModelError, match="is not the base model of library"):
        run_retention(world.registry, world.admin, load_model=lambda _source: other)

    failed = [detail for action, _target, detail in audit_actions(world, since) if action == AuditAction.RETENTION_RUN.value]
    assert failed[-1]["phase"] == "failed"
    assert world.active_version("cooking").id == old.id
    assert run(world).silos_retrained == ["default/cooking/main"]
    assert verify_retention(world.registry, world.admin).problems == []

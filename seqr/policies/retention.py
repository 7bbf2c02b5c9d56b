"""The retention job: remove due documents, retrain the affected adapters, destroy what they replace.

:func:`run_retention` is what ``seqr retention run`` and a scheduler call. One run:

1. takes the registry's retention lock (:class:`~seqr.policies.job_lock.HeldLock`);
2. destroys leftovers of a killed run: versions a retention run trained but never activated, and
   retired or training versions whose manifest names a removed document;
3. crypto-shreds every document that expired, outlived its maximum age or was requested for
   removal, except in silos under a legal hold;
4. retrains each silo whose active version's manifest names a removed document. The new version
   is trained from the remaining documents with the same library A and training config. Then it
   is activated, which retires the old one in the same transaction, and the old one is destroyed.
   A silo left without documents has its version retired and destroyed instead.

Each step is in the audit log. The work is derived from the database every time, never from a
saved plan, so a run killed at any step leaves the previous version serving and the next run
finishes the work. A run with nothing to do writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from seqr.errors import ConflictError
from seqr.policies.fault_points import Step, pause_if_requested
from seqr.policies.job_lock import DEFAULT_LEASE, HeldLock
from seqr.policies.training_jobs import train_silo_adapter, training_config_from_version
from seqr.registry.enums import AdapterStatus, RunStatus
from seqr.registry.registry import Registry
from seqr.registry.retention import MANIFEST_REPLACES_KEY, MANIFEST_RUN_KEY, RETENTION_LOCK, DueDocument, VersionRef
from seqr.registry.views import AdapterVersionInfo, Principal
from seqr.training.base_model import BaseModel, load_base_model
from seqr.training.presets import TrainingConfig

logger = logging.getLogger(__name__)

ModelLoader = Callable[[str | None], BaseModel]
StepHook = Callable[[Step], None]


@dataclass(frozen=True)
class RetentionPlan:
    """The work a run would do now: documents to remove, versions to destroy, retrain or retire."""

    remove: list[DueDocument]
    held: list[DueDocument]
    destroy: list[VersionRef]  # leftovers: never activated by their run, or retired with removed data
    retrain: list[VersionRef]  # active versions that name (or will name) a removed document

    def is_empty(self) -> bool:
        return not (self.remove or self.destroy or self.retrain)


@dataclass
class RetentionSummary:
    """Outcome of a run, or with ``dry_run`` the outcome a run would have."""

    run_id: int | None
    dry_run: bool
    documents_removed: list[int] = field(default_factory=list)
    documents_held: list[int] = field(default_factory=list)
    silos_retrained: list[str] = field(default_factory=list)
    silos_emptied: list[str] = field(default_factory=list)
    versions_activated: list[int] = field(default_factory=list)
    versions_destroyed: list[int] = field(default_factory=list)
    took_over_lock: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def changed_anything(self) -> bool:
        return bool(self.documents_removed or self.silos_retrained or self.silos_emptied or self.versions_destroyed)


def plan_retention(registry: Registry, actor: Principal, *, tenant: str | None = None) -> RetentionPlan:
    """Work out what :func:`run_retention` would do now, changing nothing."""
    due = registry.due_documents(actor, tenant=tenant)
    remove = [document for document in due if not document.held]
    removing = {document.id for document in remove}
    destroy: list[VersionRef] = []
    retrain: list[VersionRef] = []
    for ref in registry.version_refs(actor, tenant=tenant):
        if ref.status is AdapterStatus.TRAINING and ref.retention_run is not None:
            destroy.append(ref)  # trained by a run that was killed before activating it
        elif ref.status is AdapterStatus.ACTIVE and (ref.removed_documents or removing & set(ref.document_ids)):
            retrain.append(ref)
        elif ref.status is not AdapterStatus.ACTIVE and ref.removed_documents:
            destroy.append(ref)
    return RetentionPlan(remove, [document for document in due if document.held], destroy, retrain)


class RetentionJob:
    """One retention run; construct it and call :meth:`run` (or use :func:`run_retention`)."""

    def __init__(
        self,
        registry: Registry,
        actor: Principal,
        *,
        tenant: str | None = None,
        base_model: str | Path | None = None,
        load_model: ModelLoader = load_base_model,
        fallback_config: TrainingConfig | None = None,
        lease: timedelta = DEFAULT_LEASE,
        on_step: StepHook = pause_if_requested,
        progress: bool = False,
    ) -> None:
        self.registry = registry
        self.actor = actor
        self.tenant = tenant
        self.base_model = None if base_model is None else str(base_model)
        self.load_model = load_model
        self.fallback_config = fallback_config or TrainingConfig()
        self.lease = lease
        self.on_step = on_step
        self.progress = progress
        self._models: dict[str | None, BaseModel] = {}

    def run(self) -> RetentionSummary:
        """Take the lock and do the work; raise LockHeldError at once when another run holds it."""
        started = time.perf_counter()
        with HeldLock(self.registry, RETENTION_LOCK, self.lease) as lock:
            summary = RetentionSummary(run_id=None, dry_run=False, took_over_lock=lock.took_over)
            # Finishes a destroy or removal that was killed after its status change; writes only then.
            self.registry.finish_destruction()
            plan = plan_retention(self.registry, self.actor, tenant=self.tenant)
            summary.documents_held = [document.id for document in plan.held]
            if plan.is_empty():
                if lock.took_over:
                    self.registry.close_interrupted_runs()
                logger.info("retention: nothing to do (%d document(s) held)", len(plan.held))
                summary.seconds = time.perf_counter() - started
                return summary
            summary.run_id = self.registry.start_retention_run(self.actor, tenant=self.tenant)
            logger.info("retention run %d started: %d document(s) to remove, %d version(s) to retrain, %d to destroy",
                        summary.run_id, len(plan.remove), len(plan.retrain), len(plan.destroy))
            try:
                self._work(plan, summary, lock)
            except BaseException as error:
                summary.seconds = time.perf_counter() - started
                logger.error("retention run %d failed after %.1f s: %s", summary.run_id, summary.seconds, error)
                self._record_failure(summary)
                raise
            summary.seconds = time.perf_counter() - started
            self.registry.finish_retention_run(self.actor, summary.run_id, RunStatus.COMPLETED, _log_summary(summary))
            logger.info("retention run %d: removed %d document(s), retrained %d silo(s) in %.1f s", summary.run_id,
                        len(summary.documents_removed), len(summary.silos_retrained), summary.seconds)
            return summary

    def _record_failure(self, summary: RetentionSummary) -> None:
        """Mark the run failed in the run log; never raises, so the caller receives the original error."""
        assert summary.run_id is not None
        try:
            self.registry.finish_retention_run(self.actor, summary.run_id, RunStatus.FAILED, _log_summary(summary))
        except Exception:  # noqa: BLE001 - the next run marks it interrupted instead
            logger.exception("could not record retention run %d as failed", summary.run_id)

    def _work(self, plan: RetentionPlan, summary: RetentionSummary, lock: HeldLock) -> None:
        for ref in plan.destroy:
            lock.check()
            self._destroy(ref, summary)
        for document in plan.remove:
            lock.check()
            try:
                self.registry.remove_document(self.actor, document.id)
            except ConflictError:
                logger.info("document %d was removed by someone else meanwhile", document.id)
            self.registry.complete_removal_requests(self.actor, document.id)
            summary.documents_removed.append(document.id)
        self.on_step(Step.SHREDDED)
        # Recomputed after the removals: the plan's list misses versions naming a document removed just now.
        for ref in self.registry.tainted_versions(self.actor, tenant=self.tenant):
            lock.check()
            if ref.status is AdapterStatus.ACTIVE:
                self._replace(ref, summary)
            else:
                self._destroy(ref, summary)

    def _destroy(self, ref: VersionRef, summary: RetentionSummary) -> None:
        self.registry.destroy_adapter_version(self.actor, ref.id)
        summary.versions_destroyed.append(ref.id)

    def _replace(self, ref: VersionRef, summary: RetentionSummary) -> None:
        """Retrain ``ref``'s silo without the removed documents, activate it, destroy ``ref``."""
        assert summary.run_id is not None
        remaining = self.registry.list_documents(self.actor, ref.silo, tenant=ref.tenant)
        target = f"adapter {ref.describe()}"
        if not remaining:
            self.registry.retire_adapter_version(self.actor, ref.id)
            self.registry.record_retention_step(self.actor, ref.tenant, target, {
                "step": "retired", "run": summary.run_id, "reason": "no documents left",
                "removed_documents": ref.removed_documents})
            self._destroy(ref, summary)
            summary.silos_emptied.append(f"{ref.tenant}/{ref.silo}")
            return

        old = self._version_info(ref)
        config = training_config_from_version(old.config, self.fallback_config)
        max_examples = old.config.get("max_examples")
        base = self._model(ref)

        started = time.perf_counter()
        result = train_silo_adapter(
            self.registry, self.actor, ref.silo, ref.library, base, config,
            max_examples=max_examples if isinstance(max_examples, int) else None, tenant=ref.tenant,
            progress=self.progress,
            extra_manifest={MANIFEST_RUN_KEY: summary.run_id, MANIFEST_REPLACES_KEY: ref.id},
            before_training=lambda: self.on_step(Step.TRAINING),
        )
        self.on_step(Step.TRAINED)

        self.registry.activate_adapter_version(self.actor, result.version.id)
        summary.versions_activated.append(result.version.id)
        self.registry.record_retention_step(self.actor, ref.tenant, target, {
            "step": "retrained", "run": summary.run_id, "new_version": result.version.id,
            "removed_documents": ref.removed_documents, "documents": len(result.document_ids),
            "examples": result.examples, "seconds": round(time.perf_counter() - started, 3)})
        self.on_step(Step.ACTIVATED)

        self._destroy(ref, summary)
        summary.silos_retrained.append(f"{ref.tenant}/{ref.silo}/{ref.library}")

    def _version_info(self, ref: VersionRef) -> AdapterVersionInfo:
        for version in self.registry.list_adapter_versions(self.actor, tenant=ref.tenant, silo=ref.silo):
            if version.id == ref.id:
                return version
        raise ConflictError(f"adapter version {ref.id} disappeared during the retention run; run it again")

    def _model(self, ref: VersionRef) -> BaseModel:
        """Load (once) the base model of ``ref``'s library: the override, else the library's recorded source."""
        source = self.base_model
        if source is None:
            source = self.registry.library(self.actor, ref.library, tenant=ref.tenant).info.base_model_source
        if source not in self._models:
            logger.info("loading base model %s", source or "(default)")
            self._models[source] = self.load_model(source)
        return self._models[source]


def _log_summary(summary: RetentionSummary) -> dict[str, Any]:
    """Return the summary as stored in the run log and the audit log (ids and names only)."""
    values = summary.to_json()
    values.pop("dry_run")
    values["seconds"] = round(summary.seconds, 3)
    return values


def run_retention(
    registry: Registry,
    actor: Principal,
    *,
    tenant: str | None = None,
    dry_run: bool = False,
    base_model: str | Path | None = None,
    load_model: ModelLoader = load_base_model,
    lease: timedelta = DEFAULT_LEASE,
    on_step: StepHook = pause_if_requested,
    progress: bool = False,
) -> RetentionSummary:
    """Run the retention job once (see the module documentation) and return its summary.

    ``dry_run`` reports what would be done and changes nothing; it takes no lock. Raises
    LockHeldError when another run holds the registry's retention lock, PermissionDeniedError
    unless ``actor`` administers the tenant (every tenant when ``tenant`` is None and ``actor`` is
    a registry admin), ModelError when the base model does not match a library.
    """
    if dry_run:
        return _dry_run(registry, actor, tenant)
    job = RetentionJob(registry, actor, tenant=tenant, base_model=base_model, load_model=load_model,
                       lease=lease, on_step=on_step, progress=progress)
    return job.run()


def _dry_run(registry: Registry, actor: Principal, tenant: str | None) -> RetentionSummary:
    started = time.perf_counter()
    plan = plan_retention(registry, actor, tenant=tenant)
    removing = {document.id for document in plan.remove}
    summary = RetentionSummary(
        run_id=None, dry_run=True,
        documents_removed=sorted(removing),
        documents_held=[document.id for document in plan.held],
        versions_destroyed=[ref.id for ref in plan.destroy] + [ref.id for ref in plan.retrain],
    )
    for ref in plan.retrain:
        remaining = [info for info in registry.list_documents(actor, ref.silo, tenant=ref.tenant) if info.id not in removing]
        if remaining:
            summary.silos_retrained.append(f"{ref.tenant}/{ref.silo}/{ref.library}")
        else:
            summary.silos_emptied.append(f"{ref.tenant}/{ref.silo}")
    summary.seconds = time.perf_counter() - started
    return summary


def remove_now(
    registry: Registry, actor: Principal, silo: str, document_ids: list[int], *, tenant: str | None = None
) -> list[int]:
    """Crypto-shred requested documents at once instead of at the next run; return their ids.

    Raises ConflictError, removing nothing, when a legal hold covers the silo (the requests stay
    pending). The adapters trained on the documents keep serving until the next retention run
    replaces them.
    """
    if registry.retention_policy(actor, silo, tenant=tenant).legal_hold:
        raise ConflictError(
            f"silo {silo!r} is under a legal hold, so its documents cannot be removed now; the removal requests "
            "are recorded and the retention run processes them once the hold is lifted"
        )
    removed: list[int] = []
    for document_id in document_ids:
        registry.remove_document(actor, document_id)
        registry.complete_removal_requests(actor, document_id)
        removed.append(document_id)
    return removed

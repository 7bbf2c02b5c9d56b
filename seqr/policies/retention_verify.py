"""``seqr retention verify``: check the removal guarantee against the registry as it is now.

The guarantee has three parts. No version that is not destroyed was trained on a removed
document. No active version was trained on a document that is due for removal, unless a legal hold
keeps it. Every destroyed version and removed document is undecryptable, because its wrapped data
key is deleted from the database (and its shred key from the key store).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from seqr.errors import IntegrityError
from seqr.registry.enums import AdapterStatus
from seqr.registry.registry import Registry
from seqr.registry.views import Principal


@dataclass
class RetentionVerification:
    """Report of :func:`verify_retention`; ``problems`` is empty when the guarantee holds."""

    versions_checked: int = 0
    versions_destroyed: int = 0
    documents_removed: int = 0
    documents_pending: list[int] = field(default_factory=list)  # due, not in a live version, not removed yet
    documents_held: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RetentionVerificationError(IntegrityError):
    """The removal guarantee does not hold; ``report`` lists every problem found."""

    def __init__(self, report: RetentionVerification) -> None:
        super().__init__(
            f"retention verification found {len(report.problems)} problem(s), first: {report.problems[0]}; "
            "run `seqr retention run` and verify again"
        )
        self.report = report


def verify_retention(registry: Registry, actor: Principal, *, tenant: str | None = None) -> RetentionVerification:
    """Check the guarantee for the tenant (every tenant for a registry admin when ``tenant`` is None).

    Returns the report when it holds; raises :class:`RetentionVerificationError` carrying the
    report otherwise. Needs the tenant_admin role.
    """
    report = RetentionVerification()
    due = registry.due_documents(actor, tenant=tenant)
    report.documents_held = [document.id for document in due if document.held]
    due_ids = {document.id for document in due if not document.held}
    in_versions: set[int] = set()
    for ref in registry.version_refs(actor, tenant=tenant):
        report.versions_checked += 1
        if ref.removed_documents:
            report.problems.append(
                f"{ref.status.value} adapter version {ref.id} ({ref.describe()}) was trained on removed document(s) {ref.removed_documents}"
            )
        if ref.status is AdapterStatus.ACTIVE:
            named_due = sorted(due_ids & set(ref.document_ids))
            in_versions |= set(named_due)
            if named_due:
                report.problems.append(
                    f"active adapter version {ref.id} ({ref.describe()}) was trained on document(s) {named_due}, "
                    "which are due for removal"
                )
    report.documents_pending = sorted(due_ids - in_versions)
    destruction = registry.check_destruction(actor, tenant=tenant)
    report.versions_destroyed = destruction.destroyed_versions
    report.documents_removed = destruction.removed_documents
    report.problems.extend(destruction.leftovers)
    if report.problems:
        raise RetentionVerificationError(report)
    return report


"""Training data and retention commands: ``seqr data ...`` and ``seqr retention ...``.

``seqr data remove`` records a removal request by default; the next ``seqr retention run``
shreds the documents and retrains the silo's adapter. With ``--now`` it also crypto-shreds the
documents at once, and the adapter that was trained on them is replaced at the next run.
``seqr retention run`` exits with status 3 when another run holds the registry's lock.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from seqr.cli.registry_commands import JsonFlag, TenantOption, caller, emit, parse_duration
from seqr.errors import InvalidInputError
from seqr.registry.retention import UNCHANGED, Unchanged

data_app = typer.Typer(help="Add, list and remove a silo's training documents.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention policies, removal requests and the retention job.", no_args_is_help=True)
policy_app = typer.Typer(help="Set and show retention policies (maximum age, legal hold).", no_args_is_help=True)
retention_app.add_typer(policy_app, name="policy")


def _parse_pairs(values: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, separator, item = value.partition("=")
        if not separator or not key:
            raise InvalidInputError(f"{option} expects KEY=VALUE, got {value!r}")
        pairs[key] = item
    return pairs


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


# data ----------------------------------------------------------------------------------


@data_app.command("add")
def data_add(
    ctx: typer.Context,
    silo: str,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Document file: JSON Lines of examples or text.")],
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="Expire the document after this long, such as 30d or 12h.")] = None,
    meta: Annotated[list[str], typer.Option("--meta", help="Metadata as KEY=VALUE (stored encrypted); repeatable.")] = [],  # noqa: B006
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Encrypt and store a training document in a silo.

    Example: seqr data add support ./tickets.jsonl --expires-in 90d --meta source=crm-export-7
    """
    metadata = _parse_pairs(meta, "--meta")
    with caller(ctx) as (registry, actor):
        expires_at = registry.clock() + parse_duration(expires_in) if expires_in else None
        info = registry.add_document(actor, silo, file.read_bytes(), metadata=metadata, expires_at=expires_at, tenant=tenant)
    emit(ctx, as_json, info, [f"added document {info.id} to {info.tenant}/{info.silo} ({info.size} bytes, expires {_when(info.expires_at)})"])


@data_app.command("list")
def data_list(
    ctx: typer.Context,
    silo: str,
    removed: Annotated[bool, typer.Option("--removed", help="Include removed documents.")] = False,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List a silo's documents: id, size, added, expires and removed times."""
    with caller(ctx) as (registry, actor):
        documents = registry.list_documents(actor, silo, tenant=tenant, include_removed=removed)
    emit(ctx, as_json, documents, [
        f"{d.id}\t{d.size}\tadded {_when(d.added_at)}\texpires {_when(d.expires_at)}\tremoved {_when(d.removed_at)}"
        for d in documents
    ])


@data_app.command("remove")
def data_remove(
    ctx: typer.Context,
    silo: str,
    document_id: Annotated[list[int], typer.Option("--id", help="A document id; repeatable.")] = [],  # noqa: B006
    where: Annotated[list[str], typer.Option("--where", help="Select documents whose metadata has KEY=VALUE; repeatable (all must match).")] = [],  # noqa: B006
    reason: Annotated[str | None, typer.Option("--reason", help="Why the documents are removed (kept with the request).")] = None,
    now: Annotated[bool, typer.Option("--now", help="Also crypto-shred the documents at once instead of at the next retention run.")] = False,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Request removal of documents by id or metadata; `seqr retention run` then retrains the silo's adapter.

    Example: seqr data remove support --where source=crm-export-7 --reason "erasure request 112"
    """
    from seqr.policies.retention import remove_now

    match = _parse_pairs(where, "--where")
    if not document_id and not match:
        raise InvalidInputError("name the documents to remove with --id ID or --where KEY=VALUE")
    with caller(ctx) as (registry, actor):
        requests = registry.request_removal(actor, silo, document_ids=document_id, metadata_match=match or None,
                                            reason=reason, tenant=tenant)
        removed = remove_now(registry, actor, silo, [r.document_id for r in requests], tenant=tenant) if now else []
    value = {"requests": [request.to_json() for request in requests], "removed_now": removed}
    lines = [f"requested removal of document {request.document_id} (request {request.id})" for request in requests]
    lines += [f"crypto-shredded document {document} now" for document in removed]
    if not requests:
        lines.append("every selected document already has a pending removal request")
    emit(ctx, as_json, value, lines)


# retention -----------------------------------------------------------------------------


@retention_app.command("run")
def retention_run(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be done and change nothing.")] = False,
    tenant: TenantOption = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="Load the base model from here instead of the library's recorded source.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove expired and requested documents, retrain the affected adapters and destroy the old versions.

    Meant for cron: exit status 0 when done, 1 on an error, 3 when another run holds the lock.
    A registry admin without --tenant covers every tenant.

    Example: seqr retention run --dry-run
    """
    from seqr.policies.retention import run_retention

    with caller(ctx) as (registry, actor):
        summary = run_retention(registry, actor, tenant=tenant, dry_run=dry_run, base_model=base_model)
    verb = "would" if dry_run else "did"
    lines = [
        f"retention run {summary.run_id if summary.run_id is not None else '-'}"
        f"{' (dry run)' if dry_run else ''}: {summary.seconds:.1f} s",
        f"documents removed: {len(summary.documents_removed)} {summary.documents_removed}",
        f"documents held by a legal hold: {len(summary.documents_held)} {summary.documents_held}",
        f"silos retrained: {len(summary.silos_retrained)} {summary.silos_retrained}",
        f"silos left without documents: {len(summary.silos_emptied)} {summary.silos_emptied}",
        f"versions destroyed: {len(summary.versions_destroyed)} {summary.versions_destroyed}",
    ]
    if summary.took_over_lock:
        lines.append(f"took over the lock of a stale run ({summary.took_over_lock})")
    if not dry_run and not summary.changed_anything():
        lines.append("nothing to do")
    elif dry_run:
        lines.append(f"(the lists say what a run {verb} do; nothing changed)")
    emit(ctx, as_json, summary.to_json(), lines)


@retention_app.command("verify")
def retention_verify(ctx: typer.Context, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Check that no live version was trained on removed or due documents and that destroyed ones are undecryptable.

    Exit status 1 and a list of problems when the check fails.
    """
    from seqr.policies.retention_verify import RetentionVerificationError, verify_retention

    with caller(ctx) as (registry, actor):
        try:
            report = verify_retention(registry, actor, tenant=tenant)
        except RetentionVerificationError as error:
            emit(ctx, as_json, {**error.report.to_json(), "ok": False}, [f"problem: {problem}" for problem in error.report.problems])
            raise
    emit(ctx, as_json, {**report.to_json(), "ok": True}, [
        f"retention verified: {report.versions_checked} live version(s), {report.versions_destroyed} destroyed, "
        f"{report.documents_removed} removed document(s)",
        f"documents due but not yet removed (in no live version): {report.documents_pending}",
        f"documents held by a legal hold: {report.documents_held}",
    ])


@retention_app.command("requests")
def retention_requests(
    ctx: typer.Context,
    pending: Annotated[bool, typer.Option("--pending", help="Only requests not completed yet.")] = False,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List removal requests of the tenant."""
    with caller(ctx) as (registry, actor):
        requests = registry.list_removal_requests(actor, tenant=tenant, pending_only=pending)
    emit(ctx, as_json, requests, [
        f"{r.id}\t{r.silo}\tdocument {r.document_id}\trequested {_when(r.requested_at)}\tcompleted {_when(r.completed_at)}\t{r.reason or ''}"
        for r in requests
    ])


@policy_app.command("set")
def policy_set(
    ctx: typer.Context,
    silo: Annotated[str | None, typer.Option("--silo", help="The silo's policy (default: the tenant default).")] = None,
    max_age: Annotated[str | None, typer.Option("--max-age", help="Remove documents older than this, such as 365d.")] = None,
    no_max_age: Annotated[bool, typer.Option("--no-max-age", help="Remove the age limit.")] = False,
    hold: Annotated[bool | None, typer.Option("--hold/--release", help="Place or lift a legal hold, which blocks every deletion.")] = None,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Set the maximum age or legal hold of a silo, or of the tenant as the default for its silos.

    Example: seqr retention policy set --silo support --max-age 365d
    """
    if max_age is not None and no_max_age:
        raise InvalidInputError("pass either --max-age or --no-max-age, not both")
    age: timedelta | None | Unchanged = UNCHANGED
    if max_age is not None:
        age = parse_duration(max_age)
    elif no_max_age:
        age = None
    with caller(ctx) as (registry, actor):
        info = registry.set_retention_policy(actor, silo, max_age=age, legal_hold=UNCHANGED if hold is None else hold, tenant=tenant)
    emit(ctx, as_json, info, [_policy_line(info)])


def _policy_line(info: Any) -> str:
    scope = f"silo {info.tenant}/{info.silo}" if info.silo else f"tenant {info.tenant} (default)"
    age = f"{timedelta(seconds=info.max_age_seconds)}" if info.max_age_seconds is not None else "none"
    return f"{scope}: max age {age}, legal hold {'on' if info.legal_hold else 'off'}"


@policy_app.command("show")
def policy_show(
    ctx: typer.Context,
    silo: Annotated[str | None, typer.Option("--silo", help="The silo whose effective policy to show.")] = None,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the policy that applies to a silo (its own, else the tenant default)."""
    with caller(ctx) as (registry, actor):
        info = registry.retention_policy(actor, silo, tenant=tenant)
    emit(ctx, as_json, info, [_policy_line(info)])


@policy_app.command("list")
def policy_list(ctx: typer.Context, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List the tenant's stored policies, the tenant default first."""
    with caller(ctx) as (registry, actor):
        policies = registry.list_retention_policies(actor, tenant=tenant)
    emit(ctx, as_json, policies, [_policy_line(info) for info in policies])


def register(app: typer.Typer) -> None:
    """Add the ``data`` and ``retention`` groups."""
    app.add_typer(data_app, name="data")
    app.add_typer(retention_app, name="retention")

"""Registry commands: init, tenant, user, token, group, silo, grant, revoke, adapter, audit, keys, db.

Each command opens the registry named by ``--registry``/``$SEQR_HOME``, authenticates the token
from ``--token``/``$SEQR_TOKEN``, calls one :class:`seqr.registry.Registry` method and prints
the result (as JSON with ``--json``). Other command modules add subcommands to the groups
exported here (for example ``adapter_app``) instead of creating a second group of the same name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from seqr.cli.state import state
from seqr.errors import AuthenticationError, InvalidInputError
from seqr.registry import AdapterStatus, Permission, PrincipalKind, Registry, Role
from seqr.registry.views import JsonView, Principal

tenant_app = typer.Typer(help="Create and list tenants (registry admins only).", no_args_is_help=True)
user_app = typer.Typer(help="Create, list, disable and enable principals.", no_args_is_help=True)
token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
group_app = typer.Typer(help="Create groups and change their members.", no_args_is_help=True)
silo_app = typer.Typer(help="Create and list silos.", no_args_is_help=True)
adapter_app = typer.Typer(help="Manage the adapter versions of silos.", no_args_is_help=True)
audit_app = typer.Typer(help="Read and verify the audit log.", no_args_is_help=True)
keys_app = typer.Typer(help="Operate on the master key (needs the key file or $SEQR_MASTER_KEY).", no_args_is_help=True)
db_app = typer.Typer(help="Operate on the database schema.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
TenantOption = Annotated[str | None, typer.Option("--tenant", help="Tenant name (default: the caller's tenant).")]

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``15m``, ``90s`` or ``2w``."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise InvalidInputError(f"invalid duration {text!r}: use a positive number and a unit s, m, h, d or w, such as 30d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _registry_dir(ctx: typer.Context) -> Path:
    directory = state(ctx).registry
    if directory is None:
        raise InvalidInputError("no registry given: pass --registry DIR or set SEQR_HOME")
    return directory


@contextmanager
def open_registry(ctx: typer.Context) -> Iterator[Registry]:
    registry = Registry.open(_registry_dir(ctx))
    try:
        yield registry
    finally:
        registry.close()


@contextmanager
def caller(ctx: typer.Context) -> Iterator[tuple[Registry, Principal]]:
    """Open the registry and authenticate the caller's token."""
    token = state(ctx).token
    if not token:
        raise AuthenticationError("no token given: set SEQR_TOKEN or pass --token")
    with open_registry(ctx) as registry:
        yield registry, registry.authenticate(token)


def _plain(value: Any) -> Any:
    if isinstance(value, JsonView):
        return value.to_json()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def emit(ctx: typer.Context, as_json: bool, value: Any, lines: Sequence[str]) -> None:
    """Print ``value`` as JSON, or ``lines`` as text unless --quiet."""
    if as_json:
        typer.echo(json.dumps(_plain(value), indent=2, sort_keys=True, default=str))
    elif not state(ctx).quiet:
        for line in lines:
            typer.echo(line)


# init and db ---------------------------------------------------------------------------


def init_command(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Directory to create the registry in.")],
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="PostgreSQL URL (default: SQLite database inside --dir).")
    ] = None,
    tenant: Annotated[str, typer.Option("--tenant", help="Name of the first tenant.")] = "default",
    admin: Annotated[str, typer.Option("--admin", help="Name of the first registry admin.")] = "admin",
    as_json: JsonFlag = False,
) -> None:
    """Create a registry, its master key file (mode 0600) and a first admin; print the admin's token once.

    Example: seqr init --dir ./registry && export SEQR_HOME=./registry SEQR_TOKEN=<printed token>
    """
    registry, created = Registry.init(directory, database_url, tenant=tenant, admin=admin)
    registry.close()
    value = {"directory": str(directory), "tenant": tenant, "admin": admin, "token": created.token,
             "token_id": created.info.public_id}
    emit(ctx, as_json, value, [f"created registry in {directory}", f"token: {created.token}"])
    if not as_json:
        typer.echo("Store this token now: it is not shown again.", err=True)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Migrate the database to the latest schema. Needs the master key (key file or $SEQR_MASTER_KEY)."""
    revision = Registry.upgrade_database(_registry_dir(ctx))
    emit(ctx, as_json, {"revision": revision}, [f"database at revision {revision}"])


# tenants, principals, tokens, groups ---------------------------------------------------


@tenant_app.command("create")
def tenant_create(ctx: typer.Context, name: str, as_json: JsonFlag = False) -> None:
    """Create a tenant."""
    with caller(ctx) as (registry, actor):
        info = registry.create_tenant(actor, name)
    emit(ctx, as_json, info, [f"created tenant {info.name}"])


@tenant_app.command("list")
def tenant_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List tenants (only your own unless you are a registry admin)."""
    with caller(ctx) as (registry, actor):
        tenants = registry.list_tenants(actor)
    emit(ctx, as_json, tenants, [tenant.name for tenant in tenants])


@user_app.command("create")
def user_create(
    ctx: typer.Context,
    name: str,
    tenant: TenantOption = None,
    role: Annotated[Role, typer.Option("--role", help="Administrative role.")] = Role.MEMBER,
    service: Annotated[bool, typer.Option("--service", help="Create a service account instead of a user.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a principal (a user, or a service account with --service)."""
    kind = PrincipalKind.SERVICE if service else PrincipalKind.USER
    with caller(ctx) as (registry, actor):
        info = registry.create_principal(actor, name, tenant=tenant, kind=kind, role=role)
    emit(ctx, as_json, info, [f"created {kind.value} {info.tenant}/{info.name} ({info.role.value})"])


@user_app.command("list")
def user_list(ctx: typer.Context, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List the principals of a tenant."""
    with caller(ctx) as (registry, actor):
        principals = registry.list_principals(actor, tenant=tenant)
    emit(ctx, as_json, principals, [
        "\t".join([p.name, p.kind.value, p.role.value] + (["disabled"] if p.disabled else [])) for p in principals
    ])


def _set_disabled(ctx: typer.Context, name: str, tenant: str | None, disabled: bool, as_json: bool) -> None:
    with caller(ctx) as (registry, actor):
        info = registry.set_principal_disabled(actor, name, disabled, tenant=tenant)
    emit(ctx, as_json, info, [f"{'disabled' if disabled else 'enabled'} {info.tenant}/{info.name}"])


@user_app.command("disable")
def user_disable(ctx: typer.Context, name: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Disable a principal: its tokens stop working on the next request."""
    _set_disabled(ctx, name, tenant, True, as_json)


@user_app.command("enable")
def user_enable(ctx: typer.Context, name: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Enable a disabled principal again."""
    _set_disabled(ctx, name, tenant, False, as_json)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Argument(help="Principal to create the token for (default: yourself).")] = None,
    tenant: TenantOption = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime such as 30d, 12h or 2w (default: no expiry).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a token and print it once."""
    lifetime = parse_duration(expires_in) if expires_in is not None else None
    with caller(ctx) as (registry, actor):
        created = registry.create_token(actor, user, tenant=tenant, expires_in=lifetime)
    value = {"token": created.token, **created.info.to_json()}
    emit(ctx, as_json, value, [f"token: {created.token}", f"id: {created.info.public_id}"])
    if not as_json:
        typer.echo("Store this token now: it is not shown again.", err=True)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(help="The token's id, as shown by `seqr token list`.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a token; it is rejected from the next request on."""
    with caller(ctx) as (registry, actor):
        info = registry.revoke_token(actor, token_id)
    emit(ctx, as_json, info, [f"revoked token {info.public_id} of {info.tenant}/{info.principal}"])


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Argument(help="Only this principal's tokens.")] = None,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List tokens (ids and times only; secrets are never stored)."""
    with caller(ctx) as (registry, actor):
        tokens = registry.list_tokens(actor, user, tenant=tenant)
    emit(ctx, as_json, tokens, [
        f"{t.public_id}\t{t.principal}\texpires {t.expires_at or 'never'}\t{'revoked' if t.revoked_at else 'valid'}"
        for t in tokens
    ])


@group_app.command("create")
def group_create(ctx: typer.Context, name: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Create a group."""
    with caller(ctx) as (registry, actor):
        info = registry.create_group(actor, name, tenant=tenant)
    emit(ctx, as_json, info, [f"created group {info.tenant}/{info.name}"])


@group_app.command("add")
def group_add(ctx: typer.Context, group: str, user: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Add a principal to a group."""
    with caller(ctx) as (registry, actor):
        info = registry.set_group_member(actor, group, user, True, tenant=tenant)
    emit(ctx, as_json, info, [f"group {info.name}: {', '.join(info.members)}"])


@group_app.command("remove")
def group_remove(ctx: typer.Context, group: str, user: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Remove a principal from a group."""
    with caller(ctx) as (registry, actor):
        info = registry.set_group_member(actor, group, user, False, tenant=tenant)
    emit(ctx, as_json, info, [f"group {info.name}: {', '.join(info.members) or '(no members)'}"])


@group_app.command("list")
def group_list(ctx: typer.Context, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List groups and their members."""
    with caller(ctx) as (registry, actor):
        groups = registry.list_groups(actor, tenant=tenant)
    emit(ctx, as_json, groups, [f"{g.name}\t{', '.join(g.members)}" for g in groups])


# silos and grants ----------------------------------------------------------------------


@silo_app.command("create")
def silo_create(ctx: typer.Context, name: str, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """Create a silo."""
    with caller(ctx) as (registry, actor):
        info = registry.create_silo(actor, name, tenant=tenant)
    emit(ctx, as_json, info, [f"created silo {info.tenant}/{info.name}"])


@silo_app.command("list")
def silo_list(ctx: typer.Context, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List silos (all for tenant admins, else those you hold a grant on)."""
    with caller(ctx) as (registry, actor):
        silos = registry.list_silos(actor, tenant=tenant)
    emit(ctx, as_json, silos, [silo.name for silo in silos])


UserOption = Annotated[str | None, typer.Option("--user", help="Principal that receives (or loses) the grant.")]
GroupOption = Annotated[str | None, typer.Option("--group", help="Group that receives (or loses) the grant.")]
PermissionOption = Annotated[Permission, typer.Option("--permission", help="Permission on the silo.")]


def grant_command(
    ctx: typer.Context,
    silo: str,
    tenant: TenantOption = None,
    user: UserOption = None,
    group: GroupOption = None,
    permission: PermissionOption = Permission.USE,
    as_json: JsonFlag = False,
) -> None:
    """Grant a permission on a silo to a principal (--user) or a group (--group)."""
    with caller(ctx) as (registry, actor):
        info = registry.grant(actor, silo, permission, principal=user, group=group, tenant=tenant)
    emit(ctx, as_json, info, [f"granted {permission.value} on {info.tenant}/{silo} to {user or 'group ' + str(group)}"])


def revoke_command(
    ctx: typer.Context,
    silo: str,
    tenant: TenantOption = None,
    user: UserOption = None,
    group: GroupOption = None,
    permission: PermissionOption = Permission.USE,
    as_json: JsonFlag = False,
) -> None:
    """Remove a grant; it stops applying on the grantee's next request."""
    with caller(ctx) as (registry, actor):
        info = registry.revoke(actor, silo, permission, principal=user, group=group, tenant=tenant)
    emit(ctx, as_json, info, [f"revoked {permission.value} on {info.tenant}/{silo} from {user or 'group ' + str(group)}"])


# adapters, audit, keys -----------------------------------------------------------------


@adapter_app.command("list")
def adapter_list(
    ctx: typer.Context,
    tenant: TenantOption = None,
    silo: Annotated[str | None, typer.Option("--silo", help="Only this silo's versions.")] = None,
    status: Annotated[AdapterStatus | None, typer.Option("--status", help="Only versions in this status.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List adapter versions (all for tenant admins, else those of silos you hold a grant on)."""
    with caller(ctx) as (registry, actor):
        versions = registry.list_adapter_versions(actor, tenant=tenant, silo=silo, status=status)
    emit(ctx, as_json, versions, [
        f"{v.id}\t{v.silo}\t{v.library}@{v.number}\t{v.status.value}" for v in versions
    ])


VersionArgument = Annotated[int, typer.Argument(help="Adapter version id, as shown by `seqr adapter list`.")]


@adapter_app.command("activate")
def adapter_activate(ctx: typer.Context, version_id: VersionArgument, as_json: JsonFlag = False) -> None:
    """Make a version active; the silo's previously active version of its library is retired."""
    with caller(ctx) as (registry, actor):
        info = registry.activate_adapter_version(actor, version_id)
    emit(ctx, as_json, info, [f"activated {info.tenant}/{info.silo}/{info.library}@{info.number}"])


@adapter_app.command("retire")
def adapter_retire(ctx: typer.Context, version_id: VersionArgument, as_json: JsonFlag = False) -> None:
    """Retire a version: it is no longer routed to, but can be activated again."""
    with caller(ctx) as (registry, actor):
        info = registry.retire_adapter_version(actor, version_id)
    emit(ctx, as_json, info, [f"retired {info.tenant}/{info.silo}/{info.library}@{info.number}"])


@adapter_app.command("destroy")
def adapter_destroy(ctx: typer.Context, version_id: VersionArgument, as_json: JsonFlag = False) -> None:
    """Destroy a version that is not active by crypto-shredding its keys. This cannot be undone."""
    with caller(ctx) as (registry, actor):
        info = registry.destroy_adapter_version(actor, version_id)
    emit(ctx, as_json, info, [f"destroyed {info.tenant}/{info.silo}/{info.library}@{info.number}"])


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Number of latest events to show.")] = 50,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the latest audit events, newest first."""
    with caller(ctx) as (registry, actor):
        events = registry.list_audit_events(actor, limit=limit, tenant=tenant)
    emit(ctx, as_json, [event.__dict__ for event in events], [
        f"{e.id}\t{e.occurred_at.isoformat()}\t{e.actor}\t{e.action}\t{e.target}\t{e.outcome}" for e in events
    ])


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Verify the audit hash chain; fail and name the first event that was edited, deleted or reordered."""
    with caller(ctx) as (registry, actor):
        report = registry.verify_audit(actor)
    emit(ctx, as_json, {"events": report.events, "head": report.head, "ok": True},
         [f"audit log intact: {report.events} events"])


@keys_app.command("rotate")
def keys_rotate(
    ctx: typer.Context,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Data keys rewrapped per transaction.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Add a master key version and rewrap every data key under it; rerun to resume an interrupted rotation.

    Needs the master key itself (the registry's key file or $SEQR_MASTER_KEY) and a registry admin token.
    """
    with caller(ctx) as (registry, actor):
        report = registry.rotate_keys(actor, batch_size=batch_size)
    emit(ctx, as_json, report.__dict__, [
        f"{'resumed' if report.resumed else 'rotated'} to master key version {report.master_version}: "
        f"{report.rewrapped} data keys rewrapped"
    ])


def register(app: typer.Typer) -> None:
    """Add the registry commands to the root app."""
    app.command("init")(init_command)
    app.command("grant")(grant_command)
    app.command("revoke")(revoke_command)
    for name, group in (
        ("tenant", tenant_app), ("user", user_app), ("token", token_app), ("group", group_app),
        ("silo", silo_app), ("adapter", adapter_app), ("audit", audit_app), ("keys", keys_app), ("db", db_app),
    ):
        app.add_typer(group, name=name)

"""Read-only values the registry API returns; none of them contains a secret except ``CreatedToken.token``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import torch

from seqr.registry.enums import AdapterStatus, Permission, PrincipalKind, Role
from seqr.routing.factors import AdapterFactors


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``token_id`` is the token it logged in with (None for in-process use)."""

    id: int
    name: str
    tenant_id: int
    tenant: str
    kind: PrincipalKind
    role: Role
    token_id: int | None = None

    def describe(self) -> str:
        return f"{self.tenant}/{self.name}"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class JsonView:
    def to_json(self) -> dict[str, Any]:
        return {key: _json_value(value) for key, value in asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class TenantInfo(JsonView):
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class PrincipalInfo(JsonView):
    id: int
    tenant: str
    name: str
    kind: PrincipalKind
    role: Role
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class TokenInfo(JsonView):
    public_id: str
    tenant: str
    principal: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class CreatedToken:
    """A new token: ``token`` is the secret, returned only here and never stored."""

    token: str
    info: TokenInfo


@dataclass(frozen=True)
class GroupInfo(JsonView):
    id: int
    tenant: str
    name: str
    members: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SiloInfo(JsonView):
    id: int
    tenant: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class GrantInfo(JsonView):
    id: int
    tenant: str
    silo: str
    permission: Permission
    principal: str | None
    group: str | None


@dataclass(frozen=True)
class LibraryInfo(JsonView):
    id: int
    tenant: str
    name: str
    base_model_fingerprint: str
    target_modules: list[str]
    rank: int
    alpha: float
    seed: int
    a_fingerprint: str
    base_model_source: str | None = None


@dataclass(frozen=True)
class Library:
    """A library with its shared A, already checked against its fingerprint."""

    info: LibraryInfo
    shared_a: dict[str, torch.Tensor]  # full module name -> A (r, n)


@dataclass(frozen=True)
class AdapterVersionInfo(JsonView):
    """One adapter version. ``manifest``, ``config`` and ``metrics`` are empty in the values that
    ``Registry.authorized_adapters`` returns, which skips reading them."""

    id: int
    tenant: str
    silo: str
    library: str
    number: int
    status: AdapterStatus
    manifest: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    destroyed_at: datetime | None


@dataclass(frozen=True)
class LoadedAdapter:
    info: AdapterVersionInfo
    factors: AdapterFactors


@dataclass(frozen=True)
class DocumentInfo(JsonView):
    id: int
    tenant: str
    silo: str
    size: int
    added_at: datetime
    expires_at: datetime | None
    removed_at: datetime | None


@dataclass(frozen=True)
class DocumentContent:
    info: DocumentInfo
    content: bytes
    metadata: dict[str, Any]

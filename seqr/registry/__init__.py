"""The encrypted, access-controlled, multi-tenant registry of adapters.

Start with :meth:`Registry.init` or :meth:`Registry.open`, authenticate a token with
:meth:`Registry.authenticate`, and pass the returned :class:`Principal` to every operation.
docs/architecture.md describes the API and docs/security.md the security model.
"""

from seqr.registry.audit import AuditChainError, AuditRecord, AuditReport
from seqr.registry.enums import AdapterStatus, AuditAction, Permission, PrincipalKind, Role
from seqr.registry.keys import EnvKeyProvider, FileKeyProvider, KeyProvider
from seqr.registry.registry import Registry
from seqr.registry.rotation import RotationReport
from seqr.registry.views import (
    AdapterVersionInfo,
    CreatedToken,
    DocumentContent,
    DocumentInfo,
    GrantInfo,
    GroupInfo,
    Library,
    LibraryInfo,
    LoadedAdapter,
    Principal,
    PrincipalInfo,
    SiloInfo,
    TenantInfo,
    TokenInfo,
)

__all__ = [
    "AdapterStatus",
    "AdapterVersionInfo",
    "AuditAction",
    "AuditChainError",
    "AuditRecord",
    "AuditReport",
    "CreatedToken",
    "DocumentContent",
    "DocumentInfo",
    "EnvKeyProvider",
    "FileKeyProvider",
    "GrantInfo",
    "GroupInfo",
    "KeyProvider",
    "Library",
    "LibraryInfo",
    "LoadedAdapter",
    "Permission",
    "Principal",
    "PrincipalInfo",
    "PrincipalKind",
    "Registry",
    "Role",
    "RotationReport",
    "SiloInfo",
    "TenantInfo",
    "TokenInfo",
]

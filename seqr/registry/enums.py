"""Fixed option sets of the registry, stored in the database as their string values."""

from __future__ import annotations

from enum import StrEnum


class PrincipalKind(StrEnum):
    """Whether a principal is a person or a program."""

    USER = "user"
    SERVICE = "service"


class Role(StrEnum):
    """A principal's administrative reach, independent of per-silo grants.

    ``registry_admin`` manages every tenant; ``tenant_admin`` manages its own tenant; ``member``
    acts only through grants.
    """

    MEMBER = "member"
    TENANT_ADMIN = "tenant_admin"
    REGISTRY_ADMIN = "registry_admin"


class Permission(StrEnum):
    """The permission a grant gives on a silo. ``admin`` implies ``train`` and ``use``; the others imply nothing."""

    USE = "use"
    TRAIN = "train"
    ADMIN = "admin"

    def implied_by(self) -> frozenset[Permission]:
        """Return the granted permissions that include this one."""
        if self is Permission.ADMIN:
            return frozenset({Permission.ADMIN})
        return frozenset({self, Permission.ADMIN})


class AdapterStatus(StrEnum):
    """Life cycle of an adapter version: training -> active -> retired -> destroyed."""

    TRAINING = "training"
    ACTIVE = "active"
    RETIRED = "retired"
    DESTROYED = "destroyed"


class BlobField(StrEnum):
    """The encrypted payload of its owner that a blob contains."""

    FACTORS = "factors"
    CONTENT = "content"
    METADATA = "metadata"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


class AuditAction(StrEnum):
    """Security-relevant actions recorded in the audit log."""

    LOGIN = "login"
    TENANT_CREATE = "tenant.create"
    PRINCIPAL_CREATE = "principal.create"
    PRINCIPAL_DISABLE = "principal.disable"
    PRINCIPAL_ENABLE = "principal.enable"
    TOKEN_CREATE = "token.create"
    TOKEN_REVOKE = "token.revoke"
    GROUP_CREATE = "group.create"
    GROUP_ADD = "group.add"
    GROUP_REMOVE = "group.remove"
    SILO_CREATE = "silo.create"
    GRANT = "grant"
    REVOKE = "revoke"
    LIBRARY_ADD = "library.add"
    ADAPTER_ADD = "adapter.add"
    ADAPTER_ACTIVATE = "adapter.activate"
    ADAPTER_RETIRE = "adapter.retire"
    ADAPTER_DESTROY = "adapter.destroy"
    DOCUMENT_ADD = "document.add"
    DOCUMENT_REMOVE = "document.remove"
    KEYS_ROTATE = "keys.rotate"
    INTEGRITY_FAILURE = "integrity.failure"
    RETENTION_POLICY = "retention.policy"
    REMOVAL_REQUEST = "removal.request"
    RETENTION_RUN = "retention.run"
    RETENTION_RETRAIN = "retention.retrain"


class RunStatus(StrEnum):
    """State of one retention run: ``running`` until it finishes, fails, or a later run finds it killed."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

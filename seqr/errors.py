"""The exception tree shared by every seqr subpackage.

Every error the project raises on purpose derives from :class:`SeqrError`, so callers can catch one
type. Errors raised because of a third-party failure (``cryptography.exceptions.InvalidTag``,
``sqlalchemy.exc.IntegrityError``) are raised ``from`` that original. Messages name the offending
value and say what to do; they never contain key bytes or token secrets.

    SeqrError
    ├── InvalidInputError (also ValueError)   bad shapes, NaN weights, unknown options
    ├── ModelError                            a base model cannot be found, loaded or matched
    ├── TrainingError                         training or calibration failed or was interrupted
    ├── AdapterFormatError                    a PEFT directory or adapter file is unusable
    └── RegistryError                         anything the registry rejects
        ├── NotFoundError                     missing, or not visible to the caller (same error)
        ├── AuthenticationError               unknown, malformed, expired or revoked token
        ├── PermissionDeniedError             the caller lacks a permission on an object it can see
        ├── ConflictError                     the object already exists or is in the wrong state
        ├── IntegrityError                    a blob, wrapped key or audit chain fails verification
        ├── KeyProviderError                  a master key is missing, unreadable or wrong
        └── LockHeldError                     another job holds the registry's lock
"""

from __future__ import annotations


class SeqrError(Exception):
    """Base class of every error seqr raises on purpose."""


class InvalidInputError(SeqrError, ValueError):
    """An argument has the wrong shape, type, value or contains NaN/Inf."""


class ModelError(SeqrError):
    """A base model cannot be found, loaded, or does not match what an adapter expects."""


class TrainingError(SeqrError):
    """Training or calibration failed or was interrupted; nothing was written."""


class AdapterFormatError(SeqrError):
    """An adapter directory or file is missing keys, has wrong shapes, or uses an unsafe format."""


class RegistryError(SeqrError):
    """An operation on the registry was rejected."""


class NotFoundError(RegistryError):
    """The object does not exist or is not visible to the caller; the two cases are indistinguishable."""


class AuthenticationError(RegistryError):
    """The token is malformed, unknown, expired or revoked, or its principal is disabled."""


class PermissionDeniedError(RegistryError):
    """The caller may see the object but lacks the permission the operation needs."""


class ConflictError(RegistryError):
    """The object already exists, or is in a state that does not allow the operation."""


class IntegrityError(RegistryError):
    """Stored data (a blob, a wrapped key, the audit chain) failed verification and was not used."""


class KeyProviderError(RegistryError):
    """A master key is missing, unreadable, malformed, or not the one the data was wrapped with."""


class LockHeldError(RegistryError):
    """Another process holds the registry lock this job needs."""

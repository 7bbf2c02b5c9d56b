"""seqr-registry: an access-controlled, multi-tenant registry of LoRA adapters with SEQR routing.

Applications start with :func:`open_registry` and :meth:`Registry.login`; see the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seqr.errors import SeqrError

if TYPE_CHECKING:
    from seqr.api.session import Session, open_registry
    from seqr.registry.registry import Registry

__version__ = "0.1.0"

__all__ = ["Registry", "SeqrError", "Session", "__version__", "open_registry"]

_LAZY = {
    "open_registry": ("seqr.api.session", "open_registry"),
    "Session": ("seqr.api.session", "Session"),
    "Registry": ("seqr.registry.registry", "Registry"),
}


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import seqr` (and the CLI's start) does not load torch.
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'seqr' has no attribute {name!r}")

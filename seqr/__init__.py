"""seqr-registry: an access-controlled, multi-tenant registry of LoRA adapters with SEQR routing."""

from seqr.errors import SeqrError

__version__ = "0.1.0"

__all__ = ["SeqrError", "__version__"]

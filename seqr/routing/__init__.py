"""SEQR routing among LoRA adapters that share one frozen A, and the baseline routers."""

from seqr.routing.factors import AdapterFactors, ModuleFactors

__all__ = ["AdapterFactors", "ModuleFactors"]

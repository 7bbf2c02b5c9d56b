"""SEQR routing among LoRA adapters that share one frozen A, the baseline routers, and routed layers.

Plain tensors: :func:`make_router`. Hugging Face models: :func:`attach_routing`.
"""

from seqr.routing.attach import RoutedModel, attach_routing
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.routing.layer import RoutedLinear
from seqr.routing.library import StackedFactors
from seqr.routing.methods import Granularity, RoutingConfig, RoutingMethod
from seqr.routing.router import RouteDecision, Router
from seqr.routing.routers import build_router, make_router
from seqr.routing.trace import NO_ADAPTER, LayerRecord, Phase, RoutingTrace

__all__ = [
    "NO_ADAPTER",
    "AdapterFactors",
    "Granularity",
    "LayerRecord",
    "ModuleFactors",
    "Phase",
    "RouteDecision",
    "RoutedLinear",
    "RoutedModel",
    "Router",
    "RoutingConfig",
    "RoutingMethod",
    "RoutingTrace",
    "StackedFactors",
    "attach_routing",
    "build_router",
    "make_router",
]

"""The application API: log in with a token, load a model routed among your adapters, generate."""

from seqr.api.explain import ModuleRoute, RouteExplanation
from seqr.api.model import RoutedLanguageModel
from seqr.api.session import Session, default_device, login, open_registry
from seqr.api.timings import LoadTimings

__all__ = [
    "LoadTimings",
    "ModuleRoute", "RouteExplanation", "RoutedLanguageModel", "Session", "default_device", "login", "open_registry"]

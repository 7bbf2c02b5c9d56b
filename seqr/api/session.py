"""An authenticated session: the entry point of applications.

>>> registry = open_registry()                      # doctest: +SKIP
>>> session = login(registry, os.environ["SEQR_TOKEN"])     # doctest: +SKIP
>>> model = session.load_model()                    # doctest: +SKIP
>>> model.generate(["Summarise our refund policy."])      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from pathlib import Path

import torch

from seqr.api.cache import AdapterCache
from seqr.api.model import RoutedLanguageModel
from seqr.errors import InvalidInputError, ModelError, NotFoundError
from seqr.registry.registry import Registry
from seqr.registry.views import Library, Principal
from seqr.routing import Granularity, RoutingMethod
from seqr.training.base_model import BaseModel, load_base_model

logger = logging.getLogger(__name__)

_caches: weakref.WeakKeyDictionary[Registry, dict[torch.device, AdapterCache]] = weakref.WeakKeyDictionary()
_base_models: dict[str, BaseModel] = {}
_base_models_lock = threading.Lock()


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def adapter_cache(registry: Registry, device: torch.device) -> AdapterCache:
    """The device cache of decrypted adapters shared by every session of ``registry`` in this process."""
    per_device = _caches.setdefault(registry, {})
    return per_device.setdefault(device, AdapterCache(device))


def _load_base(source: str | Path | None) -> BaseModel:
    """Load a base model once per process; callers get a private copy they may modify."""
    key = "<default>" if source is None else str(Path(source).expanduser()) if Path(str(source)).expanduser().exists() else str(source)
    with _base_models_lock:
        cached = _base_models.get(key)
        if cached is None:
            cached = _base_models[key] = load_base_model(source)
    return BaseModel(
        model=copy.deepcopy(cached.model), tokenizer=copy.deepcopy(cached.tokenizer),
        name=cached.name, fingerprint=cached.fingerprint,
    )


class Session:
    """A logged-in principal of a registry. Every request re-checks the token (see RoutedLanguageModel)."""

    def __init__(self, registry: Registry, principal: Principal) -> None:
        self.registry = registry
        self.principal = principal

    def authorized_silos(self) -> list[str]:
        """The silos whose active adapters this principal may use, sorted."""
        return sorted({version.silo for version in self.registry.authorized_adapters(self.principal)})

    def load_model(
        self,
        base_model: str | Path | BaseModel | None = None,
        *,
        library: str | None = None,
        device: torch.device | str | None = None,
        method: RoutingMethod | str = RoutingMethod.SEQR,
        granularity: Granularity | str = Granularity.TOKEN,
    ) -> RoutedLanguageModel:
        """Load ``base_model`` with only this principal's authorised adapters attached and routed.

        ``base_model`` is a model directory, a GGUF file, a hub id, an already loaded
        :class:`BaseModel` (which is modified in place), or None for the default
        SmolLM2-135M-Instruct. ``library`` picks the library when the principal's adapters for
        this base model come from several. Raises ModelError when the base model's weights differ
        from the library's, and NotFoundError when the principal has no authorised adapter.
        """
        target = torch.device(device) if device is not None else default_device()
        base = base_model if isinstance(base_model, BaseModel) else _load_base(base_model)
        base.model.to(target).eval()
        chosen = self._choose_library(base, library)
        return RoutedLanguageModel(
            self, base, chosen, device=target, cache=adapter_cache(self.registry, target),
            method=RoutingMethod.parse(method), granularity=Granularity.parse(granularity),
        )

    def _choose_library(self, base: BaseModel, name: str | None) -> Library:
        if name is not None:
            library = self.registry.library(self.principal, name)
            _check_base_model(base, library)
            return library
        names = sorted({version.library for version in self.registry.authorized_adapters(self.principal)})
        if not names:
            raise NotFoundError(
                f"{self.principal.describe()} has no authorised adapter; ask an administrator for a grant "
                "(`seqr grant SILO --user NAME`) on a silo with an active adapter"
            )
        libraries = [self.registry.library(self.principal, library_name) for library_name in names]
        matching = [library for library in libraries if library.info.base_model_fingerprint == base.fingerprint]
        if not matching:
            _check_base_model(base, libraries[0])
        if len(matching) > 1:
            raise InvalidInputError(
                f"the authorised adapters for base model {base.name} come from libraries "
                f"{', '.join(lib.info.name for lib in matching)}; pass library=NAME to pick one"
            )
        return matching[0]


def _check_base_model(base: BaseModel, library: Library) -> None:
    if library.info.base_model_fingerprint != base.fingerprint:
        raise ModelError(
            f"base model {base.name} (weights fingerprint {base.fingerprint[:12]}) differs from the base model "
            f"of library {library.info.name!r} (fingerprint {library.info.base_model_fingerprint[:12]}); "
            "load the model the library was created with"
        )


def login(registry: Registry, token: str) -> Session:
    """Authenticate ``token`` (audited as a login) and return its session."""
    return Session(registry, registry.authenticate(token))

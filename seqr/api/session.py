"""An authenticated session: the entry point of applications.

>>> registry = open_registry()                      # doctest: +SKIP
>>> session = registry.login(os.environ["SEQR_TOKEN"])      # doctest: +SKIP
>>> model = session.load_model()                    # doctest: +SKIP
>>> model.generate(["Summarise our refund policy."])      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import weakref
from pathlib import Path

import torch

from seqr.api.cache import AdapterCache
from seqr.api.model import RoutedLanguageModel
from seqr.errors import InvalidInputError, ModelError, NotFoundError
from seqr.registry.keys import FileKeyProvider, KeyProvider
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
    """Return the device cache of decrypted adapters that every session of ``registry`` in this process shares."""
    per_device = _caches.setdefault(registry, {})
    return per_device.setdefault(device, AdapterCache(device))


def model_source(source: str | Path | None) -> str | None:
    """Normalise a base model source: an existing path becomes absolute, a hub id stays as given."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    return str(source)


def load_shared_base(source: str | Path | None) -> BaseModel:
    """Load a base model once per process and return a copy that shares its weights.

    The copy's modules and tokenizer are its own, so attaching routing, moving the copy to
    another device or casting it leaves the cached model and other copies unchanged (see
    :func:`share_weights`). Writing to a weight in place would change every copy.
    """
    key = model_source(source) or "<default>"
    with _base_models_lock:
        cached = _base_models.get(key)
        if cached is None:
            cached = _base_models[key] = load_base_model(source)
    return BaseModel(
        model=share_weights(cached.model), tokenizer=copy.deepcopy(cached.tokenizer),
        name=cached.name, fingerprint=cached.fingerprint,
    )


def share_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Return a deep copy of ``model`` whose parameters and buffers share storage with the original.

    Every module object is copied, so replacing a submodule of the copy leaves the original
    alone. Every parameter of the copy is a new ``nn.Parameter`` over the original's storage.
    ``Module.to`` and ``Module.half`` assign the converted tensor to ``param.data`` of the existing
    parameter object (torch's default conversion), so they change only the copy. Tied weights
    stay tied.
    """
    memo: dict[int, object] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = torch.nn.Parameter(parameter.detach(), requires_grad=parameter.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer.detach()
    return copy.deepcopy(model, memo)


class Session:
    """A logged-in principal of a registry. Every request re-checks the token (see RoutedLanguageModel)."""

    def __init__(self, registry: Registry, principal: Principal) -> None:
        self.registry = registry
        self.principal = principal

    def authorized_silos(self) -> list[str]:
        """Return the sorted names of the silos whose active adapters this principal may use."""
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
        """Load a base model with only this principal's authorised adapters attached and routed.

        ``base_model`` is a model directory, a GGUF file, a hub id, or an already loaded
        :class:`BaseModel` (modified in place). None loads the library's recorded base model
        source (the default SmolLM2-135M-Instruct when it has none). ``library`` picks the library
        when the principal's adapters come from several. Raises ModelError when the base model's
        weights differ from the library's, and NotFoundError when the principal has no
        authorised adapter.
        """
        target = torch.device(device) if device is not None else default_device()
        candidates = self._candidate_libraries(library)
        if isinstance(base_model, BaseModel):
            base = base_model
        elif base_model is not None:
            base = load_shared_base(base_model)
        else:
            sources = {candidate.info.base_model_source for candidate in candidates}
            if len(sources) > 1:
                raise InvalidInputError(
                    f"the authorised adapters come from libraries with different base models ({sorted(map(str, sources))}); "
                    "pass base_model or library"
                )
            base = load_shared_base(sources.pop())
        # NOTE: on a device other than the CPU every model gets its own copy of the base weights,
        # because the weights shared by load_shared_base stay on the CPU.
        base.model.to(target).eval()
        chosen = _match_library(base, candidates)
        return RoutedLanguageModel(
            self, base, chosen, device=target, cache=adapter_cache(self.registry, target),
            method=RoutingMethod.parse(method), granularity=Granularity.parse(granularity),
        )

    def _candidate_libraries(self, name: str | None) -> list[Library]:
        if name is not None:
            return [self.registry.library(self.principal, name)]
        names = sorted({version.library for version in self.registry.authorized_adapters(self.principal)})
        if not names:
            raise NotFoundError(
                f"{self.principal.describe()} has no authorised adapter; ask an administrator for a grant "
                "(`seqr grant SILO --user NAME`) on a silo with an active adapter"
            )
        return [self.registry.library(self.principal, library_name) for library_name in names]


def _match_library(base: BaseModel, libraries: list[Library]) -> Library:
    matching = [library for library in libraries if library.info.base_model_fingerprint == base.fingerprint]
    if not matching:
        check_base_model(base, libraries[0])
    if len(matching) > 1:
        raise InvalidInputError(
            f"the authorised adapters for base model {base.name} come from libraries "
            f"{', '.join(library.info.name for library in matching)}; pass library=NAME to pick one"
        )
    return matching[0]


def check_base_model(base: BaseModel, library: Library) -> None:
    if library.info.base_model_fingerprint != base.fingerprint:
        raise ModelError(
            f"base model {base.name} (weights fingerprint {base.fingerprint[:12]}) differs from the base model "
            f"of library {library.info.name!r} (fingerprint {library.info.base_model_fingerprint[:12]}); "
            "load the model the library was created with"
        )


def login(registry: Registry, token: str) -> Session:
    """Authenticate ``token`` (audited as a login) and return its session."""
    return Session(registry, registry.authenticate(token))


HOME_VARIABLE = "SEQR_HOME"
DATABASE_URL_VARIABLE = "SEQR_DATABASE_URL"
MASTER_KEY_FILE_VARIABLE = "SEQR_MASTER_KEY_FILE"


def open_registry(
    home: str | Path | None = None,
    *,
    database_url: str | None = None,
    key_provider: KeyProvider | None = None,
) -> Registry:
    """Open the registry in ``home`` (default ``$SEQR_HOME``).

    ``database_url`` defaults to ``$SEQR_DATABASE_URL``, else the URL in the registry's
    ``registry.json``. The master key comes from ``key_provider``, else ``$SEQR_MASTER_KEY_FILE``,
    else ``$SEQR_MASTER_KEY``, else the key file in ``home``.
    """
    directory = home if home is not None else os.environ.get(HOME_VARIABLE)
    if not directory:
        raise InvalidInputError(f"no registry given: pass a directory or set {HOME_VARIABLE}")
    directory = Path(directory).expanduser()
    if key_provider is None and os.environ.get(MASTER_KEY_FILE_VARIABLE):
        key_provider = FileKeyProvider(directory, key_file=Path(os.environ[MASTER_KEY_FILE_VARIABLE]).expanduser())
    return Registry.open(
        directory, key_provider=key_provider, database_url=database_url or os.environ.get(DATABASE_URL_VARIABLE) or None
    )

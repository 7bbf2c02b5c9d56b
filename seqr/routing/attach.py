"""Attach routed LoRA layers to a ``transformers`` model, and detach them again.

>>> routed = attach_routing(model, shared_a, adapters, scaling=alpha / r)   # doctest: +SKIP
>>> with routed.capture() as trace:                                          # doctest: +SKIP
...     model.generate(**batch)
>>> routed.detach()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from seqr.errors import InvalidInputError, ModelError
from seqr.routing.factors import AdapterFactors
from seqr.routing.layer import Override, RoutedLinear, RoutingState
from seqr.routing.library import StackedFactors, check_shared_a
from seqr.routing.methods import DEFAULT_LAG_K, Granularity, RoutingConfig, RoutingMethod
from seqr.routing.trace import NO_ADAPTER, Phase, RoutingTrace

logger = logging.getLogger(__name__)


class RoutedModel:
    """A model with routed layers attached; detach (or leave the ``with`` block) to restore it.

    ``adapter_ids`` are the candidates in routing order: a candidate position in scores and
    indices is a position in this tuple. ``layers`` maps each adapted module name to its layer.
    """

    def __init__(self, model: nn.Module, layers: dict[str, RoutedLinear], originals: dict[str, nn.Linear],
                 adapter_ids: tuple[str, ...], state: RoutingState) -> None:
        self.model = model
        self.layers = layers
        self.adapter_ids = adapter_ids
        self._originals = originals
        self._state = state
        self._forward_signature = inspect.signature(model.forward)
        self._hooks = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        self._attached = True

    # Lifecycle.

    @property
    def attached(self) -> bool:
        return self._attached

    def detach(self) -> nn.Module:
        """Put the original ``nn.Linear`` objects back, remove the hooks and return the model."""
        if not self._attached:
            return self.model
        for name, original in self._originals.items():
            _set_submodule(self.model, name, original)
        for hook in self._hooks:
            hook.remove()
        self._attached = False
        logger.info("detached routing from %d modules", len(self._originals))
        return self.model

    def __enter__(self) -> RoutedModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def reset(self) -> None:
        """Forget the per-sequence choices kept for generated tokens (a new prompt batch chooses anew)."""
        for layer in self.layers.values():
            layer.reset()

    # Overrides.

    def index_of(self, adapter_id: str) -> int:
        try:
            return self.adapter_ids.index(adapter_id)
        except ValueError:
            raise InvalidInputError(
                f"adapter {adapter_id!r} is not in the candidate set {list(self.adapter_ids)[:10]}; "
                "attach it first"
            ) from None

    @contextmanager
    def forced(self, adapter_id: str) -> Iterator[RoutedModel]:
        """Apply ``adapter_id`` to every token at every adapted module inside the block (no routing)."""
        index = self.index_of(adapter_id)
        with self._override(Override.FORCED, index):
            yield self

    @contextmanager
    def base(self) -> Iterator[RoutedModel]:
        """Run the base model, with no adapter, inside the block."""
        with self._override(Override.BASE, NO_ADAPTER):
            yield self

    @contextmanager
    def choose_from(self, mask: torch.Tensor) -> Iterator[RoutedModel]:
        """Make per-sequence choices from the tokens marked 1 in ``mask`` (batch, seq), such as the prompt.

        Useful for a full forward pass over prompt and answer (scoring a completion), where the
        attention mask would also count the answer's tokens.
        """
        previous = self._state.selection_mask
        self._state.selection_mask = mask
        try:
            yield self
        finally:
            self._state.selection_mask = previous

    @contextmanager
    def capture(self, reference_methods: Sequence[RoutingMethod | str] = ()) -> Iterator[RoutingTrace]:
        """Record every routing decision made inside the block into the yielded :class:`RoutingTrace`.

        ``reference_methods`` (for example ``["naive"]``) are also scored on the same layer inputs,
        so a caller can compare SEQR with NAIVE on real activations without a second pass.
        """
        if self._state.trace is not None:
            raise InvalidInputError("a capture is already running on this model; nest no captures")
        trace = RoutingTrace(adapter_ids=self.adapter_ids)
        self._state.trace = trace
        self._state.trace_methods = tuple(RoutingMethod.parse(m) for m in reference_methods)
        try:
            yield trace
        finally:
            self._state.trace = None
            self._state.trace_methods = ()

    @contextmanager
    def _override(self, override: Override, index: int) -> Iterator[None]:
        previous = (self._state.override, self._state.forced_index)
        self._state.override, self._state.forced_index = override, index
        try:
            yield
        finally:
            self._state.override, self._state.forced_index = previous

    # Hooks on the wrapped model's forward.

    def _before_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            arguments = self._forward_signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            arguments = kwargs
        mask = arguments.get("attention_mask")
        # transformers 5 names the KV cache argument ``cache``; 4.x named it ``past_key_values``.
        past = arguments.get("cache", arguments.get("past_key_values"))
        self._state.attention_mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        self._state.phase = Phase.DECODE if _cached_length(past) > 0 else Phase.PREFILL

    def _after_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._state.attention_mask = None
        self._state.phase = None


def _cached_length(past: Any) -> int:
    if past is None:
        return 0
    get_length = getattr(past, "get_seq_length", None)
    if callable(get_length):
        return int(get_length())
    return 0


def attach_routing(
    model: nn.Module,
    shared_a: Mapping[str, torch.Tensor],
    adapters: Mapping[str, AdapterFactors],
    *,
    scaling: float,
    method: RoutingMethod | str = RoutingMethod.SEQR,
    granularity: Granularity | str = Granularity.TOKEN,
    top_k: int = 1,
    lag_k: int = DEFAULT_LAG_K,
    use_calibration: bool = True,
) -> RoutedModel:
    """Replace every module named in ``shared_a`` by a :class:`RoutedLinear` over ``adapters``.

    ``shared_a`` maps full module names (``model.layers.0.self_attn.q_proj``) to the library's
    shared A (r, n). ``adapters`` maps adapter ids to their factors: it is the candidate set, in
    routing order, and nothing outside it is read. ``scaling`` is the LoRA alpha / r. ``lag_k``
    is capped at the number of candidates. The stacked device tensors are built here, once, by
    :func:`stack_adapters`; :func:`attach_stacked` attaches stacks built earlier.

    Raises :class:`ModelError` when a module is missing or not an ``nn.Linear`` (or is already
    routed), and :class:`InvalidInputError` for an empty candidate set, an adapter that lacks a
    module, shapes that do not match the module, NaN or Inf, or sigma <= 0.
    """
    _check_scaling(scaling)
    stacks = stack_adapters(model, shared_a, adapters, use_calibration=use_calibration)
    return attach_stacked(
        model, stacks, tuple(adapters), scaling=scaling, method=method, granularity=granularity,
        top_k=top_k, lag_k=lag_k, use_calibration=use_calibration,
    )


def stack_adapters(
    model: nn.Module,
    shared_a: Mapping[str, torch.Tensor],
    adapters: Mapping[str, AdapterFactors],
    *,
    use_calibration: bool = True,
    check_values: bool = True,
) -> dict[str, StackedFactors]:
    """Validate ``adapters`` against the modules of ``model`` and stack them per module.

    Returns one :class:`StackedFactors` per module of ``shared_a``, on the device of that
    module's weight, with the adapters in the order of ``adapters``. ``check_values=False``
    skips the NaN and Inf check of Q and R, for factors already checked (the registry's codec
    checks every adapter it decodes). Raises as :func:`attach_routing` does.
    """
    if not adapters:
        raise InvalidInputError("the candidate set is empty; pass at least one adapter to route among")
    if not shared_a:
        raise InvalidInputError("shared_a names no module; pass the library's A for each target module")
    originals = {name: _linear(model, name) for name in shared_a}
    _check_adapter_modules(shared_a, adapters)

    adapter_ids = tuple(adapters)
    stacks: dict[str, StackedFactors] = {}
    for name, a in shared_a.items():
        original = originals[name]
        check_shared_a(a)
        _check_in_features(name, a, original)
        stacks[name] = StackedFactors.from_module_factors(
            a,
            [adapters[adapter_id].modules[name] for adapter_id in adapter_ids],
            names=[f"adapter {adapter_id!r} at {name!r}" for adapter_id in adapter_ids],
            use_calibration=use_calibration,
            device=original.weight.device,
            out_features=original.out_features,
            check_values=check_values,
        )
    return stacks


def attach_stacked(
    model: nn.Module,
    stacks: Mapping[str, StackedFactors],
    adapter_ids: Sequence[str],
    *,
    scaling: float,
    method: RoutingMethod | str = RoutingMethod.SEQR,
    granularity: Granularity | str = Granularity.TOKEN,
    top_k: int = 1,
    lag_k: int = DEFAULT_LAG_K,
    use_calibration: bool = True,
) -> RoutedModel:
    """Attach routing over stacks made by :func:`stack_adapters`, without copying or re-checking them.

    ``stacks`` maps module names to their :class:`StackedFactors`, whose adapters are
    ``adapter_ids`` in that order. The routed layers only read the stacks, so several models
    may share them. Raises :class:`ModelError` for a missing, non-linear or already routed
    module, and :class:`InvalidInputError` when a stack does not fit its module or
    ``adapter_ids``.
    """
    _check_scaling(scaling)
    adapter_ids = tuple(adapter_ids)
    if not adapter_ids:
        raise InvalidInputError("the candidate set is empty; pass at least one adapter to route among")
    if not stacks:
        raise InvalidInputError("stacks is empty; pass the stacked factors of each target module")
    config = RoutingConfig(
        method=RoutingMethod.parse(method),
        top_k=top_k,
        lag_k=min(lag_k, max(1, len(adapter_ids))),
        use_calibration=use_calibration,
    )
    parsed_granularity = Granularity.parse(granularity)
    originals = {name: _linear(model, name) for name in stacks}

    state = RoutingState()
    layers: dict[str, RoutedLinear] = {}
    for name, factors in stacks.items():
        original = originals[name]
        _check_in_features(name, factors.a, original)
        if factors.num_adapters != len(adapter_ids) or factors.out_features != original.out_features:
            raise InvalidInputError(
                f"the stacked factors of {name!r} contain {factors.num_adapters} adapters with m={factors.out_features}, "
                f"but the candidate set has {len(adapter_ids)} and the module out_features={original.out_features}; "
                "stack the same adapters for this model with stack_adapters"
            )
        layers[name] = RoutedLinear(original, name, factors, config, scaling, parsed_granularity, state)

    for name, layer in layers.items():
        _set_submodule(model, name, layer)
    logger.info(
        "attached %s routing (%s) among %d adapters to %d modules",
        config.method.value, parsed_granularity.value, len(adapter_ids), len(layers),
    )
    return RoutedModel(model, layers, originals, adapter_ids, state)


def _check_scaling(scaling: float) -> None:
    if not math.isfinite(scaling):
        raise InvalidInputError(f"scaling must be a finite number (alpha / r), got {scaling}")


def _check_in_features(name: str, a: torch.Tensor, original: nn.Linear) -> None:
    if a.shape[1] != original.in_features:
        raise InvalidInputError(
            f"the shared A of {name!r} has n={a.shape[1]} but the module has in_features="
            f"{original.in_features}; the library was built for another base model"
        )


def _check_adapter_modules(shared_a: Mapping[str, torch.Tensor], adapters: Mapping[str, AdapterFactors]) -> None:
    wanted = set(shared_a)
    for adapter_id, factors in adapters.items():
        have = set(factors.modules)
        if missing := sorted(wanted - have):
            raise InvalidInputError(
                f"adapter {adapter_id!r} has no factors for modules {missing[:3]}; it was trained for other "
                "target modules, so leave it out of this library's candidate set"
            )
        if extra := sorted(have - wanted):
            raise InvalidInputError(
                f"adapter {adapter_id!r} has factors for modules {extra[:3]} that shared_a does not name; "
                "pass the shared A of every module the library adapts"
            )


def _linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError as error:
        raise ModelError(f"the model has no module named {name!r}; check the library's target modules") from error
    if isinstance(module, RoutedLinear):
        raise ModelError(f"module {name!r} is already routed; detach the earlier attachment first")
    if not isinstance(module, nn.Linear):
        raise ModelError(f"module {name!r} is a {type(module).__name__}, not an nn.Linear; it cannot be routed")
    return module


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)

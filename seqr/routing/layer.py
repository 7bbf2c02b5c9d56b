"""The routed LoRA layer: a frozen ``nn.Linear`` plus the routed update of its candidate adapters."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn

from seqr.errors import InvalidInputError
from seqr.routing.library import StackedFactors
from seqr.routing.methods import Granularity, RoutingConfig, RoutingMethod
from seqr.routing.router import RouteDecision, Router, float32_math
from seqr.routing.routers import build_router
from seqr.routing.trace import NO_ADAPTER, LayerRecord, Phase, RoutingTrace

logger = logging.getLogger(__name__)


class Override(str, Enum):
    """An override of routing, shared by every routed layer of one attachment."""

    NONE = "none"  # route normally
    FORCED = "forced"  # apply one given adapter to every token
    BASE = "base"  # apply no adapter: the base model's output


@dataclass
class RoutingState:
    """State shared by all routed layers of one attachment, set by :class:`RoutedModel` and its hooks.

    ``attention_mask`` (batch, seq) and ``phase`` describe the running model call; they are None
    when a layer is called outside the wrapped model's forward. ``selection_mask`` (batch, seq),
    when set, replaces the attention mask for choosing per-sequence adapters.
    """

    override: Override = Override.NONE
    forced_index: int = NO_ADAPTER
    attention_mask: torch.Tensor | None = None
    selection_mask: torch.Tensor | None = None
    phase: Phase | None = None
    trace: RoutingTrace | None = None
    trace_methods: tuple[RoutingMethod, ...] = field(default_factory=tuple)


class RoutedLinear(nn.Module):
    """y = W x + scaling * sum_j w_j Q_{i_j} R_{i_j} A x, routed among the candidates of this module.

    ``base_layer`` is the original ``nn.Linear``, kept as is so detaching restores it. The update
    is computed in float32 and cast to the base output's dtype.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        name: str,
        factors: StackedFactors,
        config: RoutingConfig,
        scaling: float,
        granularity: Granularity,
        state: RoutingState,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.name = name
        self.router: Router = build_router(factors, config)
        self.scaling = float(scaling)
        self.granularity = granularity
        self.state = state
        self._reference_routers: dict[RoutingMethod, Router] = {}
        self._sequence_choice: tuple[torch.Tensor, torch.Tensor] | None = None  # (b, k) indices, weights

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def reset(self) -> None:
        """Forget the per-sequence choice kept for generated tokens."""
        self._sequence_choice = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.base_layer(x)
        state = self.state
        if state.override is Override.BASE:
            if state.trace is not None:
                self._record_fixed(x, NO_ADAPTER)
            return output
        # The base layer follows the caller's autocast; routing and the update stay float32.
        with float32_math(x.device):
            if self._fused_applies(output):
                rows = x.reshape(-1, x.shape[-1]).to(torch.float32)
                if self.router.add_routed_update(rows, output.view(-1, output.shape[-1]), self.scaling):
                    return output
            update = self._routed_update(x)
        return output + update.to(output.dtype).view(*x.shape[:-1], -1)

    def _fused_applies(self, output: torch.Tensor) -> bool:
        """Return True when the router may add the update into ``output`` in place: plain top-1 token routing."""
        state = self.state
        return (
            state.override is Override.NONE
            and state.trace is None
            and self.granularity is Granularity.TOKEN
            and output.dtype == torch.float32
            and output.is_contiguous()
            and not (output.requires_grad and torch.is_grad_enabled())
        )

    def _routed_update(self, x: torch.Tensor) -> torch.Tensor:
        """Return scaling times the routed update of every token of ``x``, float32 (T, m); record it when capturing."""
        state = self.state
        batch, seq = _batch_and_seq(x)
        rows = x.reshape(-1, x.shape[-1]).to(torch.float32)  # (T, n)
        z = self.router.project(rows)  # (T, r)
        token_scores: torch.Tensor | None = None
        sequence_scores: torch.Tensor | None = None
        if state.override is Override.FORCED:
            decision = _fixed_decision(rows.shape[0], state.forced_index, rows.device)
        elif self.granularity is Granularity.TOKEN:
            decision = self.router.decide(self.router.ranking_scores(rows, z))
            token_scores = decision.scores
        else:
            decision, sequence_scores, token_scores = self._sequence_decision(rows, z, batch, seq)

        update = self.router.update_from_z(z, decision)  # (T, m)
        if state.trace is not None:
            self._record(rows, z, decision, token_scores, sequence_scores, batch, seq)
        return self.scaling * update

    def _sequence_decision(
        self, rows: torch.Tensor, z: torch.Tensor, batch: int, seq: int
    ) -> tuple[RouteDecision, torch.Tensor | None, torch.Tensor | None]:
        state = self.state
        keep = state.phase is Phase.DECODE and self._sequence_choice is not None
        if keep:
            indices, weights = self._sequence_choice  # type: ignore[misc]
            if indices.shape[0] != batch:
                raise InvalidInputError(
                    f"module {self.name!r} chose adapters for {indices.shape[0]} sequences at the prompt but "
                    f"the cached step has {batch}; call RoutedModel.reset() before a new batch"
                )
            sequence_scores = None
            token_scores = None
        else:
            mask = self._choice_mask(batch, seq, rows.device)
            sequence_scores, token_scores = self.router.sequence_scores(
                rows.view(batch, seq, -1), z.view(batch, seq, -1), mask
            )
            chosen = self.router.decide(sequence_scores)
            indices, weights = chosen.indices, chosen.weights  # (b, k)
            self._sequence_choice = (indices, weights)
        k = indices.shape[-1]
        decision = RouteDecision(
            indices=indices.unsqueeze(1).expand(batch, seq, k).reshape(-1, k),
            weights=weights.unsqueeze(1).expand(batch, seq, k).reshape(-1, k),
            scores=token_scores.reshape(batch * seq, -1) if token_scores is not None else torch.empty(0),
        )
        return decision, sequence_scores, token_scores

    def _choice_mask(self, batch: int, seq: int, device: torch.device) -> torch.Tensor:
        """Return the (b, s) float mask of tokens a per-sequence choice averages over."""
        mask = self.state.selection_mask if self.state.selection_mask is not None else self.state.attention_mask
        if mask is None or mask.ndim != 2 or mask.shape[0] != batch or mask.shape[1] < seq:
            return torch.ones(batch, seq, device=device)
        # A mask that also covers cached tokens ends with the columns of the tokens in this call.
        return mask[:, -seq:].to(device=device, dtype=torch.float32)

    def _reference_router(self, method: RoutingMethod) -> Router:
        if method not in self._reference_routers:
            config = RoutingConfig(
                method=method,
                lag_k=min(self.router.config.lag_k, self.router.num_adapters),
                use_calibration=self.router.config.use_calibration,
            )
            self._reference_routers[method] = build_router(self.router.factors, config)
        return self._reference_routers[method]

    def _record(
        self,
        rows: torch.Tensor,
        z: torch.Tensor,
        decision: RouteDecision,
        token_scores: torch.Tensor | None,
        sequence_scores: torch.Tensor | None,
        batch: int,
        seq: int,
    ) -> None:
        state = self.state
        assert state.trace is not None
        forced = state.override is Override.FORCED
        if token_scores is None and not forced:
            # Cached steps of per-sequence routing reuse the prompt's choice; score them for the record.
            token_scores = self.router.ranking_scores(rows, z)
        extra = {
            method: self._reference_router(method).token_scores(rows, z).view(batch, seq, -1).detach()
            for method in state.trace_methods
        }
        k = decision.indices.shape[-1]
        state.trace.add(
            self.name,
            LayerRecord(
                indices=decision.indices.view(batch, seq, k).detach(),
                weights=decision.weights.view(batch, seq, k).detach(),
                scores=None if token_scores is None else token_scores.reshape(batch, seq, -1).detach(),
                phase=state.phase or Phase.PREFILL,
                sequence_scores=None if sequence_scores is None else sequence_scores.detach(),
                attention_mask=self._record_mask(batch, seq),
                extra_scores=extra,
            ),
        )

    def _record_fixed(self, x: torch.Tensor, index: int) -> None:
        batch, seq = _batch_and_seq(x)
        assert self.state.trace is not None
        self.state.trace.add(
            self.name,
            LayerRecord(
                indices=torch.full((batch, seq, 1), index, dtype=torch.long, device=x.device),
                weights=torch.ones((batch, seq, 1), device=x.device),
                scores=None,
                phase=self.state.phase or Phase.PREFILL,
                attention_mask=self._record_mask(batch, seq),
            ),
        )

    def _record_mask(self, batch: int, seq: int) -> torch.Tensor | None:
        mask = self.state.attention_mask
        if mask is None or mask.ndim != 2 or mask.shape[0] != batch or mask.shape[1] < seq:
            return None
        return mask[:, -seq:].detach()

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, method={self.router.method.value}, adapters={self.router.num_adapters}, "
            f"granularity={self.granularity.value}, scaling={self.scaling}"
        )


def _batch_and_seq(x: torch.Tensor) -> tuple[int, int]:
    """Return (batch, tokens per sequence) of a layer input; a 2-D input is one sequence."""
    if x.ndim < 2:
        raise InvalidInputError(f"a routed layer needs (..., features) input, got shape {tuple(x.shape)}")
    if x.ndim == 2:
        return 1, int(x.shape[0])
    seq = 1
    for size in x.shape[1:-1]:
        seq *= int(size)
    return int(x.shape[0]), seq


def _fixed_decision(tokens: int, index: int, device: torch.device) -> RouteDecision:
    return RouteDecision(
        indices=torch.full((tokens, 1), index, dtype=torch.long, device=device),
        weights=torch.ones((tokens, 1), device=device),
        scores=torch.empty(0, device=device),
    )

"""Calibration: mu and sigma of each module's activation norm ||B A x|| on the adapter's own data.

SEQR z-scores each adapter's norm with these statistics before taking the arg max, so that an
adapter whose B is simply larger does not win every token.

Which tokens count is a choice (:class:`CalibrationTokens`). The default is PROMPT. At inference
the router receives the prompt before any completion exists, and per-sequence routing chooses
from the prompt's tokens alone, so the statistics must describe that same population. The inputs
x are taken with the adapter itself attached, as the router receives them at the layers after one
where this adapter was chosen.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from seqr.errors import TrainingError
from seqr.training.batching import Batch, collate, encode_pair
from seqr.training.data import Example, training_pair
from seqr.training.library import Library
from seqr.training.lora import SharedALoRALinear, attached_lora
from seqr.training.precision import Precision, autocast

logger = logging.getLogger(__name__)

# A floor for sigma: an untrained adapter (B = 0) has norm 0 on every token, and routers reject sigma <= 0.
MIN_SIGMA = 1e-6


class CalibrationTokens(enum.StrEnum):
    PROMPT = "prompt"
    COMPLETION = "completion"
    ALL = "all"


def token_mask(batch: Batch, tokens: CalibrationTokens, *, skip_leading: int = 0) -> torch.Tensor:
    """Return the (batch, sequence) bool mask of the tokens that ``tokens`` selects.

    ``skip_leading`` drops the first tokens of every sequence, whatever ``tokens`` selects.
    """
    real = batch.attention_mask.bool()
    if tokens is CalibrationTokens.PROMPT:
        mask = batch.prompt_mask & real
    elif tokens is CalibrationTokens.COMPLETION:
        mask = batch.target_mask & real
    else:
        mask = real
    if skip_leading > 0:
        mask = mask.clone()
        mask[:, :skip_leading] = False
    return mask


@dataclass
class _NormMoments:
    """Running count, sum and sum of squares of norms, in float64."""

    count: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, norms: torch.Tensor) -> None:
        values = norms.to(torch.float64)
        self.count += int(values.numel())
        self.total += float(values.sum())
        self.squares += float((values * values).sum())

    def mean_and_std(self) -> tuple[float, float]:
        mean = self.total / self.count
        variance = max(self.squares / self.count - mean * mean, 0.0)
        return mean, max(math.sqrt(variance), MIN_SIGMA)


def calibrate(
    model: nn.Module,
    tokenizer: object,
    library: Library,
    b: Mapping[str, torch.Tensor],
    examples: Sequence[Example],
    *,
    tokens: CalibrationTokens = CalibrationTokens.PROMPT,
    skip_leading: int = 0,
    batch_size: int = 8,
    max_length: int = 512,
    precision: Precision = Precision.AUTO,
) -> dict[str, tuple[float, float]]:
    """Return (mu, sigma) of ||B A x|| per module over the selected tokens of ``examples``.

    ``skip_leading`` leaves out the first tokens of every sequence (see :func:`token_mask`).
    sigma is the population standard deviation, floored at MIN_SIGMA. Norms are computed in
    float32 from each module's input. Raises TrainingError when no token is selected.
    """
    device = next(model.parameters()).device
    moments = {name: _NormMoments() for name in library.module_names}
    mask_holder: dict[str, torch.Tensor] = {}

    def record(name: str, layer: SharedALoRALinear, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].to(torch.float32)  # (batch, sequence, n)
        norms = torch.linalg.vector_norm((x @ layer.a.T) @ layer.b.detach().T, dim=-1)  # (batch, sequence)
        moments[name].add(norms[mask_holder["mask"]])

    with attached_lora(model, library, b=b) as layers, torch.no_grad():
        handles = [
            layer.register_forward_pre_hook(lambda module, inputs, name=name: record(name, module, inputs))
            for name, layer in layers.items()
        ]
        try:
            pairs = [encode_pair(tokenizer, *training_pair(example), max_length=max_length) for example in examples]
            for start in range(0, len(pairs), batch_size):
                batch = collate(pairs[start : start + batch_size], pad_token_id=tokenizer.pad_token_id).to(device)
                mask_holder["mask"] = token_mask(batch, tokens, skip_leading=skip_leading)
                with autocast(precision, device):
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()

    if any(m.count == 0 for m in moments.values()):
        raise TrainingError(f"calibration selected no {tokens.value} tokens in {len(examples)} examples")
    return {name: m.mean_and_std() for name, m in moments.items()}

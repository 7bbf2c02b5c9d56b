"""Train one adapter's B matrices against the library's frozen A, then calibrate and factor them.

Training is deterministic for a given seed on a given device and thread count: the seed fixes the
shuffling order and the dropout masks, and the global RNG state is restored afterwards.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from seqr.errors import InvalidInputError, ModelError, TrainingError
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.training.base_model import BaseModel
from seqr.training.batching import Batch, collate, encode_pair, target_logits
from seqr.training.calibrate import calibrate
from seqr.training.data import Example, training_pair
from seqr.training.library import Library
from seqr.training.lora import attached_lora
from seqr.training.precision import autocast
from seqr.training.presets import TrainingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained, calibrated adapter with the fingerprints of the base model and A it belongs to."""

    factors: AdapterFactors
    base_fingerprint: str
    a_fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)


def check_compatible(base: BaseModel, library: Library) -> None:
    """Raise ModelError unless ``library`` was drawn for ``base``'s weights."""
    if base.fingerprint != library.base_fingerprint:
        raise ModelError(
            f"the library was created for base model {library.base_fingerprint[:12]}, but {base.name} has "
            f"fingerprint {base.fingerprint[:12]}; load the library's base model or create a new library"
        )


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_b(
    base: BaseModel, library: Library, examples: Sequence[Example], config: TrainingConfig, *, progress: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train B (m, r) for every library module on ``examples``; return (B by module, metrics).

    Raises TrainingError when the loss becomes NaN or Inf, or when a step fails. A
    KeyboardInterrupt propagates unchanged; in every case the model is restored and nothing is
    written.
    """
    check_compatible(base, library)
    if not examples:
        raise InvalidInputError("training needs at least one example")
    model, tokenizer = base.model, base.tokenizer
    device = next(model.parameters()).device
    pairs = [encode_pair(tokenizer, *training_pair(example), max_length=config.max_length) for example in examples]
    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, round(config.warmup_ratio * total_steps))
    started = time.perf_counter()
    losses: list[float] = []

    with torch.random.fork_rng(devices=[]), attached_lora(model, library, dropout=config.dropout) as layers:
        torch.manual_seed(config.seed)
        order_generator = torch.Generator().manual_seed(config.seed)
        parameters = [layer.b for layer in layers.values()]
        optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _cosine_with_warmup(step, total_steps, warmup)
        )
        model.train()
        bar = tqdm(total=total_steps, desc="training", unit="step", disable=not progress)
        try:
            for _epoch in range(config.epochs):
                order = torch.randperm(len(pairs), generator=order_generator).tolist()
                for start in range(0, len(order), config.batch_size):
                    chunk = [pairs[i] for i in order[start : start + config.batch_size]]
                    batch = collate(chunk, pad_token_id=tokenizer.pad_token_id).to(device)
                    loss = _step_loss(model, batch, config, device)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"the training loss became {loss.item()} at step {len(losses) + 1}; "
                            "lower the learning rate or check the examples"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    losses.append(loss.item())
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
        except RuntimeError as error:
            raise TrainingError(f"training failed at step {len(losses) + 1}: {error}") from error
        finally:
            bar.close()
            model.eval()
        trained = {name: layer.b.detach().clone() for name, layer in layers.items()}

    tail = losses[-steps_per_epoch:]
    metrics = {
        "examples": float(len(pairs)),
        "steps": float(len(losses)),
        "first_loss": losses[0],
        "final_epoch_loss": sum(tail) / len(tail),
        "train_seconds": time.perf_counter() - started,
    }
    logger.info("trained %d steps, final-epoch loss %.4f", len(losses), metrics["final_epoch_loss"])
    return trained, metrics


def _step_loss(model: nn.Module, batch: Batch, config: TrainingConfig, device: torch.device) -> torch.Tensor:
    """Return the mean cross-entropy of the batch's target tokens."""
    if not batch.target_mask[:, 1:].any():
        raise TrainingError("a training batch has no target tokens; check that completions are not empty")
    with autocast(config.precision, device):
        logits, targets, _rows = target_logits(model, batch)  # (K, vocab), (K,)
    return nn.functional.cross_entropy(logits.float(), targets)


def calibrated_adapter(
    base: BaseModel, library: Library, b: dict[str, torch.Tensor], examples: Sequence[Example], config: TrainingConfig,
    metrics: dict[str, float],
) -> TrainedAdapter:
    """Calibrate trained B matrices on ``examples`` with ``config``'s calibration settings, and factor them as Q R."""
    started = time.perf_counter()
    statistics = calibrate(
        base.model,
        base.tokenizer,
        library,
        b,
        examples,
        tokens=config.calibration_tokens,
        skip_leading=config.calibration_skip_leading,
        batch_size=config.batch_size,
        max_length=config.max_length,
        precision=config.precision,
    )
    metrics = {**metrics, "calibration_seconds": time.perf_counter() - started}
    modules = {
        name: ModuleFactors.from_b(b[name], mu=statistics[name][0], sigma=statistics[name][1]) for name in library.module_names
    }
    return TrainedAdapter(
        factors=AdapterFactors(modules=modules),
        base_fingerprint=base.fingerprint,
        a_fingerprint=library.fingerprint,
        metrics=metrics,
    )


def train_adapter(
    base: BaseModel, library: Library, examples: Sequence[Example], config: TrainingConfig, *, progress: bool = True
) -> TrainedAdapter:
    """Train, calibrate on the same examples and factor B = Q R; see :func:`train_b`."""
    b, metrics = train_b(base, library, examples, config, progress=progress)
    return calibrated_adapter(base, library, b, examples, config, metrics)

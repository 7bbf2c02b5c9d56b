"""Train a silo's adapter from the documents stored in the registry.

Used by ``seqr adapter train`` and by the retention job's retrain-on-removal. A document is either
JSON Lines of examples (``{"prompt", "completion"}``, ``{"prompt", "choices", "answer"}`` or
``{"text"}``) or plain UTF-8 text, which becomes one causal-LM example. The new version is stored
in status ``training`` with a manifest naming every document it was trained on (id and sha256 of
the content), so a later audit can prove which data is in which version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from seqr.errors import InvalidInputError, ModelError, TrainingError
from seqr.registry.registry import Registry
from seqr.registry.views import AdapterVersionInfo, DocumentContent, Principal
from seqr.registry.views import Library as RegistryLibrary
from seqr.training.base_model import BaseModel
from seqr.training.calibrate import CalibrationTokens
from seqr.training.data import Example, TextExample, example_from_json
from seqr.training.library import Library
from seqr.training.precision import Precision
from seqr.training.presets import TrainingConfig
from seqr.training.train import train_adapter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingJobResult:
    """Result of a training job: the stored version, the documents it used and the time it took."""

    version: AdapterVersionInfo
    document_ids: list[int]
    examples: int
    seconds: float


def training_library(library: RegistryLibrary) -> Library:
    """Turn a registry library into the training form, checking its A against the stored fingerprint."""
    info = library.info
    return Library(a=library.shared_a, rank=info.rank, alpha=info.alpha, seed=info.seed,
                   base_fingerprint=info.base_model_fingerprint)


def document_examples(document: DocumentContent) -> list[Example]:
    """Parse one stored document into training examples (JSON Lines, else one plain-text example)."""
    text = document.content.decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("{") for line in lines):
        try:
            return [
                example_from_json(json.loads(line), where=f"document {document.info.id} line {number}")
                for number, line in enumerate(lines, start=1)
            ]
        except json.JSONDecodeError:
            pass  # Not JSON Lines after all: train on it as text.
    return [TextExample(text=text)] if text.strip() else []


def manifest_entry(document: DocumentContent) -> dict[str, Any]:
    return {"id": document.info.id, "sha256": hashlib.sha256(document.content).hexdigest(), "size": document.info.size}


def train_silo_adapter(
    registry: Registry,
    actor: Principal,
    silo: str,
    library_name: str,
    base: BaseModel,
    config: TrainingConfig,
    *,
    max_examples: int | None = None,
    tenant: str | None = None,
    progress: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    before_training: Callable[[], None] | None = None,
) -> TrainingJobResult:
    """Train, calibrate and store a new version of ``silo``'s adapter (status ``training``).

    The caller activates it. Nothing is stored when training fails or is interrupted. Raises
    InvalidInputError when the silo has no usable document, and ModelError when ``base`` is not
    the library's base model. ``before_training`` runs once the documents are decrypted and
    parsed, just before the optimisation starts.
    """
    started = time.perf_counter()
    registry_library = registry.library(actor, library_name, tenant=tenant)
    library = training_library(registry_library)
    if base.fingerprint != library.base_fingerprint:
        raise ModelError(
            f"base model {base.name} (fingerprint {base.fingerprint[:12]}) is not the base model of library "
            f"{library_name!r} (fingerprint {library.base_fingerprint[:12]}); load the library's base model"
        )

    documents = [registry.read_document(actor, info.id) for info in registry.list_documents(actor, silo, tenant=tenant)]
    examples: list[Example] = []
    used: list[DocumentContent] = []
    for document in documents:
        parsed = document_examples(document)
        if parsed:
            examples.extend(parsed)
            used.append(document)
    if not examples:
        raise InvalidInputError(f"silo {silo!r} has no training document; add data with `seqr data add {silo} FILE`")
    if max_examples is not None and len(examples) > max_examples:
        examples = random.Random(config.seed).sample(examples, max_examples)

    logger.info("training silo %s on %d example(s) from %d document(s)", silo, len(examples), len(used))
    if before_training is not None:
        before_training()
    try:
        trained = train_adapter(base, library, examples, config, progress=progress)
    except KeyboardInterrupt:
        raise TrainingError(f"training of silo {silo!r} was interrupted; nothing was stored") from None
    if trained.a_fingerprint != registry_library.info.a_fingerprint:
        raise TrainingError(f"the adapter of silo {silo!r} was trained against another A; nothing was stored")

    manifest = {"documents": [manifest_entry(document) for document in used], **(extra_manifest or {})}
    training_config = {
        **{key: (value.value if hasattr(value, "value") else value) for key, value in asdict(config).items()},
        "max_examples": max_examples,
        "base_model_fingerprint": trained.base_fingerprint,
        "a_fingerprint": trained.a_fingerprint,
    }
    metrics = {**trained.metrics, "examples": len(examples)}
    version = registry.add_adapter_version(
        actor, silo, library_name, trained.factors,
        manifest=manifest, config=training_config, metrics=metrics, tenant=tenant,
    )
    return TrainingJobResult(version, [document.info.id for document in used], len(examples), time.perf_counter() - started)


def training_config_from_version(config: dict[str, Any], fallback: TrainingConfig) -> TrainingConfig:
    """Rebuild the TrainingConfig a version was trained with, so a retrain uses the same settings."""
    values = asdict(fallback)
    values.update({key: value for key, value in config.items() if key in values})
    try:
        values["precision"] = Precision(values["precision"])
        values["calibration_tokens"] = CalibrationTokens(values["calibration_tokens"])
        return TrainingConfig(**values)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"stored training config {config} cannot be reused: {error}") from error

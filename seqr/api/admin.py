"""Administrative operations that need a base model: libraries, adapter training, PEFT exchange.

The registry itself never loads a model; these functions load one (once per process), check it
against the library's fingerprint and call the registry. The CLI commands ``seqr library create``
and ``seqr adapter train|import|export`` are thin wrappers over them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from seqr.api.session import check_base_model, load_shared_base, model_source
from seqr.errors import InvalidInputError, NotFoundError
from seqr.policies.training_jobs import TrainingJobResult, document_examples, train_silo_adapter, training_library
from seqr.registry import AdapterStatus, Registry
from seqr.registry.views import AdapterVersionInfo, LibraryInfo, Principal
from seqr.routing.factors import AdapterFactors, ModuleFactors
from seqr.training.base_model import BaseModel
from seqr.training.calibrate import calibrate
from seqr.training.data import Example
from seqr.training.library import DEFAULT_TARGETS, create_library as draw_library
from seqr.training.peft_io import export_peft, import_peft
from seqr.training.presets import PRESETS, Preset, TrainingConfig
from seqr.training.train import TrainedAdapter

logger = logging.getLogger(__name__)


def create_library(
    registry: Registry,
    actor: Principal,
    name: str,
    *,
    base_model: str | Path | None = None,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    seed: int = 0,
    tenant: str | None = None,
) -> LibraryInfo:
    """Draw the shared A of every target module of ``base_model`` and store the library.

    ``alpha`` defaults to 2 * rank (scaling 2, as in the SEQR paper's rank 32 / alpha 64). The
    base model's source is recorded so that scheduled retrains can load it again.
    """
    base = load_shared_base(base_model)
    library = draw_library(
        base.model, base_fingerprint=base.fingerprint, rank=rank,
        alpha=float(alpha if alpha is not None else 2 * rank), seed=seed, targets=tuple(targets),
    )
    return registry.add_library(
        actor, name, base_model_fingerprint=base.fingerprint, target_modules=library.module_names,
        rank=library.rank, alpha=library.alpha, seed=library.seed, shared_a=library.a,
        tenant=tenant, base_model_source=model_source(base_model),
    )


def library_base_model(registry: Registry, actor: Principal, library: str, *, tenant: str | None = None) -> BaseModel:
    """Load the base model recorded for ``library`` and check it against the library's fingerprint."""
    stored = registry.library(actor, library, tenant=tenant)
    base = load_shared_base(stored.info.base_model_source)
    check_base_model(base, stored)
    return base


def training_config(preset: Preset | str = Preset.CPU, *, epochs: int | None = None, seed: int | None = None) -> TrainingConfig:
    """Return the training settings of ``preset`` with optional overrides."""
    try:
        config = PRESETS[Preset(preset)][1]
    except ValueError as error:
        raise InvalidInputError(f"unknown preset {preset!r}; use one of {[p.value for p in Preset]}") from error
    if epochs is not None:
        if epochs < 1:
            raise InvalidInputError(f"epochs must be at least 1, got {epochs}")
        config = replace(config, epochs=epochs)
    if seed is not None:
        config = replace(config, seed=seed)
    return config


def train_adapter(
    registry: Registry,
    actor: Principal,
    silo: str,
    library: str,
    *,
    config: TrainingConfig | None = None,
    max_examples: int | None = None,
    base_model: BaseModel | None = None,
    activate: bool = True,
    tenant: str | None = None,
    progress: bool = True,
) -> TrainingJobResult:
    """Train a new version of ``silo``'s adapter from its documents and, by default, activate it.

    The previously active version becomes retired (not destroyed); destroy it with the registry
    when it is no longer needed.
    """
    base = base_model if base_model is not None else library_base_model(registry, actor, library, tenant=tenant)
    result = train_silo_adapter(
        registry, actor, silo, library, base, config or training_config(),
        max_examples=max_examples, tenant=tenant, progress=progress,
    )
    if activate:
        version = registry.activate_adapter_version(actor, result.version.id)
        result = replace(result, version=version)
    return result


def active_version(registry: Registry, actor: Principal, silo: str, *, library: str | None = None,
                   tenant: str | None = None) -> AdapterVersionInfo:
    """The active version of ``silo`` (of ``library`` when the silo has adapters in several)."""
    versions = [
        version for version in registry.list_adapter_versions(actor, tenant=tenant, silo=silo, status=AdapterStatus.ACTIVE)
        if library is None or version.library == library
    ]
    if not versions:
        raise NotFoundError(f"silo {silo!r} has no active adapter; train one with `seqr adapter train {silo} --library L`")
    if len(versions) > 1:
        raise InvalidInputError(
            f"silo {silo!r} has active adapters in libraries {sorted(v.library for v in versions)}; pass --library"
        )
    return versions[0]


def export_adapter(
    registry: Registry, actor: Principal, silo: str, directory: Path, *, library: str | None = None,
    tenant: str | None = None,
) -> AdapterVersionInfo:
    """Write the active version of ``silo`` as a PEFT LoRA directory (decrypted: protect it)."""
    version = active_version(registry, actor, silo, library=library, tenant=tenant)
    stored = registry.library(actor, version.library, tenant=tenant)
    loaded = registry.load_adapter(actor, version.id)
    training = training_library(stored)
    adapter = TrainedAdapter(factors=loaded.factors, base_fingerprint=stored.info.base_model_fingerprint,
                             a_fingerprint=training.fingerprint)
    base_name = stored.info.base_model_source or "HuggingFaceTB/SmolLM2-135M-Instruct"
    export_peft(adapter, training, directory, base_model_name=base_name)
    return version


def import_adapter(
    registry: Registry,
    actor: Principal,
    silo: str,
    directory: Path,
    library: str,
    *,
    activate: bool = True,
    tenant: str | None = None,
) -> AdapterVersionInfo:
    """Import a PEFT LoRA directory trained against ``library``'s A as a new version of ``silo``.

    An adapter without calibration statistics is calibrated on the silo's documents; a silo
    without documents cannot calibrate it, which raises InvalidInputError.
    """
    stored = registry.library(actor, library, tenant=tenant)
    training = training_library(stored)
    imported = import_peft(Path(directory), training)
    factors = imported.factors
    if not factors.is_calibrated:
        factors = _calibrate_on_silo(registry, actor, silo, library, factors, tenant=tenant)
    version = registry.add_adapter_version(
        actor, silo, library, factors, tenant=tenant,
        manifest={"imported_from": str(Path(directory).resolve()), "documents": []},
        config={"a_fingerprint": imported.a_fingerprint, "base_model_fingerprint": imported.base_fingerprint},
    )
    return registry.activate_adapter_version(actor, version.id) if activate else version


def _calibrate_on_silo(
    registry: Registry, actor: Principal, silo: str, library: str, factors: AdapterFactors, *, tenant: str | None
) -> AdapterFactors:
    examples: list[Example] = []
    for info in registry.list_documents(actor, silo, tenant=tenant):
        examples.extend(document_examples(registry.read_document(actor, info.id)))
    if not examples:
        raise InvalidInputError(
            f"the imported adapter has no calibration statistics and silo {silo!r} has no documents to compute them "
            f"from; add its training data with `seqr data add {silo} FILE` first"
        )
    base = library_base_model(registry, actor, library, tenant=tenant)
    training = training_library(registry.library(actor, library, tenant=tenant))
    config = training_config()
    statistics = calibrate(
        base.model, base.tokenizer, training, {name: f.b() for name, f in factors.modules.items()}, examples,
        tokens=config.calibration_tokens, batch_size=config.batch_size, max_length=config.max_length,
    )
    logger.info("calibrated the imported adapter of silo %s on %d example(s)", silo, len(examples))
    return AdapterFactors({
        name: ModuleFactors(q=f.q, r=f.r, mu=statistics[name][0], sigma=statistics[name][1])
        for name, f in factors.modules.items()
    })

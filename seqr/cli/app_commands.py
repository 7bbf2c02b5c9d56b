"""Commands that need a model: libraries, adapter training and exchange, routing and generation.

Each command calls :mod:`seqr.api.admin` or a :class:`seqr.api.Session` and prints the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from seqr.cli.registry_commands import JsonFlag, TenantOption, adapter_app, caller, emit, open_registry
from seqr.cli.state import state
from seqr.errors import AuthenticationError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from seqr.api.model import RoutedLanguageModel

library_app = typer.Typer(help="Create and list libraries (a base model, a rank and the shared A).", no_args_is_help=True)

BaseModelOption = Annotated[
    str | None,
    typer.Option("--base-model", help="Model directory, .gguf file or hub id (default: the library's base model)."),
]


@library_app.command("create")
def library_create(
    ctx: typer.Context,
    name: str,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="Model directory, .gguf file or hub id (default: SmolLM2-135M-Instruct)."),
    ] = None,
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank r of every adapter.")] = 8,
    alpha: Annotated[float | None, typer.Option("--alpha", help="LoRA alpha (default: 2 x rank).")] = None,
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated module names to adapt.")] = "q_proj,k_proj,v_proj,o_proj",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shared A matrices.")] = 0,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Draw a shared A for every target module of a base model and store the library.

    Example: seqr library create main --rank 8
    """
    from seqr.api.admin import create_library

    target_list = [target.strip() for target in targets.split(",") if target.strip()]
    if not target_list:
        raise InvalidInputError(f"--targets {targets!r} names no module; pass names such as q_proj,v_proj")
    with caller(ctx) as (registry, actor):
        info = create_library(registry, actor, name, base_model=base_model, rank=rank, alpha=alpha,
                              targets=target_list, seed=seed, tenant=tenant)
    emit(ctx, as_json, info, [
        f"created library {info.tenant}/{info.name}: rank {info.rank}, alpha {info.alpha}, "
        f"{len(info.target_modules)} modules, A {info.a_fingerprint[:12]}"
    ])


@library_app.command("list")
def library_list(ctx: typer.Context, tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List the tenant's libraries."""
    with caller(ctx) as (registry, actor):
        libraries = registry.list_libraries(actor, tenant=tenant)
    emit(ctx, as_json, libraries, [
        f"{lib.name}\trank {lib.rank}\talpha {lib.alpha}\t{len(lib.target_modules)} modules\t{lib.base_model_source or 'default model'}"
        for lib in libraries
    ])


@adapter_app.command("train")
def adapter_train(
    ctx: typer.Context,
    silo: str,
    library: Annotated[str, typer.Option("--library", help="Library to train in.")],
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Training epochs (default: the preset's).")] = None,
    max_examples: Annotated[int | None, typer.Option("--max-examples", min=1, help="Train on at most this many examples.")] = None,
    preset: Annotated[str, typer.Option("--preset", help="Hyperparameters: 'cpu' or 'paper'.")] = "cpu",
    activate: Annotated[bool, typer.Option("--activate/--no-activate", help="Activate the new version.")] = True,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Train a new version of a silo's adapter from its documents, calibrate it and activate it.

    Example: seqr adapter train support --library main --epochs 2
    """
    from seqr.api.admin import train_adapter, training_config

    with caller(ctx) as (registry, actor):
        result = train_adapter(
            registry, actor, silo, library, config=training_config(preset, epochs=epochs),
            max_examples=max_examples, activate=activate, tenant=tenant, progress=not state(ctx).quiet,
        )
    version = result.version
    emit(ctx, as_json, {**version.to_json(), "seconds": result.seconds, "examples": result.examples}, [
        f"trained {version.silo} {version.library}@{version.number} (version {version.id}, {version.status.value}) "
        f"on {result.examples} examples from {len(result.document_ids)} documents in {result.seconds:.1f}s"
    ])


@adapter_app.command("import")
def adapter_import(
    ctx: typer.Context,
    silo: str,
    peft_dir: Annotated[Path, typer.Argument(help="PEFT LoRA directory (adapter_config.json, adapter_model.safetensors).")],
    library: Annotated[str, typer.Option("--library", help="Library whose shared A the adapter was trained with.")],
    activate: Annotated[bool, typer.Option("--activate/--no-activate", help="Activate the new version.")] = True,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Import a PEFT LoRA adapter trained against the library's A as a new version of a silo.

    Example: seqr adapter import support ./exported-lora --library main
    """
    from seqr.api.admin import import_adapter

    with caller(ctx) as (registry, actor):
        version = import_adapter(registry, actor, silo, peft_dir, library, activate=activate, tenant=tenant)
    emit(ctx, as_json, version, [f"imported {peft_dir} as {version.silo} {version.library}@{version.number} ({version.status.value})"])


@adapter_app.command("export")
def adapter_export(
    ctx: typer.Context,
    silo: str,
    directory: Annotated[Path, typer.Argument(help="Directory to create (must not exist).")],
    library: Annotated[str | None, typer.Option("--library", help="Library, when the silo has adapters in several.")] = None,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Export a silo's active adapter as a PEFT LoRA directory. The files are not encrypted.

    Example: seqr adapter export support ./support-lora
    """
    from seqr.api.admin import export_adapter

    if directory.exists():
        raise InvalidInputError(f"{directory} already exists; pass a new directory")
    with caller(ctx) as (registry, actor):
        version = export_adapter(registry, actor, silo, directory, library=library, tenant=tenant)
    emit(ctx, as_json, {**version.to_json(), "directory": str(directory)},
         [f"exported {version.silo} {version.library}@{version.number} to {directory}"])


@adapter_app.command("show")
def adapter_show(
    ctx: typer.Context,
    silo: str,
    manifest: Annotated[bool, typer.Option("--manifest", help="List the documents each version was trained on.")] = False,
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show every version of a silo's adapter: status, metrics and, with --manifest, its training documents."""
    with caller(ctx) as (registry, actor):
        versions = registry.list_adapter_versions(actor, tenant=tenant, silo=silo)
    if not versions:
        raise NotFoundError(f"silo {silo!r} has no adapter version; train one with `seqr adapter train {silo} --library L`")
    lines = []
    for version in versions:
        lines.append(f"{version.library}@{version.number}\tversion {version.id}\t{version.status.value}\t"
                     f"created {version.created_at.isoformat()}")
        if manifest:
            documents = version.manifest.get("documents", [])
            lines.append(f"  trained on {len(documents)} document(s): "
                         + ", ".join(str(document["id"]) for document in documents))
    value = [version.to_json() for version in versions]
    if not manifest:
        for entry in value:
            entry["manifest"] = None
    emit(ctx, as_json, value, lines)


@contextmanager
def routed_model(ctx: typer.Context, base_model: str | None, library: str | None) -> Iterator[RoutedLanguageModel]:
    """Open the registry, log in with the caller's token and load the routed model."""
    token = state(ctx).token
    if not token:
        raise AuthenticationError("no token given: set SEQR_TOKEN or pass --token")
    with open_registry(ctx) as registry:
        yield registry.login(token).load_model(base_model, library=library)


def route_command(
    ctx: typer.Context,
    text: str,
    base_model: BaseModelOption = None,
    library: Annotated[str | None, typer.Option("--library", help="Library, when your adapters come from several.")] = None,
    as_json: JsonFlag = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print the load time of each step (resolve, decrypt, transfer, attach, first forward) on stderr.")
    ] = False,
) -> None:
    """Show which of your silos each adapted layer chose for each token of TEXT, with the scores.

    Example: seqr route "How do I reset my password?" --json
    """
    with routed_model(ctx, base_model, library) as model:
        explanation = model.route(text)
        if verbose:
            typer.echo(model.load_timings.describe(), err=True)
    if as_json:
        typer.echo(json.dumps(explanation.to_json(), indent=2))
        return
    shares = explanation.silo_shares()
    lines = [f"routed among: {', '.join(explanation.silos) or 'no adapter'}"]
    lines += [f"  {silo}: {share:.1%} of token-layer decisions" for silo, share in shares.items()]
    first_module = next(iter(explanation.modules), None)
    if first_module is not None:
        choices = explanation.modules[first_module].chosen
        lines.append(f"per token at {first_module}:")
        lines += [f"  {token!r} -> {choice}" for token, choice in zip(explanation.tokens, choices, strict=True)]
    emit(ctx, False, None, lines)


def generate_command(
    ctx: typer.Context,
    prompt: str,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 for greedy decoding.")] = 0.0,
    base_model: BaseModelOption = None,
    library: Annotated[str | None, typer.Option("--library", help="Library, when your adapters come from several.")] = None,
    as_json: JsonFlag = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print the load time of each step (resolve, decrypt, transfer, attach, first forward) on stderr.")
    ] = False,
) -> None:
    """Generate a completion of PROMPT with the model routed among your authorised adapters.

    Example: seqr generate "Summarise the refund policy." --max-new-tokens 40
    """
    with routed_model(ctx, base_model, library) as model:
        (text,) = model.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature)
        silos = model.silos
        if verbose:
            typer.echo(model.load_timings.describe(), err=True)
    if as_json:
        typer.echo(json.dumps({"prompt": prompt, "completion": text, "silos": list(silos)}, indent=2))
    else:
        typer.echo(text)


def demo_command(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the demo registry (replaced if it is a demo).")] = Path("seqr-demo"),
    data: Annotated[Path | None, typer.Option("--data", help="Use your own silos: one sub-folder of .txt/.md files per silo.")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="Model directory or .gguf file (default: SmolLM2-135M-Instruct).")] = None,
) -> None:
    """Run the whole system on real text: registry, training, users, routing, retention, audit.

    Example: seqr demo --dir ./seqr-demo
    """
    from seqr.demo.run import DemoSettings, run_demo

    run_demo(DemoSettings(directory=directory, data_dir=data, base_model=base_model), echo=typer.echo,
             progress=not state(ctx).quiet)


def register(app: typer.Typer) -> None:
    """Add the library, adapter, route, generate and demo commands to the root app."""
    app.add_typer(library_app, name="library")
    app.command("route")(route_command)
    app.command("generate")(generate_command)
    app.command("demo")(demo_command)

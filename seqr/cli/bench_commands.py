"""``seqr bench``: benchmarks, thin over their Python functions."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from seqr.routing.benchmark import SETTINGS, format_report, run_routing_benchmark

bench_app = typer.Typer(name="bench", no_args_is_help=True, help="Measure routing speed and memory.")


@bench_app.command("routing")
def routing(
    setting: Annotated[
        list[str] | None,
        typer.Option("--setting", help=f"Library shape to time select(x) on; repeat for several. One of: {', '.join(SETTINGS)}."),
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device, for example cpu or cuda.")] = "cpu",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per measurement; the fastest and the median are reported.")] = 7,
    layer_adapters: Annotated[
        str,
        typer.Option(help="Comma-separated adapter counts for the routed-layer comparison with PEFT's Arrow."),
    ] = "10,100,1000",
    layer: Annotated[bool, typer.Option("--layer/--no-layer", help="Run the routed-layer comparison with PEFT.")] = True,
    layer_setting: Annotated[str, typer.Option(help="Layer shape for the PEFT comparison (a --setting name).")] = "smollm2",
    threads: Annotated[int | None, typer.Option(min=1, help="Torch intra-op threads (default: torch's choice).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Time select(x) per method (us and FLOPs per token, ratio to SEQR, matmul floor) and one routed layer against PEFT.

    Example: seqr bench routing --setting table1 --no-layer --json
    """
    try:
        counts = [int(part) for part in layer_adapters.split(",") if part.strip()] if layer else []
    except ValueError:
        raise typer.BadParameter(f"{layer_adapters!r} is not a comma-separated list of integers", param_hint="--layer-adapters") from None
    report = run_routing_benchmark(
        setting or ["table1", "smollm2"],
        device=device,
        repeats=repeats,
        layer_adapter_counts=counts,
        layer_setting=layer_setting,
        threads=threads,
    )
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))


def register(app: typer.Typer) -> None:
    """Add ``seqr bench`` and its commands to the root app."""
    app.add_typer(bench_app, name="bench")

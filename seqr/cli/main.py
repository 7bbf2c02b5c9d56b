"""Entry point of the `seqr` command: builds the typer app and turns errors into exit codes.

Exit status: 0 success, 1 an error (one line on stderr, a traceback only with ``--debug``),
2 a usage error, 3 another job holds the registry lock (for cron).
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from seqr.cli import app_commands, bench_commands, registry_commands, retention_commands, training_commands
from seqr.cli.state import CliState
from seqr.errors import LockHeldError, SeqrError

class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

app = typer.Typer(
    name="seqr",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help=(
        "Access-controlled registry of LoRA adapters with SEQR routing.\n\n"
        "Example: seqr init --dir ./registry && export SEQR_HOME=./registry"
    ),
)


@app.callback()
def root(
    ctx: typer.Context,
    registry: Annotated[
        Path | None,
        typer.Option("--registry", envvar="SEQR_HOME", help="Registry directory (default: $SEQR_HOME)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="SEQR_TOKEN", help="API token of the caller (default: $SEQR_TOKEN).", show_default=False),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or informational output.")] = False,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Level of the log lines on stderr (--debug sets debug).")
    ] = LogLevel.WARNING,
) -> None:
    ctx.obj = CliState(registry=registry, token=token, debug=debug, quiet=quiet)
    level = logging.DEBUG if debug else getattr(logging, log_level.value.upper())
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for module in (registry_commands, app_commands, retention_commands, training_commands, bench_commands):
    module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("SEQR_DEBUG") == "1"
    try:
        # Standalone mode prints usage errors and returns 2 through SystemExit; our own errors
        # propagate out of it and are turned into one line here.
        app(args=args, prog_name="seqr", standalone_mode=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    except LockHeldError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_LOCKED
    except SeqrError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``guardian`` command line. Only this module and ``guardian.commands`` import typer/rich.

Each command lives in ``guardian/commands/<name>.py`` and registers itself on the app. Cloud
SDKs are imported inside the commands that need them, so ``guardian --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from guardian import __version__
from guardian.errors import GuardianError
from guardian.logs import LogFormat, configure_logging
from guardian.malloc_tuning import limit_malloc_arenas

__all__ = ["app", "main"]

app = typer.Typer(
    name="guardian",
    help="Find idle cloud GPU instances, price them against CPU equivalents, warn and stop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpu-guardian {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    log_format: Annotated[
        str, typer.Option("--log-format", help="console or json (logs go to stderr).")
    ] = "console",
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning, error.")
    ] = "info",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    if log_format not in ("console", "json"):
        raise typer.BadParameter("use console or json", param_hint="--log-format")
    fmt: LogFormat = "json" if log_format == "json" else "console"
    configure_logging(fmt, log_level)


def _register_commands() -> None:
    # Each module's register() adds its commands; none imports a cloud SDK at import time.
    from guardian.commands import (
        agent,
        audit,
        backtest,
        check_config,
        demo,
        history,
        prices,
        rightsize,
        run,
        status,
    )

    for module in (
        audit,
        rightsize,
        check_config,
        demo,
        prices,
        history,
        status,
        run,
        backtest,
        agent,
    ):
        module.register(app)


_register_commands()


def main() -> None:
    """Entry point: a user's mistake is one line on stderr and a non-zero exit, no traceback."""
    limit_malloc_arenas()  # before any worker thread exists
    try:
        app()
    except GuardianError as exc:
        print(f"guardian: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

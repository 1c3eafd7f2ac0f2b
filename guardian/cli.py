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


# Options of the `guardian` group itself, which click reads only before the command's name.
_GLOBAL_OPTIONS = ("--log-format", "--log-level")


def hoist_global_options(argv: list[str]) -> list[str]:
    """``guardian audit --log-level debug`` as ``guardian --log-level debug audit``: a global
    option written after the command is moved before it (click would reject it there)."""
    command, index = None, 0
    while index < len(argv):
        if argv[index] in _GLOBAL_OPTIONS:
            index += 2  # the option and its value
        elif argv[index].startswith("-"):
            index += 1
        else:
            command = index
            break
    if command is None:
        return argv
    head, tail, moved = argv[:command], [], []
    rest = iter(argv[command:])
    for arg in rest:
        if arg == "--":
            tail += [arg, *rest]
            break
        name = arg.split("=", 1)[0]
        if name in _GLOBAL_OPTIONS:
            moved.append(arg)
            if "=" not in arg:
                moved.append(next(rest, ""))
        else:
            tail.append(arg)
    return head + moved + tail


def main() -> None:
    """Entry point: a user's mistake is one line on stderr and a non-zero exit, no traceback."""
    limit_malloc_arenas()  # before any worker thread exists
    try:
        argv = hoist_global_options(sys.argv[1:])
        code = app(args=argv, prog_name="guardian", standalone_mode=False)
    except GuardianError as exc:
        print(f"guardian: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.TyperException as exc:  # the command line itself: unknown option, bad value
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # `guardian` alone prints the help
        else:
            # One line, as for every other mistake, instead of a box drawn around it.
            ctx = getattr(exc, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            message = exc.format_message().replace("Value error, ", "")
            print(f"guardian: error: {message}{where}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["ConfigOption", "SetOption", "data_console", "progress"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (else $GUARDIAN_CONFIG, /etc/gpu-guardian/guardian.yaml, "
        "./config/guardian.yaml, built-in defaults).",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set idle.window=20m (repeatable)."),
]


@contextmanager
def progress(first: str) -> Iterator[Callable[[str], None]]:
    """Say on stderr what a long command is doing; yields the function that moves it on.

    On a terminal a spinner that each phase updates (log lines appear above it); elsewhere (cron,
    CI, a pipe) one line per phase, so a log shows where a command waits.
    """
    console = Console(stderr=True)
    if console.is_terminal:
        with console.status(first) as status:
            yield status.update
        return

    def line(text: str) -> None:
        console.print(f"guardian: {text}", highlight=False, soft_wrap=True)

    line(first)
    yield line


def data_console() -> Console:
    """stdout for a table: the terminal's width, or ``COLUMNS`` (else 200) when piped."""
    import os

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console = Console(width=200)
    return console

"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ConfigOption", "SetOption"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (else $GUARDIAN_CONFIG, /etc/gpu-guardian/guardian.yaml, "
        "./config/guardian.yaml, built-in defaults).",
        dir_okay=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set idle.window=20m (repeatable)."),
]

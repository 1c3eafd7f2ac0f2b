"""``guardian rightsize``: the cheaper machine that would do each instance's measured work.

One audit pass (the same as ``guardian audit``), printed as just the recommendations, largest
saving first. Advice only: nothing is resized, stopped or changed.
"""

from __future__ import annotations

import json
import sys

import typer

from guardian.commands.audit import FormatOption, OutputFormat, RegionOption, audit_once
from guardian.commands.common import ConfigOption, SetOption, data_console

__all__ = ["register"]


def rightsize(
    config: ConfigOption = None,
    region: RegionOption = None,
    output: FormatOption = OutputFormat.TABLE,
    overrides: SetOption = None,
) -> None:
    """Name the cheaper machine that would do each instance's measured work (advice only)."""
    from guardian.report.rightsize import print_rightsize, rightsize_csv, rightsize_json

    _cfg, result = audit_once(config, region or (), overrides or ())
    if output is OutputFormat.JSON:
        json.dump(rightsize_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif output is OutputFormat.CSV:
        sys.stdout.write(rightsize_csv(result))
    else:
        print_rightsize(result, data_console())


def register(app: typer.Typer) -> None:
    app.command("rightsize")(rightsize)

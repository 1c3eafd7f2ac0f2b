"""``guardian audit``: one pass over the configured clouds, printed as a table, JSON or CSV."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from guardian.commands.common import ConfigOption, SetOption, data_console, progress
from guardian.config import Config, load_config
from guardian.cycle import CycleResult, audit_cycle
from guardian.errors import GuardianError
from guardian.model import Verdict
from guardian.providers import Caller

__all__ = [
    "FormatOption",
    "OutputFormat",
    "RegionOption",
    "WideOption",
    "audit_once",
    "emit",
    "register",
    "run_audit",
]


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def run_audit(
    config: Config, now: datetime | None = None, *, caller: Caller = "interactive"
) -> CycleResult:
    """Discover, measure, price and decide once, with progress on stderr."""
    from guardian.prices import load_catalog
    from guardian.providers.factory import build_providers

    providers = build_providers(config, caller)
    if not providers:
        raise GuardianError("no provider is enabled: set aws.enabled or gcp.enabled in the config")
    catalog = load_catalog(config.state_dir)
    try:
        with progress("auditing GPU instances…") as update:
            return audit_cycle(config, providers, catalog, now or datetime.now(UTC), update)
    finally:
        for provider in providers:
            provider.close()


WideOption = Annotated[
    bool, typer.Option("--wide", help="Table: every column, however wide the terminal.")
]
RegionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--region",
        "-r",
        help="Only this region (repeatable): AWS like us-east-1, GCP like us-central1.",
    ),
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="table, json or csv.")]


def emit(result: CycleResult, config: Config, fmt: OutputFormat, *, wide: bool = False) -> None:
    """Data on stdout. A unit that failed was already logged on stderr by the cycle (one
    ``discovery_failed`` line naming it) and is listed under ``errors`` in the JSON."""
    from guardian.report.document import findings_csv, findings_json

    if fmt is OutputFormat.JSON:
        json.dump(findings_json(result, config), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif fmt is OutputFormat.CSV:
        sys.stdout.write(findings_csv(result, config))
    else:
        from guardian.report.table import print_audit

        print_audit(result, data_console(), config, wide=wide)


def audit_once(
    config_path: Path | None, regions: Sequence[str], overrides: Sequence[str]
) -> tuple[Config, CycleResult]:
    """Load the config, audit once (only ``regions`` when given), and fail in one line when
    nothing at all could be audited. Shared by ``audit`` and ``rightsize``."""
    from guardian.providers.factory import restrict_regions

    cfg, _path = load_config(config_path, overrides)
    narrowed = restrict_regions(cfg, regions)
    if regions and not (narrowed.aws.enabled or narrowed.gcp.enabled):
        enabled = [name for name, on in (("AWS", cfg.aws.enabled), ("GCP", cfg.gcp.enabled)) if on]
        raise GuardianError(
            f"--region {', '.join(regions)}: not a region of an enabled cloud "
            f"({' and '.join(enabled) or 'none'} enabled; AWS regions look like us-east-1, "
            "GCP regions like us-central1)"
        )
    cfg = narrowed
    result = run_audit(cfg)
    if regions:
        wanted = set(regions)
        kept = tuple(f for f in result.findings if f.instance.region in wanted)
        result = replace(result, findings=kept)
    if result.nothing_audited:
        raise GuardianError(result.failure_line())
    return cfg, result


def audit(  # typer calls commands with keyword arguments only
    *,
    config: ConfigOption = None,
    region: RegionOption = None,
    output: FormatOption = OutputFormat.TABLE,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 1 when any instance is idle.")
    ] = False,
    overrides: SetOption = None,
    wide: WideOption = False,
) -> None:
    """Audit every running GPU instance once: utilisation, cost, CPU equivalent, verdict."""
    cfg, result = audit_once(config, region or (), overrides or ())
    emit(result, cfg, output, wide=wide)
    if exit_code and any(f.decision.verdict is Verdict.IDLE for f in result.findings):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)

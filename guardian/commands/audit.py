"""``guardian audit``: one pass over the configured clouds, printed as a table, JSON or CSV."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from guardian.commands.common import ConfigOption, SetOption
from guardian.config import Config, load_config
from guardian.cycle import CycleResult, audit_cycle
from guardian.errors import GuardianError
from guardian.model import Verdict

__all__ = ["OutputFormat", "audit_once", "emit", "register", "run_audit"]


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def run_audit(config: Config, now: datetime | None = None) -> CycleResult:
    """Discover, measure, price and decide once, with progress on stderr."""
    from guardian.prices import load_catalog
    from guardian.providers.factory import build_providers

    providers = build_providers(config)
    if not providers:
        raise GuardianError("no provider is enabled: set aws.enabled or gcp.enabled in the config")
    catalog = load_catalog(config.state_dir)
    status_console = Console(stderr=True)
    try:
        with status_console.status("auditing GPU instances…") as status:
            return audit_cycle(
                config,
                providers,
                catalog,
                now or datetime.now(UTC),
                progress=status.update,
            )
    finally:
        for provider in providers:
            provider.close()


def emit(result: CycleResult, config: Config, fmt: OutputFormat) -> None:
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

        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        print_audit(result, console, config)


def audit_once(
    config_path: Path | None, regions: Sequence[str], overrides: Sequence[str]
) -> tuple[Config, CycleResult]:
    """Load the config, audit once (only ``regions`` when given), and fail in one line when
    nothing at all could be audited. Shared by ``audit`` and ``rightsize``."""
    from guardian.providers.factory import restrict_regions

    cfg, _path = load_config(config_path, overrides)
    cfg = restrict_regions(cfg, regions)
    result = run_audit(cfg)
    if regions:
        wanted = set(regions)
        kept = tuple(f for f in result.findings if f.instance.region in wanted)
        result = CycleResult(result.generated_at, kept, result.errors)
    if result.errors and not result.findings:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise GuardianError(
            f"nothing could be audited: {first.provider} {first.region}: {first.message}{more}"
        )
    return cfg, result


def audit(
    config: ConfigOption = None,
    region: Annotated[
        list[str] | None,
        typer.Option("--region", "-r", help="Only this AWS region (repeatable); GCP VMs filtered."),
    ] = None,
    output: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json or csv.")
    ] = OutputFormat.TABLE,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 1 when any instance is idle.")
    ] = False,
    overrides: SetOption = None,
) -> None:
    """Audit every running GPU instance once: utilisation, cost, CPU equivalent, verdict."""
    cfg, result = audit_once(config, region or (), overrides or ())
    emit(result, cfg, output)
    if exit_code and any(f.decision.verdict is Verdict.IDLE for f in result.findings):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)

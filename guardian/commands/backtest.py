"""``guardian backtest``: replay GPU history through the real policy and warn-then-stop ladder.

Sources: a trace file (``--trace``, the backtest CSV or a Philly trace, plain or gzipped), the
fleet's own metrics (``--from-cloudwatch`` / ``--from-gcp`` with ``--days``), the synthetic
training fleet (``--synthetic``) or the synthetic notebook fleet (``--synthetic-notebooks``).
The config and ``--set`` overrides are the daemon's.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from guardian.backtest.replay import (
    BacktestResult,
    InstanceOutcome,
    PriceFor,
    backtest_json,
    replay,
)
from guardian.backtest.trace import TraceDefaults, TraceSeries, summary
from guardian.commands.common import ConfigOption, SetOption, data_console, progress
from guardian.config import Config, load_config, masked_dump
from guardian.durations import format_duration
from guardian.errors import GuardianError
from guardian.model import GpuInstance, PriceAssessment

__all__ = ["BacktestFormat", "register"]

MAX_DAYS = 42  # Cloud Monitoring keeps six weeks; CloudWatch keeps 1-minute data for 15 days


class BacktestFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def _price_for(config: Config) -> PriceFor:
    from guardian.prices import assess, load_catalog

    catalog = load_catalog(config.state_dir)

    def price(instance: GpuInstance) -> PriceAssessment:
        if not instance.instance_type:
            return PriceAssessment(
                None, None, None, None, "no instance type in the trace: pass --instance-type"
            )
        return assess(catalog, instance)

    return price


def _cloud_series(
    config: Config, cloud: str, days: int, status: Console
) -> tuple[list[TraceSeries], str]:
    from guardian.backtest.cloud_traces import history_from_providers
    from guardian.providers.factory import build_providers

    aws = config.aws.model_copy(update={"enabled": cloud == "aws"})
    gcp = config.gcp.model_copy(update={"enabled": cloud == "gcp"})
    providers = build_providers(
        config.model_copy(update={"aws": aws, "gcp": gcp}), instance_series=False
    )
    end = datetime.now(UTC)
    try:
        with progress(f"reading {days} day(s) of GPU history…") as update:
            history = history_from_providers(
                providers, end - timedelta(days=days), end, progress=update
            )
    finally:
        for provider in providers:
            provider.close()
    for error in history.errors:
        status.print(
            f"[yellow]warning:[/] {error.provider} {error.region}: {error.operation} failed: "
            f"{error.message}",
            highlight=False,
        )
    for key, why in history.skipped:
        status.print(f"[yellow]skipped[/] {key}: {why}", highlight=False)
    for key, why in history.partial:
        status.print(f"[yellow]partial[/] {key}: {why}", highlight=False)
    if not history.series and history.errors:
        # Nothing could be read: the cause (credentials, a denied call) is the message.
        first = history.errors[0]
        more = f" (and {len(history.errors) - 1} more)" if len(history.errors) > 1 else ""
        raise GuardianError(
            f"no GPU history could be read from {cloud}: {first.provider} {first.region}: "
            f"{first.message}{more}"
        )
    if not history.series:
        raise GuardianError(f"no GPU history to replay from {cloud} over the last {days} day(s)")
    source = "CloudWatch" if cloud == "aws" else "Cloud Monitoring"
    return list(history.series), f"{source}, last {days} day(s)"


def _source_series(
    config: Config,
    *,
    trace: Path | None,
    from_cloudwatch: bool,
    from_gcp: bool,
    synthetic: bool,
    days: int,
    instance_type: str | None,
    status: Console,
    synthetic_notebooks: bool = False,
) -> tuple[list[TraceSeries], str]:
    chosen = sum((trace is not None, from_cloudwatch, from_gcp, synthetic, synthetic_notebooks))
    if chosen != 1:
        raise GuardianError(
            "choose one source: --trace PATH, --from-cloudwatch, --from-gcp, --synthetic or "
            "--synthetic-notebooks"
        )
    if not 1 <= days <= MAX_DAYS:
        raise GuardianError(f"--days must be between 1 and {MAX_DAYS}")
    if trace is not None:
        from guardian.backtest.trace import read_trace

        defaults = TraceDefaults(instance_type=instance_type or "")
        return read_trace(trace, defaults), str(trace)
    if synthetic:
        from guardian.backtest.synthetic import training_series

        return training_series(instance_type=instance_type or ""), "synthetic training fleet"
    if synthetic_notebooks:
        from guardian.backtest.synthetic_notebook import notebook_series

        return notebook_series(instance_type=instance_type or ""), "synthetic notebook fleet"
    return _cloud_series(config, "aws" if from_cloudwatch else "gcp", days, status)


def _hours(value: float) -> str:
    return f"{value:.1f}"


def _order(outcome: InstanceOutcome) -> tuple[int, float, str]:
    return (-outcome.interrupted, -outcome.idle_tail_hours, outcome.instance_id)


def _cells(outcome: InstanceOutcome) -> dict[str, str]:
    stop_after = "—"
    if outcome.stopped_at is not None:
        stop_after = _hours((outcome.stopped_at - outcome.started_at).total_seconds() / 3600)
    return {
        "instance": outcome.instance_id,
        "type": outcome.instance_type or "—",
        "hours": _hours(outcome.hours),
        "idle\ntail h": _hours(outcome.idle_tail_hours),
        "stop\nafter h": stop_after,
        "reclaimed\nh": _hours(outcome.reclaimed_hours),
        "inter-\nrupted": "yes" if outcome.interrupted else "",
        "saved": "—" if outcome.saved_usd is None else f"${outcome.saved_usd:,.2f}",
        "why stopped": outcome.stop_reasons[0] if outcome.stop_reasons else "",
    }


# Never cut at any width (the instance id may fold onto a second line); the rest join as the
# width allows, in this order.
_ESSENTIAL = ("instance", "hours", "idle\ntail h", "stop\nafter h", "inter-\nrupted", "saved")
_OPTIONAL = ("type", "reclaimed\nh", "why stopped")
_ORDER: tuple[str, ...] = ("instance", "type", "hours", "idle\ntail h", "stop\nafter h")
_ORDER += ("reclaimed\nh", "inter-\nrupted", "saved", "why stopped")


def _table(result: BacktestResult, source: str, top: int, console: Console) -> None:
    from guardian.report.table import fit_columns

    shown = sorted(result.outcomes, key=_order)[: max(0, top)]
    rows = [_cells(outcome) for outcome in shown]

    def widest(column: str, measure: Callable[[str], int] = len) -> int:
        lines = [*column.split("\n"), *(row[column] for row in rows)]
        return max(measure(line) for line in lines)

    def longest_word(text: str) -> int:
        return max((len(word) for word in text.split()), default=0)

    used = 2 + 3 + sum(widest(c) + 3 for c in _ESSENTIAL if c != "instance")
    # The id takes what the other essential columns leave; a longer one folds onto a second line.
    instance = max(16, min(widest("instance"), console.width - used))
    # A reason folded narrower than 30 characters reads worse than none: json has them all.
    optional = [(c, widest(c), widest(c, longest_word)) for c in _OPTIONAL[:-1]]
    optional.append(("why stopped", widest("why stopped"), min(30, widest("why stopped"))))
    extra, _ = fit_columns(console.width, used + instance, optional)
    columns = [c for c in _ORDER if c in _ESSENTIAL or c in extra]
    table = Table(box=box.SIMPLE_HEAD, title=f"backtest: {source}", title_justify="left")
    for column in columns:
        if column == "instance":
            table.add_column(column, overflow="fold", width=instance)
        elif column in _ESSENTIAL:
            table.add_column(column, justify="left" if column == "type" else "right", no_wrap=True)
        else:
            table.add_column(column, justify="right" if column.endswith("h") else "left")
    for row in rows:
        cells = [escape(row[c]) for c in columns]
        if "inter-\nrupted" in columns and row["inter-\nrupted"]:
            cells[columns.index("inter-\nrupted")] = "[bold red]yes[/]"
        table.add_row(*cells)
    console.print(table)
    left_out = [c.split("\n")[0] for c in _OPTIONAL if c not in extra]
    if left_out:
        console.print(f"Not shown at this width: {', '.join(left_out)} (--format json has all).")
    hidden = len(result.outcomes) - len(shown)
    if hidden > 0:
        console.print(f"… {hidden} more instance(s): --top N or --format json shows them")
    totals = result.totals
    fraction = totals.reclaimed_fraction
    saved = "—" if totals.saved_usd is None else f"${totals.saved_usd:,.2f}"
    console.print(
        f"[bold]{totals.instances}[/] instances: {totals.stops} stopped, "
        f"[bold]{totals.interrupted} interrupted[/] (stopped before the work was over), "
        f"{totals.warnings} warnings ({totals.warnings_withdrawn} withdrawn); "
        f"idle tail {totals.idle_tail_hours:,.1f} h, reclaimed {totals.reclaimed_hours:,.1f} h "
        f"({'—' if fraction is None else f'{fraction:.1%}'}), saved {saved}; "
        f"never worked: {totals.never_worked} ({totals.never_worked_stopped} stopped)",
        highlight=False,
    )


def _document(
    result: BacktestResult, config: Config, source: str, seconds: float
) -> dict[str, Any]:
    effective = masked_dump(config)
    return {
        "generated_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "source": source,
        "config": {
            "poll_interval": format_duration(config.poll_interval),
            "lookback": format_duration(config.cost.lookback),
            "idle": effective["idle"],
        },
        "busy_above": result.busy_above,
        "replay_seconds": round(seconds, 3),
        **backtest_json(result),
    }


def backtest(  # typer calls commands with keyword arguments only
    *,
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            help="CSV (optionally gzipped): instance_id,timestamp,gpu_index,gpu_util"
            "[,gpu_mem_used_mib,instance_type,provider,region,notebook_idle_s]; Philly traces "
            "also read.",
            dir_okay=False,
        ),
    ] = None,
    from_cloudwatch: Annotated[
        bool, typer.Option("--from-cloudwatch", help="Replay the AWS fleet's CloudWatch history.")
    ] = False,
    from_gcp: Annotated[
        bool, typer.Option("--from-gcp", help="Replay the GCP fleet's Cloud Monitoring history.")
    ] = False,
    synthetic: Annotated[
        bool,
        typer.Option(
            "--synthetic", help="Replay the synthetic training fleet (40 machines, seed 7)."
        ),
    ] = False,
    synthetic_notebooks: Annotated[
        bool,
        typer.Option(
            "--synthetic-notebooks",
            help="Replay the synthetic notebook fleet (seed 11, 40 machines): kernels left "
            "open after the browser closed, with the agent's notebook signal.",
        ),
    ] = False,
    days: Annotated[
        int, typer.Option("--days", help="Days of cloud history (CloudWatch keeps 15 at 1 min).")
    ] = 7,
    instance_type: Annotated[
        str | None,
        typer.Option("--instance-type", help="Type for rows without one, for pricing."),
    ] = None,
    busy_above: Annotated[
        float,
        typer.Option("--busy-above", help="A sample at or above this GPU % is work, for scoring."),
    ] = 10.0,
    output: Annotated[
        BacktestFormat, typer.Option("--format", "-f", help="table or json.")
    ] = BacktestFormat.TABLE,
    top: Annotated[
        int, typer.Option("--top", min=0, help="Instances shown in the table (0: totals only).")
    ] = 25,
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Replay GPU history through the real policy and warn-then-stop ladder; score the stops."""
    if not 0 < busy_above <= 100:
        raise GuardianError("--busy-above must be a GPU percentage in (0, 100]")
    cfg, _path = load_config(config, overrides or ())
    status = Console(stderr=True)
    series, source = _source_series(
        cfg,
        trace=trace,
        from_cloudwatch=from_cloudwatch,
        from_gcp=from_gcp,
        synthetic=synthetic,
        days=days,
        instance_type=instance_type,
        status=status,
        synthetic_notebooks=synthetic_notebooks,
    )
    shape = summary(series)
    status.print(
        f"read {shape['instances']:,} instances, {shape['samples']:,} samples over "
        f"{shape['hours']:,} h from {source}",
        highlight=False,
    )
    price_for = _price_for(cfg)
    started = time.perf_counter()
    result = replay(series, cfg, busy_above=busy_above, price_for=price_for)
    seconds = time.perf_counter() - started
    status.print(
        f"replayed {result.totals.instances} instances, {result.totals.polls} polls every "
        f"{format_duration(cfg.poll_interval)} in {seconds:.2f} s",
        highlight=False,
    )
    if output is BacktestFormat.JSON:
        sys.stdout.write(json.dumps(_document(result, cfg, source, seconds), indent=2) + "\n")
        return
    _table(result, source, top, data_console())


def register(app: typer.Typer) -> None:
    app.command("backtest")(backtest)

"""``guardian status``: the replicas, their units, the last completed cycle, open episodes and
the outbox, from the state database (what every replica shares)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from guardian.commands.common import ConfigOption, SetOption
from guardian.commands.history import open_state_store
from guardian.config import load_config

__all__ = ["register"]


class StatusFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def status(
    config: ConfigOption = None,
    overrides: SetOption = None,
    output: Annotated[
        StatusFormat, typer.Option("--format", "-f", help="table or json.")
    ] = StatusFormat.TABLE,
) -> None:
    """Replicas alive, units with their owner, the last completed cycle and its lag, open
    episodes and pending notifications."""
    from guardian.daemon.status import read_status

    cfg, _path = load_config(config, overrides or ())
    store = open_state_store(cfg)
    # A replica renews its row every third of a lease: three missed renewals and it is gone.
    alive_within = max(cfg.units.lease, cfg.poll_interval / 2)
    try:
        report = read_status(store, datetime.now(UTC), alive_within)
    finally:
        store.close()
    document = report.as_json()
    if output is StatusFormat.JSON:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    _print(document)


def _short(moment: str | None) -> str:
    return (moment or "")[:19].replace("T", " ")


def _print(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    last = doc["last_completed_cycle"]
    lag = f"{doc['lag_s']:.0f} s ago" if doc["lag_s"] is not None else "never"
    console.print(
        f"state: {doc['backend']}; last completed cycle: "
        f"{last['cycle'] if last else '-'} (started {lag}); open episodes: "
        f"{len(doc['open_episodes'])}; outbox pending: {doc['outbox_pending']}"
        + (f" (oldest {_short(doc['outbox_oldest_pending'])})" if doc["outbox_pending"] else ""),
        markup=False,
    )
    if doc["backend"] == "sqlite":
        console.print("units: one process audits them all (SQLite state)", markup=False)
    table = Table(title=f"Replicas alive ({len(doc['replicas'])})", title_justify="left")
    for column in ("replica", "version", "started (UTC)", "last seen", "cycle", "running", "done"):
        table.add_column(column)
    for r in doc["replicas"]:
        table.add_row(
            r["id"],
            r["version"],
            _short(r["started_at"]),
            _short(r["seen_at"]),
            str(r["cycle"] or ""),
            str(r["units_running"]),
            str(r["units_done"]),
        )
    if doc["replicas"]:
        console.print(table, markup=False)
    table = Table(title=f"Units ({len(doc['units'])})", title_justify="left")
    for column in ("unit", "state", "owner", "token", "instances", "seconds", "error"):
        table.add_column(column, overflow="fold")
    for u in doc["units"]:
        table.add_row(
            u["unit"],
            u["state"],
            u["owner"] or "",
            str(u["token"]),
            "" if u["instances"] is None else str(u["instances"]),
            "" if u["duration_s"] is None else f"{u['duration_s']:.1f}",
            u["error"] or "",
        )
    if doc["units"]:
        console.print(table, markup=False)
    table = Table(title=f"Open episodes ({len(doc['open_episodes'])})", title_justify="left")
    for column in ("instance", "account / region", "warned (UTC)", "deadline", "promise", "state"):
        table.add_column(column, overflow="fold")
    for e in doc["open_episodes"]:
        label = e["instance_id"] + (f" ({e['name']})" if e["name"] else "")
        table.add_row(
            label,
            f"{e['account']} {e['region']}",
            _short(e["warned_at"]),
            _short(e["deadline"]),
            e["promise"],
            e["stop_state"] or e["blocked_reason"] or "",
        )
    console.print(table, markup=False)
    for error in doc["plan_errors"]:
        console.print(
            f"not audited: {error['provider']} {error['account']}: {error['message']}",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.command("status")(status)

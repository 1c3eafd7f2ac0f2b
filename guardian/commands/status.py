"""``guardian status``: the replicas, their units, the last completed cycle, open episodes and
the outbox, from the state database (what every replica shares)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from guardian.commands.common import ConfigOption, SetOption, data_console
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
    """Replicas, units and their owners, the last cycle, open episodes, pending alerts.

    Read from the state database every replica shares; with SQLite, one process has them all.
    """
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


# (header, essential): essential columns are never cut; the others join, in this order, while
# they fit the console (``guardian.report.table.fit_columns``), as the audit table's do.
Columns = tuple[tuple[str, bool], ...]


def _table(console: Any, title: str, columns: Columns, rows: list[list[str]]) -> list[str]:
    """Print ``rows`` as a table that fits the console; returns the headers left out."""
    from rich import box
    from rich.table import Table

    from guardian.report.table import fit_columns

    def width(n: int) -> int:
        return max(
            len(line)
            for text in [columns[n][0], *(r[n] for r in rows)]
            for line in text.split("\n")
        )

    used = 2 + sum(width(n) + 3 for n, (_, essential) in enumerate(columns) if essential)
    optional = [
        (h, width(n), width(n)) for n, (h, essential) in enumerate(columns) if not essential
    ]
    shown, _ = fit_columns(console.width, used, optional)
    keep = [n for n, (h, essential) in enumerate(columns) if essential or h in shown]
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAVY, header_style="bold", expand=False
    )
    for n in keep:
        table.add_column(columns[n][0], no_wrap=True)
    for row in rows:
        table.add_row(*(row[n] for n in keep))
    console.print(table, markup=False)
    return [h for h, _ in columns if h not in {columns[n][0] for n in keep}]


def _print(doc: dict[str, Any]) -> None:
    console = data_console()
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
    if doc["replicas"]:
        _table(
            console,
            f"Replicas alive ({len(doc['replicas'])})",
            (
                ("replica", True),
                ("last seen", True),
                ("running", True),
                ("done", True),
                ("cycle", False),
                ("started (UTC)", False),
                ("version", False),
            ),
            [
                [
                    r["id"],
                    _short(r["seen_at"]),
                    str(r["units_running"]),
                    str(r["units_done"]),
                    str(r["cycle"] or ""),
                    _short(r["started_at"]),
                    r["version"],
                ]
                for r in doc["replicas"]
            ],
        )
    if doc["units"]:
        hidden = _table(
            console,
            f"Units ({len(doc['units'])})",
            (
                ("unit", True),
                ("state", True),
                ("owner", True),
                ("instances", False),
                ("seconds", False),
                ("token", False),
                ("error", False),
            ),
            [
                [
                    u["unit"],
                    u["state"],
                    u["owner"] or "",
                    "" if u["instances"] is None else str(u["instances"]),
                    "" if u["duration_s"] is None else f"{u['duration_s']:.1f}",
                    str(u["token"]),
                    u["error"] or "",
                ]
                for u in doc["units"]
            ],
        )
        if "error" in hidden:  # too long for the table at this width: one line each, under it
            for u in doc["units"]:
                if u["error"]:
                    console.print(f"{u['unit']}: {u['error']}", markup=False)
    _table(
        console,
        f"Open episodes ({len(doc['open_episodes'])})",
        (
            ("instance", True),
            ("deadline (UTC)", True),
            ("state", True),
            ("promise", False),
            ("warned (UTC)", False),
            ("account / region", False),
        ),
        [
            [
                e["instance_id"] + (f" ({e['name']})" if e["name"] else ""),
                _short(e["deadline"]),
                e["stop_state"] or e["blocked_reason"] or "",
                e["promise"],
                _short(e["warned_at"]),
                f"{e['account']} {e['region']}",
            ]
            for e in doc["open_episodes"]
        ],
    )
    for error in doc["plan_errors"]:
        console.print(
            f"not audited: {error['provider']} {error['account']}: {error['message']}",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.command("status")(status)

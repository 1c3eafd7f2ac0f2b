"""``guardian history``: what the daemon did (the action log) and told (the outbox)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from guardian.commands.common import ConfigOption, SetOption, data_console
from guardian.config import Config, load_config
from guardian.durations import format_duration, parse_duration
from guardian.errors import GuardianError

__all__ = ["open_state_store", "register"]

MAX_SINCE = timedelta(days=3650)  # ten years: more than any state database holds


class HistoryFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def open_state_store(config: Config) -> Any:
    """The state database of ``config``; a missing SQLite file, or a URL or file that is not a
    database, is a one-line error."""
    from guardian.daemon.store import Store, check_state_url

    url = config.effective_state_url
    parsed = check_state_url(url)
    database = parsed.database or ""
    sqlite_file = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if sqlite_file and not Path(database).is_file():
        raise GuardianError(
            f"no state database at {database}: has `guardian run` run with this "
            "config (state_dir / state_url)?"
        )
    return Store.open(url)


def _status(row: Any) -> str:
    if row.delivered_at is not None:
        return "delivered"
    if row.dropped_at is not None:
        return "dropped"
    return "failing" if row.last_error else "pending"


def history(
    config: ConfigOption = None,
    overrides: SetOption = None,
    since: Annotated[str, typer.Option("--since", help="How far back: 90m, 24h, 7d.")] = "7d",
    output: Annotated[
        HistoryFormat, typer.Option("--format", "-f", help="table or json.")
    ] = HistoryFormat.TABLE,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Only this instance id.")
    ] = None,
) -> None:
    """Actions taken (warnings, stops, blocked stops) and notifications sent, newest last."""
    from guardian.daemon.messages import Message
    from guardian.daemon.notify import channel_label

    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise GuardianError(f"--since: {exc}") from exc
    if window > MAX_SINCE:
        raise GuardianError(f"--since: at most {format_duration(MAX_SINCE)} (the state's history)")
    cfg, _path = load_config(config, overrides or ())
    now = datetime.now(UTC)
    store = open_state_store(cfg)
    try:
        with store.reader() as tx:
            actions = tx.actions_since(now - window)
            notes = tx.notifications_since(now - window)
    finally:
        store.close()
    if instance:
        actions = [a for a in actions if a.ref.instance_id == instance]
        notes = [n for n in notes if n.instance_key and n.instance_key.endswith(f":{instance}")]
    action_rows = [
        {
            "at": _iso(a.at),
            "cycle_id": a.cycle_id,
            "provider": a.ref.provider,
            "account": a.ref.account,
            "region": a.ref.region,
            "instance_id": a.ref.instance_id,
            "name": a.ref.name,
            "action": a.action,
            "phase": a.phase,
            "outcome": a.outcome,
            "reason": a.reason,
            "dry_run": a.dry_run,
            "intent_id": a.intent_id,
            "episode_id": a.episode_id,
        }
        for a in actions
    ]
    note_rows = [
        {
            "created_at": _iso(n.created_at),
            "kind": n.kind,
            "title": Message.from_json(n.message).plain_title(),
            "channel": channel_label(n.target, cfg.notify),
            "status": _status(n),
            "attempts": n.attempts,
            "delivered_at": _iso(n.delivered_at),
            "last_error": n.last_error,
        }
        for n in notes
    ]
    if output is HistoryFormat.JSON:
        document = {
            "generated_at": _iso(now),
            "since": _iso(now - window),
            "actions": action_rows,
            "notifications": note_rows,
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    _print_tables(action_rows, note_rows)


def _print_tables(actions: list[dict[str, Any]], notes: list[dict[str, Any]]) -> None:
    from rich.table import Table

    console = data_console()
    table = Table(title=f"Actions ({len(actions)})", title_justify="left")
    for column in ("time (UTC)", "instance", "action", "phase", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    for row in actions:
        label = row["instance_id"] + (f" ({row['name']})" if row["name"] else "")
        action = row["action"] + (" [dry run]" if row["dry_run"] else "")
        table.add_row(
            (row["at"] or "")[:19].replace("T", " "),
            label,
            action,
            row["phase"],
            row["outcome"] or "",
            row["reason"] or "",
        )
    console.print(table, markup=False)
    table = Table(title=f"Notifications ({len(notes)})", title_justify="left")
    for column in ("time (UTC)", "kind", "channel", "status", "tries", "title"):
        table.add_column(column, overflow="fold")
    for row in notes:
        status = row["status"] + (f": {row['last_error']}" if row["last_error"] else "")
        table.add_row(
            (row["created_at"] or "")[:19].replace("T", " "),
            row["kind"],
            row["channel"],
            status,
            str(row["attempts"]),
            row["title"],
        )
    console.print(table, markup=False)


def register(app: typer.Typer) -> None:
    app.command("history")(history)

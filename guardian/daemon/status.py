"""What ``guardian status`` shows, read from the state database: replicas alive, units and who
holds them, the last completed cycle and how far behind it is, open episodes, the outbox."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from guardian.daemon.schema import cycle_plans, cycles, episodes, outbox, replicas, work_units
from guardian.daemon.store import Store

__all__ = ["StatusReport", "read_status"]


@dataclass(frozen=True)
class StatusReport:
    generated_at: datetime
    backend: str  # sqlite | postgresql
    replicas: list[dict[str, Any]]
    units: list[dict[str, Any]]
    last_completed_cycle: dict[str, Any] | None
    lag_s: float | None  # now - the start of the last completed cycle
    open_episodes: list[dict[str, Any]]
    outbox_pending: int
    outbox_oldest_pending: datetime | None
    plan_errors: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = _plain(asdict(self))
        return document


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_status(store: Store, now: datetime, alive_within: timedelta) -> StatusReport:
    with store.reader() as tx:
        conn = tx.conn
        alive = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(replicas)
                .where(replicas.c.seen_at >= now - alive_within)
                .order_by(replicas.c.id)
            )
        ]
        newest_plan = conn.execute(
            sa.select(cycle_plans).order_by(cycle_plans.c.cycle.desc()).limit(1)
        ).first()
        units = [
            _unit(dict(r._mapping), newest_plan, now)
            for r in conn.execute(sa.select(work_units).order_by(work_units.c.key))
        ]
        last = _last_completed(conn, store.is_postgres)
        open_eps = [
            {
                "instance_key": r.instance_key,
                "instance_id": r.instance_id,
                "name": r.name,
                "account": r.account,
                "region": r.region,
                "warned_at": r.warned_at,
                "deadline": r.deadline,
                "promise": r.promise,
                "stop_state": r.stop_state,
                "blocked_reason": r.blocked_reason,
            }
            for r in conn.execute(
                sa.select(episodes)
                .where(episodes.c.closed_at.is_(None))
                .order_by(episodes.c.deadline)
            )
        ]
        pending = sa.and_(outbox.c.delivered_at.is_(None), outbox.c.dropped_at.is_(None))
        count, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(pending)
        ).one()
    lag = (now - last["started_at"]).total_seconds() if last else None
    return StatusReport(
        generated_at=now,
        backend="postgresql" if store.is_postgres else "sqlite",
        replicas=alive,
        units=units,
        last_completed_cycle=last,
        lag_s=round(lag, 1) if lag is not None else None,
        open_episodes=open_eps,
        outbox_pending=int(count),
        outbox_oldest_pending=_aware(oldest),
        plan_errors=list(newest_plan.errors or []) if newest_plan is not None else [],
    )


def _aware(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands back aggregates as text
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _unit(row: dict[str, Any], plan: Any, now: datetime) -> dict[str, Any]:
    lease = row["lease_until"]
    if plan is not None and row["planned_cycle"] < plan.cycle:
        state = "retired"  # no longer in the plan: an account or region removed
    elif lease is not None and lease > now:
        state = "running"
    elif plan is not None and row["done_cycle"] >= plan.cycle:
        state = "failed" if row["error"] else "done"
    elif lease is not None:
        state = "expired"  # its replica stopped renewing: the next claim takes it over
    else:
        state = "waiting"
    return {
        "unit": row["key"],
        "state": state,
        "owner": row["owner"],
        "token": row["token"],
        "lease_until": lease,
        "done_cycle": row["done_cycle"],
        "done_at": row["done_at"],
        "duration_s": row["duration_s"],
        "instances": row["instances"],
        "error": row["error"],
    }


def _last_completed(conn: Any, coordinated: bool) -> dict[str, Any] | None:
    """The newest cycle every planned unit has completed (PostgreSQL), or the newest cycle
    this one process recorded (SQLite)."""
    if not coordinated:
        row = conn.execute(sa.select(cycles).order_by(cycles.c.started_at.desc()).limit(1)).first()
        if row is None:
            return None
        return {
            "cycle": row.id,
            "started_at": row.started_at,
            "duration_s": round(row.duration_s, 3),
            "units": row.units,
        }
    unfinished = (
        sa.select(sa.func.count())
        .select_from(work_units)
        .where(work_units.c.planned_cycle >= cycle_plans.c.cycle)
        .where(work_units.c.done_cycle < cycle_plans.c.cycle)
        .scalar_subquery()
    )
    row = conn.execute(
        sa.select(cycle_plans).where(unfinished == 0).order_by(cycle_plans.c.cycle.desc()).limit(1)
    ).first()
    if row is None:
        return None
    return {
        "cycle": row.cycle,
        "started_at": row.started_at,
        "planner": row.planner,
        "units": row.units,
        "stops": row.stops,
    }

"""The daemon's durable state: episodes, the append-only action log, the outbox, observations.

Only what cannot be re-derived from the metric series lives here (DESIGN.md): warnings given and
their deadlines, actions taken, notifications owed, and a compact row per instance and cycle for
the digest and ``guardian history``. SQLAlchemy Core over SQLite (default, in the state
directory) or PostgreSQL; the schema is versioned with Alembic and migrated on open.

Every write goes through ``Store.transaction()``, so a warning's episode and its outbox rows
commit together or not at all: a crash can delay a message, never lose or duplicate it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from guardian.daemon.schema import (
    actions,
    conditions,
    cycles,
    episodes,
    observations,
    outbox,
)
from guardian.errors import ConfigError, StateUnavailable
from guardian.model import Finding, GpuInstance
from guardian.policy import Episode

__all__ = [
    "ActionRow",
    "EpisodeRow",
    "InstanceRef",
    "ObservationRow",
    "OutboxRow",
    "Store",
    "Tx",
]

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")


@dataclass(frozen=True)
class InstanceRef:
    """Who an episode or action concerns, denormalised so the log reads on its own."""

    instance_key: str
    provider: str
    account: str
    region: str
    instance_id: str
    name: str | None = None

    @classmethod
    def of(cls, instance: GpuInstance) -> InstanceRef:
        return cls(instance.key, *(getattr(instance, name) for name in _REF_FIELDS[1:]))

    def columns(self) -> dict[str, Any]:
        return asdict(self)


_REF_FIELDS = tuple(f.name for f in fields(InstanceRef))


def _row(cls: Callable[..., T], row: Any) -> T:
    """A row dataclass from a result row; its ``ref`` gathers the instance columns."""
    data = row._mapping
    ref = InstanceRef(**{name: data[name] for name in _REF_FIELDS}) if "provider" in data else None
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{name: ref if name == "ref" else data[name] for name in names})


@dataclass(frozen=True)
class EpisodeRow:
    id: int
    ref: InstanceRef
    warned_at: datetime
    deadline: datetime
    promise: str
    stop_state: str | None
    blocked_reason: str | None
    stop_error: str | None

    def as_ladder(self) -> Episode:
        return Episode(self.ref.instance_key, self.warned_at, self.deadline)


@dataclass(frozen=True)
class ActionRow:
    id: int
    at: datetime
    cycle_id: str
    ref: InstanceRef
    action: str
    phase: str
    intent_id: int | None
    outcome: str | None
    reason: str | None
    dry_run: bool
    episode_id: int | None


@dataclass(frozen=True)
class OutboxRow:
    id: int
    created_at: datetime
    kind: str
    instance_key: str | None
    dedupe_key: str
    target: str
    message: Mapping[str, Any]
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None
    dropped_at: datetime | None


@dataclass(frozen=True)
class ObservationRow:
    at: datetime
    ref: InstanceRef
    instance_type: str
    owner: str | None
    verdict: str
    hourly_price_usd: float | None
    idle_minutes: float | None


class Tx:
    """One unit of work on an open connection; commits when the ``with`` block ends."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- cycles and observations -------------------------------------------------------------
    def record_cycle(
        self,
        *,
        cycle_id: str,
        started_at: datetime,
        duration_s: float,
        findings: Sequence[Finding],
        errors: int,
        hourly_burn_usd: float,
        idle_burn_usd_per_hour: float,
    ) -> None:
        self.conn.execute(
            cycles.insert().values(
                id=cycle_id,
                started_at=started_at,
                duration_s=duration_s,
                instances=len(findings),
                errors=errors,
                hourly_burn_usd=hourly_burn_usd,
                idle_burn_usd_per_hour=idle_burn_usd_per_hour,
            )
        )
        rows = [
            {
                "cycle_id": cycle_id,
                "at": started_at,
                **InstanceRef.of(f.instance).columns(),
                "instance_type": f.instance.instance_type,
                "owner": f.instance.owner,
                "verdict": f.decision.verdict.value,
                "gpu_util_mean": f.decision.gpu_util_mean,
                "idle_minutes": f.decision.idle_minutes,
                "hourly_price_usd": f.price.hourly_price,
                "wasted_usd": f.decision.wasted_usd,
                "premium": f.price.premium,
            }
            for f in findings
        ]
        if rows:
            self.conn.execute(observations.insert(), rows)

    def latest_observations(self) -> list[ObservationRow]:
        """The instances the most recent recorded cycle saw (what a restart last knew)."""
        newest = sa.select(sa.func.max(observations.c.at)).scalar_subquery()
        query = observations.select().where(observations.c.at == newest)
        return [_row(ObservationRow, r) for r in self.conn.execute(query)]

    def last_owner(self, instance_key: str, before: datetime) -> str | None:
        """The owner tag an instance had when last observed up to ``before`` (a day back at
        most), for an alert about it written when it is no longer listed."""
        query = (
            sa.select(observations.c.owner)
            .where(observations.c.at <= before, observations.c.at >= before - timedelta(days=1))
            .where(observations.c.instance_key == instance_key)
            .order_by(observations.c.at.desc())
            .limit(1)
        )
        return self.conn.execute(query).scalar_one_or_none()

    def observations_since(self, since: datetime) -> list[ObservationRow]:
        query = observations.select().where(observations.c.at >= since)
        return [
            _row(ObservationRow, r) for r in self.conn.execute(query.order_by(observations.c.at))
        ]

    def prune(self, before: datetime) -> int:
        """Drop observations and cycle rows older than ``before``; the action log is kept."""
        gone = self.conn.execute(observations.delete().where(observations.c.at < before))
        self.conn.execute(cycles.delete().where(cycles.c.started_at < before))
        return int(gone.rowcount or 0)

    # -- episodes ------------------------------------------------------------------------------
    def open_episodes(self) -> dict[str, EpisodeRow]:
        query = episodes.select().where(episodes.c.closed_at.is_(None))
        return {r.instance_key: _row(EpisodeRow, r) for r in self.conn.execute(query)}

    def open_episode(
        self, ref: InstanceRef, warned_at: datetime, deadline: datetime, promise: str
    ) -> int:
        result = self.conn.execute(
            episodes.insert().values(
                **ref.columns(), warned_at=warned_at, deadline=deadline, promise=promise
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def update_episode(self, episode_id: int, **values: str | None) -> None:
        allowed = {"stop_state", "blocked_reason", "stop_error"}
        if not values.keys() <= allowed:
            raise ValueError(f"episode fields {sorted(values.keys() - allowed)} are not mutable")
        self.conn.execute(episodes.update().where(episodes.c.id == episode_id).values(**values))

    def close_episode(self, episode_id: int, at: datetime, reason: str) -> None:
        self.conn.execute(
            episodes.update()
            .where(episodes.c.id == episode_id, episodes.c.closed_at.is_(None))
            .values(closed_at=at, close_reason=reason)
        )

    # -- the action log (append-only) ----------------------------------------------------------
    def record_action(
        self,
        *,
        at: datetime,
        cycle_id: str,
        ref: InstanceRef,
        action: str,
        phase: str,
        outcome: str | None = None,
        reason: str | None = None,
        intent_id: int | None = None,
        dry_run: bool = False,
        episode_id: int | None = None,
    ) -> int:
        result = self.conn.execute(
            actions.insert().values(
                at=at,
                cycle_id=cycle_id,
                **ref.columns(),
                action=action,
                phase=phase,
                outcome=outcome,
                reason=reason,
                intent_id=intent_id,
                dry_run=dry_run,
                episode_id=episode_id,
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def pending_intents(self) -> list[ActionRow]:
        """Intents with no outcome: a stop whose result a crash kept from being written."""
        outcome = actions.alias("outcome")
        query = (
            actions.select()
            .where(actions.c.phase == "intent")
            .where(~sa.exists().where(outcome.c.intent_id == actions.c.id))
            .order_by(actions.c.id)
        )
        return [_row(ActionRow, r) for r in self.conn.execute(query)]

    def actions_since(self, since: datetime) -> list[ActionRow]:
        query = actions.select().where(actions.c.at >= since).order_by(actions.c.id)
        return [_row(ActionRow, r) for r in self.conn.execute(query)]

    # -- the notification outbox ---------------------------------------------------------------
    def enqueue(
        self,
        *,
        at: datetime,
        kind: str,
        dedupe_key: str,
        targets: Sequence[str],
        message: Mapping[str, Any],
        instance_key: str | None = None,
    ) -> int:
        """One row per target; a (dedupe_key, target) already queued is not queued again."""
        existing = {
            r.target
            for r in self.conn.execute(
                sa.select(outbox.c.target).where(outbox.c.dedupe_key == dedupe_key)
            )
        }
        rows = [
            {
                "created_at": at,
                "kind": kind,
                "instance_key": instance_key,
                "dedupe_key": dedupe_key,
                "target": target,
                "message": dict(message),
                "attempts": 0,
                "next_attempt_at": at,
            }
            for target in dict.fromkeys(targets)
            if target not in existing
        ]
        if rows:
            self.conn.execute(outbox.insert(), rows)
        return len(rows)

    def due_notifications(self, now: datetime, limit: int = 200) -> list[OutboxRow]:
        query = (
            outbox.select()
            .where(outbox.c.delivered_at.is_(None), outbox.c.dropped_at.is_(None))
            .where(outbox.c.next_attempt_at <= now)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        return [_row(OutboxRow, r) for r in self.conn.execute(query)]

    def pending_notifications(self) -> int:
        query = sa.select(sa.func.count()).where(
            outbox.c.delivered_at.is_(None), outbox.c.dropped_at.is_(None)
        )
        return int(self.conn.execute(query).scalar_one())

    def mark_delivered(self, row_id: int, at: datetime) -> None:
        self.conn.execute(
            outbox.update()
            .where(outbox.c.id == row_id)
            .values(delivered_at=at, attempts=outbox.c.attempts + 1, last_error=None)
        )

    def mark_failed(self, row_id: int, error: str, retry_at: datetime) -> None:
        self.conn.execute(
            outbox.update()
            .where(outbox.c.id == row_id)
            .values(attempts=outbox.c.attempts + 1, last_error=error, next_attempt_at=retry_at)
        )

    def defer_target(self, target: str, until: datetime) -> None:
        """Hold back every undelivered row of a failing channel until ``until`` (no attempt)."""
        self.conn.execute(
            outbox.update()
            .where(outbox.c.target == target, outbox.c.next_attempt_at < until)
            .where(outbox.c.delivered_at.is_(None), outbox.c.dropped_at.is_(None))
            .values(next_attempt_at=until)
        )

    def mark_dropped(self, row_id: int, at: datetime, reason: str) -> None:
        self.conn.execute(
            outbox.update().where(outbox.c.id == row_id).values(dropped_at=at, last_error=reason)
        )

    def notifications_since(self, since: datetime) -> list[OutboxRow]:
        query = outbox.select().where(outbox.c.created_at >= since).order_by(outbox.c.id)
        return [_row(OutboxRow, r) for r in self.conn.execute(query)]

    # -- open conditions (e.g. a tripped circuit breaker), to alert on changes only ------------
    def open_conditions(self, prefix: str) -> dict[str, datetime]:
        query = conditions.select().where(conditions.c.key.startswith(prefix, autoescape=True))
        return {r.key: r.opened_at for r in self.conn.execute(query)}

    def open_condition(self, key: str, at: datetime, detail: str) -> None:
        self.conn.execute(conditions.insert().values(key=key, opened_at=at, detail=detail))

    def close_condition(self, key: str) -> None:
        self.conn.execute(conditions.delete().where(conditions.c.key == key))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets `guardian history` read while the daemon writes; busy_timeout rides out the
    # short write locks instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """The state database. Thread-safe: writers take one lock (SQLite has one writer anyway)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"state_url: not a database URL: {exc}") from exc
        kwargs: dict[str, Any] = {"future": True}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except (ModuleNotFoundError, sa.exc.NoSuchModuleError) as exc:
            raise ConfigError(
                f"state_url: no driver for {parsed.drivername} "
                "(PostgreSQL needs: pip install 'gpu-guardian[postgres]')"
            ) from exc
        if parsed.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._write_lock = threading.RLock()

    @classmethod
    def open(cls, url: str) -> Store:
        """Open the database and bring its schema to the newest version."""
        store = cls(url)
        store.migrate()
        return store

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config as AlembicConfig

        alembic_cfg = AlembicConfig()
        alembic_cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._write_lock, self.engine.begin() as conn:
            alembic_cfg.attributes["connection"] = conn
            command.upgrade(alembic_cfg, "head")

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One unit of work; ``StateUnavailable`` when the database refuses it (nothing of it
        is kept: the caller must not act on what it meant to record)."""
        with self._write_lock, self._unavailable_as_state_error(), self.engine.begin() as conn:
            yield Tx(conn)

    @contextmanager
    def reader(self) -> Iterator[Tx]:
        with self._unavailable_as_state_error(), self.engine.connect() as conn:
            yield Tx(conn)

    @contextmanager
    def _unavailable_as_state_error(self) -> Iterator[None]:
        """An operational failure of the database (read-only file, full disk, server down)
        becomes a one-line ``StateUnavailable``. The pooled connections are dropped with it: a
        SQLite connection opened on a read-only file stays read-only, so only a new one sees
        the database writable again — which is how the daemon recovers on its own."""
        try:
            yield
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            reason = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
            where = sa.make_url(self.url).render_as_string(hide_password=True)
            raise StateUnavailable(f"state database {where}: {reason}") from exc

    def reconnect(self) -> None:
        """Drop the pooled connections: the next use opens fresh ones (after an outage, a
        pooled SQLite connection may still be the read-only one)."""
        self.engine.dispose()

    def close(self) -> None:
        self.engine.dispose()

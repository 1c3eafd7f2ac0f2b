"""The daemon's durable state: episodes, the append-only action log, the outbox, observations.

Only what cannot be re-derived from the metric series lives here (DESIGN.md): warnings given and
their deadlines, actions taken, notifications owed, and a compact row per instance and cycle for
the digest and ``guardian history``. SQLAlchemy Core over SQLite (default, in the state
directory) or PostgreSQL; the schema is versioned with Alembic and migrated on open.

Every write goes through ``Store.transaction()``, so a warning's episode and its outbox rows
commit together or not at all: a crash can delay a message, never lose or duplicate it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
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
    cycle_plans,
    cycles,
    episodes,
    observations,
    replicas,
)
from guardian.daemon.store_outbox import OutboxRow, OutboxTx
from guardian.errors import ConfigError, GuardianError, StateUnavailable
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
    "check_state_url",
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
class ObservationRow:
    at: datetime
    ref: InstanceRef
    instance_type: str
    owner: str | None
    verdict: str
    hourly_price_usd: float | None
    idle_minutes: float | None


class Tx(OutboxTx):
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
        replica: str | None = None,
        units: int | None = None,
        with_observations: bool = True,
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
                replica=replica,
                units=units,
            )
        )
        if with_observations:
            self.record_observations(cycle_id, started_at, findings)

    def record_observations(
        self, cycle_id: str, started_at: datetime, findings: Sequence[Finding]
    ) -> None:
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
        """Drop observations, cycle rows, cycle plans and replicas last seen before ``before``;
        the action log is kept."""
        gone = self.conn.execute(observations.delete().where(observations.c.at < before))
        self.conn.execute(cycles.delete().where(cycles.c.started_at < before))
        self.conn.execute(cycle_plans.delete().where(cycle_plans.c.started_at < before))
        self.conn.execute(replicas.delete().where(replicas.c.seen_at < before))
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

    def take_stop(self, episode_id: int, intent_id: int) -> bool:
        """Mark ``intent_id`` as the episode's stop in flight, only if none is and the episode
        is open: a compare-and-set, so two writers can never both be stopping one instance."""
        result = self.conn.execute(
            episodes.update()
            .where(
                episodes.c.id == episode_id,
                episodes.c.stop_intent_id.is_(None),
                episodes.c.closed_at.is_(None),
            )
            .values(stop_intent_id=intent_id)
        )
        return bool(result.rowcount)

    def release_stop(self, episode_id: int) -> None:
        """The stop in flight ended without stopping (failed, not executed): allow another."""
        self.conn.execute(
            episodes.update().where(episodes.c.id == episode_id).values(stop_intent_id=None)
        )

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
        replica: str | None = None,
    ) -> int:
        result = self.conn.execute(
            actions.insert().values(
                replica=replica,
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

    # -- open conditions (e.g. a tripped circuit breaker), to alert on changes only ------------
    def open_conditions(self, prefix: str) -> dict[str, datetime]:
        query = conditions.select().where(conditions.c.key.startswith(prefix, autoescape=True))
        return {r.key: r.opened_at for r in self.conn.execute(query)}

    def condition_details(self, prefix: str) -> dict[str, str | None]:
        """Open conditions under ``prefix`` with their detail (what each one is about)."""
        query = conditions.select().where(conditions.c.key.startswith(prefix, autoescape=True))
        return {r.key: r.detail for r in self.conn.execute(query)}

    def open_condition(self, key: str, at: datetime, detail: str) -> None:
        self.conn.execute(conditions.insert().values(key=key, opened_at=at, detail=detail))

    def close_condition(self, key: str) -> None:
        self.conn.execute(conditions.delete().where(conditions.c.key == key))


# Held while migrating, so replicas started together on an empty database migrate one at a
# time (the others then find the schema current); any constant works, this one spells "ggmig".
MIGRATION_LOCK = 0x67676D6967


def check_state_url(url: str) -> sa.URL:
    """The parsed ``state_url``; a ``ConfigError`` for what is not an SQLite or PostgreSQL URL."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"state_url: not a database URL: {exc}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"state_url: {parsed.get_backend_name()} is not supported: use sqlite:// or "
            "postgresql+psycopg://"
        )
    return parsed


def _where(url: str) -> str:
    """The database for a message: the SQLite file, or the URL with its password masked."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return parsed.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets `guardian history` read while the daemon writes; busy_timeout rides out the
    # short write locks instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """The state database. Thread-safe. On SQLite writers take one lock (it has one writer
    anyway); on PostgreSQL they run concurrently and the database's locks decide."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = check_state_url(url)
        kwargs: dict[str, Any] = {"future": True}
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        elif self.is_postgres:
            # A connection that died with a server restart is replaced, not handed out; every
            # unit worker may hold one; a server that does not answer fails in seconds.
            kwargs.update(pool_pre_ping=True, pool_size=12, max_overflow=20, pool_timeout=30)
            kwargs["connect_args"] = {"connect_timeout": 5}
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except (ModuleNotFoundError, sa.exc.NoSuchModuleError) as exc:
            raise ConfigError(
                f"state_url: no driver for {parsed.drivername} "
                "(PostgreSQL needs: pip install 'gpu-guardian[postgres]')"
            ) from exc
        if parsed.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self.is_postgres else threading.RLock()
        )

    @classmethod
    def open(cls, url: str) -> Store:
        """Open the database and bring its schema to the newest version.

        A file that is not SQLite, a directory, a database that refuses the connection: one
        line naming the database (``GuardianError``), never a traceback."""
        store = cls(url)
        try:
            store.migrate()
        except sa.exc.SQLAlchemyError as exc:
            store.close()
            reason = getattr(exc, "orig", None) or exc
            raise GuardianError(
                f"state database {_where(url)}: {str(reason).splitlines()[0]} "
                "(check state_dir / state_url)"
            ) from exc
        return store

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config as AlembicConfig

        alembic_cfg = AlembicConfig()
        alembic_cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._write_lock, self.engine.begin() as conn:
            if self.is_postgres:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            alembic_cfg.attributes["connection"] = conn
            command.upgrade(alembic_cfg, "head")

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One unit of work; ``StateUnavailable`` when the database refuses it (nothing of it
        is kept: the caller must not act on what it meant to record)."""
        with self._write_lock, self.state_errors(), self.engine.begin() as conn:
            yield Tx(conn)

    @contextmanager
    def reader(self) -> Iterator[Tx]:
        with self.state_errors(), self.engine.connect() as conn:
            yield Tx(conn)

    @contextmanager
    def state_errors(self) -> Iterator[None]:
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

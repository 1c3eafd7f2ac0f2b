"""The daemon's tables (SQLAlchemy Core). Alembic migrations in ``guardian/migrations`` create
exactly these; a test compares the two."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = [
    "UtcDateTime",
    "actions",
    "conditions",
    "cycle_plans",
    "cycles",
    "documents",
    "episodes",
    "metadata",
    "observations",
    "outbox",
    "replicas",
    "work_units",
]


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC in Python on every backend; SQLite stores it naive, PostgreSQL as timestamptz."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()


def _ref_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("instance_key", sa.String(300), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256)),
    ]


cycles = sa.Table(
    "cycles",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("started_at", UtcDateTime, nullable=False, index=True),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("instances", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("hourly_burn_usd", sa.Float, nullable=False),
    sa.Column("idle_burn_usd_per_hour", sa.Float, nullable=False),
    sa.Column("replica", sa.String(128)),  # who ran it, with several replicas
    sa.Column("units", sa.Integer),  # the units it audited
)

observations = sa.Table(
    "observations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cycle_id", sa.String(32), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False, index=True),
    *_ref_columns(),
    sa.Column("instance_type", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(256)),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("gpu_util_mean", sa.Float),
    sa.Column("idle_minutes", sa.Float),
    sa.Column("hourly_price_usd", sa.Float),
    sa.Column("wasted_usd", sa.Float),
    sa.Column("premium", sa.Float),
)

episodes = sa.Table(
    "episodes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_ref_columns(),
    sa.Column("warned_at", UtcDateTime, nullable=False),
    sa.Column("deadline", UtcDateTime, nullable=False),
    # What the warning promised (stop | dry_run | alert): if the settings now promise something
    # else, the episode is warned again rather than acted on without notice.
    sa.Column("promise", sa.String(16), nullable=False),
    sa.Column("stop_state", sa.String(32)),  # would_stop | blocked (for good) | None
    sa.Column("blocked_reason", sa.String(64)),  # the last reason recorded, to record changes only
    sa.Column("stop_error", sa.Text),  # the last failed stop's error, to alert once per error
    # The stop intent in flight: set only where it is NULL, in the intent's own transaction, so
    # two replicas can never both be stopping one episode's instance.
    sa.Column("stop_intent_id", sa.Integer),
    sa.Column("closed_at", UtcDateTime),
    sa.Column("close_reason", sa.String(64)),
    # At most one open episode per instance: a second warning is a constraint violation.
    sa.Index(
        "uq_episodes_open",
        "instance_key",
        unique=True,
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    ),
)

actions = sa.Table(
    "actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False, index=True),
    sa.Column("cycle_id", sa.String(32), nullable=False),
    *_ref_columns(),
    sa.Column("action", sa.String(32), nullable=False),  # warn stop hibernate resume block close
    sa.Column("phase", sa.String(16), nullable=False),  # intent | outcome | event
    # An outcome names its intent; the unique constraint makes a second outcome impossible.
    sa.Column("intent_id", sa.Integer, sa.ForeignKey("actions.id"), unique=True),
    sa.Column("outcome", sa.String(32)),  # ok failed unknown not_executed dry_run blocked ...
    sa.Column("reason", sa.Text),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("episode_id", sa.Integer),
    sa.Column("replica", sa.String(128)),  # who acted, with several replicas
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("instance_key", sa.String(300)),
    sa.Column("dedupe_key", sa.String(200), nullable=False),
    sa.Column("target", sa.String(300), nullable=False),  # url:<digest> or owner:<address>
    sa.Column("message", sa.JSON, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", UtcDateTime),
    sa.Column("dropped_at", UtcDateTime),
    sa.UniqueConstraint("dedupe_key", "target", name="uq_outbox_dedupe"),
)

conditions = sa.Table(
    "conditions",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("opened_at", UtcDateTime, nullable=False),
    sa.Column("detail", sa.Text),
)

# -- several replicas on one PostgreSQL (guardian.daemon.coordination) -------------------------

# One row per unit (provider/account/region) ever planned. A replica claims it for a cycle with
# a lease (``lease_until``, the database's clock) and a fencing ``token`` that every claim
# increments: a write on the unit's behalf is valid only while the token is still the writer's.
work_units = sa.Table(
    "work_units",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("account", sa.String(64), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("planned_cycle", sa.BigInteger, nullable=False),  # the newest plan naming it
    sa.Column("cycle", sa.BigInteger, nullable=False),  # the cycle of the newest claim
    sa.Column("done_cycle", sa.BigInteger, nullable=False),  # the newest cycle completed
    sa.Column("owner", sa.String(128)),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("lease_until", UtcDateTime),  # NULL: not held
    sa.Column("claimed_at", UtcDateTime),
    sa.Column("done_at", UtcDateTime),
    sa.Column("duration_s", sa.Float),
    sa.Column("instances", sa.Integer),
    sa.Column("api_calls", sa.Integer),
    sa.Column("error", sa.Text),
)

# One row per cycle (``floor(epoch seconds / poll_interval)``): who planned it, and the stops
# it has spent of ``limits.max_stops_per_cycle``, across replicas.
cycle_plans = sa.Table(
    "cycle_plans",
    metadata,
    sa.Column("cycle", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("planned_at", UtcDateTime, nullable=False),
    sa.Column("planner", sa.String(128), nullable=False),
    sa.Column("units", sa.Integer, nullable=False),
    sa.Column("stops", sa.Integer, nullable=False),
    sa.Column("errors", sa.JSON, nullable=False),  # accounts or folders that could not be listed
)

replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("host", sa.String(256), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("seen_at", UtcDateTime, nullable=False, index=True),
    sa.Column("cycle", sa.BigInteger),
    sa.Column("units_running", sa.Integer, nullable=False),
    sa.Column("units_done", sa.Integer, nullable=False),
)

# Files one replica makes for all (the refreshed price cache), so every replica reads the same.
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
)

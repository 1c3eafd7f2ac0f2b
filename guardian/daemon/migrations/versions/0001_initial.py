"""Initial schema: cycles, observations, episodes, actions, outbox, conditions.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)


def _ref_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("instance_key", sa.String(300), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256)),
    ]


def upgrade() -> None:
    op.create_table(
        "cycles",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("instances", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("hourly_burn_usd", sa.Float, nullable=False),
        sa.Column("idle_burn_usd_per_hour", sa.Float, nullable=False),
    )
    op.create_index("ix_cycles_started_at", "cycles", ["started_at"])
    op.create_table(
        "observations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("cycle_id", sa.String(32), nullable=False),
        sa.Column("at", _TS, nullable=False),
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
    op.create_index("ix_observations_at", "observations", ["at"])
    op.create_table(
        "episodes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *_ref_columns(),
        sa.Column("warned_at", _TS, nullable=False),
        sa.Column("deadline", _TS, nullable=False),
        sa.Column("promise", sa.String(16), nullable=False),
        sa.Column("stop_state", sa.String(32)),
        sa.Column("blocked_reason", sa.String(64)),
        sa.Column("stop_error", sa.Text),
        sa.Column("closed_at", _TS),
        sa.Column("close_reason", sa.String(64)),
    )
    op.create_index(
        "uq_episodes_open",
        "episodes",
        ["instance_key"],
        unique=True,
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("cycle_id", sa.String(32), nullable=False),
        *_ref_columns(),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("intent_id", sa.Integer, sa.ForeignKey("actions.id"), unique=True),
        sa.Column("outcome", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("episode_id", sa.Integer),
    )
    op.create_index("ix_actions_at", "actions", ["at"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("instance_key", sa.String(300)),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("message", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", _TS),
        sa.Column("dropped_at", _TS),
        sa.UniqueConstraint("dedupe_key", "target", name="uq_outbox_dedupe"),
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])
    op.create_table(
        "conditions",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("opened_at", _TS, nullable=False),
        sa.Column("detail", sa.Text),
    )


def downgrade() -> None:
    for table in ("conditions", "outbox", "actions", "episodes", "observations", "cycles"):
        op.drop_table(table)

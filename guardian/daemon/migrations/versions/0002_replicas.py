"""Several replicas on one PostgreSQL: work units with leases, cycle plans, replicas, documents;
the stop intent in flight on an episode; who ran a cycle or took an action.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("cycles") as batch:
        batch.add_column(sa.Column("replica", sa.String(128)))
        batch.add_column(sa.Column("units", sa.Integer))
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("stop_intent_id", sa.Integer))
    with op.batch_alter_table("actions") as batch:
        batch.add_column(sa.Column("replica", sa.String(128)))
    op.create_table(
        "work_units",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("planned_cycle", sa.BigInteger, nullable=False),
        sa.Column("cycle", sa.BigInteger, nullable=False),
        sa.Column("done_cycle", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("lease_until", _TS),
        sa.Column("claimed_at", _TS),
        sa.Column("done_at", _TS),
        sa.Column("duration_s", sa.Float),
        sa.Column("instances", sa.Integer),
        sa.Column("api_calls", sa.Integer),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "cycle_plans",
        sa.Column("cycle", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("planned_at", _TS, nullable=False),
        sa.Column("planner", sa.String(128), nullable=False),
        sa.Column("units", sa.Integer, nullable=False),
        sa.Column("stops", sa.Integer, nullable=False),
        sa.Column("errors", sa.JSON, nullable=False),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("seen_at", _TS, nullable=False),
        sa.Column("cycle", sa.BigInteger),
        sa.Column("units_running", sa.Integer, nullable=False),
        sa.Column("units_done", sa.Integer, nullable=False),
    )
    op.create_index("ix_replicas_seen_at", "replicas", ["seen_at"])
    op.create_table(
        "documents",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("documents", "replicas", "cycle_plans", "work_units"):
        op.drop_table(table)
    with op.batch_alter_table("actions") as batch:
        batch.drop_column("replica")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("stop_intent_id")
    with op.batch_alter_table("cycles") as batch:
        batch.drop_column("units")
        batch.drop_column("replica")

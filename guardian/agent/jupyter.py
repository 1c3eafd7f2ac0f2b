"""Read the Jupyter servers on this machine: which kernels run, whether they are busy, when they
last did anything and how many browsers are connected to them.

Servers are found by the runtime files they write (``jpserver-PID.json``, and the classic
Notebook's ``nbserver-PID.json``) in the runtime directory of each of the machine's users, and by
``agent.jupyter.urls`` (tokens from ``agent.jupyter.token_file``). Each is read with one
``GET /api/kernels`` — Jupyter's own REST API, over HTTP with the standard library (or over the
server's Unix socket), so no Jupyter extension and no Jupyter import is needed.

A server that cannot be read is reported once (per server and reason) and counts as *unread*:
its kernels are unknown, which the notebook signal treats as a browser connected.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from guardian.errors import ConfigError

__all__ = [
    "JupyterServer",
    "JupyterWatch",
    "Kernel",
    "ServerReading",
    "default_runtime_dirs",
    "find_servers",
    "read_kernels",
    "read_tokens",
]

log = structlog.get_logger(__name__)

_RUNTIME_PATTERNS = ("jpserver-*.json", "nbserver-*.json")
_USER_RUNTIME = Path(".local/share/jupyter/runtime")


@dataclass(frozen=True)
class JupyterServer:
    """One Jupyter server to ask; ``url`` ends in ``/`` (the server's base URL)."""

    url: str
    token: str = ""
    sock: str | None = None  # a Unix socket the server listens on instead of a TCP port
    source: str = "agent.jupyter.urls"  # or the runtime file it was found by

    @property
    def label(self) -> str:
        """How logs and the status name it: never with the token."""
        return f"unix:{self.sock}" if self.sock else self.url


@dataclass(frozen=True)
class Kernel:
    """A kernel as its server reports it."""

    id: str
    name: str | None
    execution_state: str  # idle | busy | starting | …; "unknown" where not given
    last_activity: datetime | None
    connections: int | None  # browsers (websockets) connected; None = not reported
    server: str  # the server's label


@dataclass(frozen=True)
class ServerReading:
    server: JupyterServer
    kernels: tuple[Kernel, ...] | None  # None: the server could not be read
    error: str | None = None


def default_runtime_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Every user's Jupyter runtime directory, and ``$JUPYTER_RUNTIME_DIR`` if set."""
    env = os.environ if environ is None else environ
    dirs: list[Path] = []
    if env.get("JUPYTER_RUNTIME_DIR"):
        dirs.append(Path(env["JUPYTER_RUNTIME_DIR"]))
    homes = {Path(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir not in ("", "/")}
    dirs.extend(home / _USER_RUNTIME for home in sorted(homes))
    return list(dict.fromkeys(dirs))


def read_tokens(path: Path | None, urls: Sequence[str]) -> dict[str, str]:
    """Tokens for ``agent.jupyter.urls`` from the token file: a line ``TOKEN`` applies to every
    URL, a line ``URL TOKEN`` to that URL; ``#`` starts a comment. Raises ConfigError."""
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"agent.jupyter.token_file: cannot read {path}: {exc.strerror or exc}"
        ) from exc
    shared = ""
    per_url: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 1:
            shared = parts[0]
        elif len(parts) == 2:
            per_url[_base_url(parts[0])] = parts[1]
        else:
            raise ConfigError(
                f"agent.jupyter.token_file: {path} line {number}: expected TOKEN or URL TOKEN"
            )
    return {_base_url(url): per_url.get(_base_url(url), shared) for url in urls}


def _base_url(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _alive(pid: object, is_alive: Callable[[int], bool]) -> bool:
    return not isinstance(pid, int) or is_alive(pid)


def find_servers(
    runtime_dirs: Iterable[Path],
    *,
    urls: Sequence[str] = (),
    tokens: Mapping[str, str] | None = None,
    is_alive: Callable[[int], bool] = lambda pid: True,
) -> list[JupyterServer]:
    """The servers of the runtime files (those whose process still runs) and the configured
    URLs, each once."""
    found: dict[str, JupyterServer] = {}
    for directory in runtime_dirs:
        for pattern in _RUNTIME_PATTERNS:
            try:
                files = sorted(directory.glob(pattern))
            except OSError:
                continue
            for path in files:
                try:
                    info = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # half-written, or not ours to read: the next poll retries
                if not isinstance(info, dict) or not _alive(info.get("pid"), is_alive):
                    continue  # a runtime file left behind by a server that died
                server = _from_runtime(info, path)
                if server is not None:
                    found.setdefault(server.label, server)
    for url in urls:
        base = _base_url(url)
        found.setdefault(base, JupyterServer(base, (tokens or {}).get(base, "")))
    return list(found.values())


def _from_runtime(info: Mapping[str, Any], path: Path) -> JupyterServer | None:
    sock = str(info.get("sock") or "") or None
    url = str(info.get("url") or "")
    if sock is None and not url.startswith(("http://", "https://")):
        return None
    if sock is not None:
        url = "http://localhost" + str(info.get("base_url") or "/")
    # A server listening on every interface writes its hostname; ask it on the loopback.
    parts = urlsplit(url)
    if parts.hostname in ("0.0.0.0", "::", ""):
        url = parts._replace(netloc=f"127.0.0.1:{parts.port}").geturl()
    return JupyterServer(_base_url(url), str(info.get("token") or ""), sock, str(path))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _connection(server: JupyterServer, timeout_s: float) -> http.client.HTTPConnection:
    if server.sock:
        return _UnixConnection(server.sock, timeout_s)
    parts = urlsplit(server.url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout_s)
    return http.client.HTTPConnection(parts.netloc, timeout=timeout_s)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _kernel(entry: Mapping[str, Any], server: JupyterServer) -> Kernel | None:
    kernel_id = entry.get("id")
    if not isinstance(kernel_id, str):
        return None
    connections = entry.get("connections")
    return Kernel(
        id=kernel_id,
        name=str(entry["name"]) if entry.get("name") is not None else None,
        execution_state=str(entry.get("execution_state") or "unknown"),
        last_activity=_time(entry.get("last_activity")),
        connections=connections if isinstance(connections, int) else None,
        server=server.label,
    )


def read_kernels(server: JupyterServer, timeout_s: float = 2.0) -> ServerReading:
    """``GET /api/kernels`` of one server. Never raises: a failure is ``ServerReading.error``."""
    path = urlsplit(server.url).path or "/"
    headers = {"Accept": "application/json"}
    if server.token:
        headers["Authorization"] = f"token {server.token}"
    connection = _connection(server, timeout_s)
    try:
        connection.request("GET", path + "api/kernels", headers=headers)
        response = connection.getresponse()
        body = response.read(4 * 1024 * 1024)
        if response.status != 200:
            return ServerReading(server, None, f"HTTP {response.status} {response.reason}")
        entries = json.loads(body)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return ServerReading(server, None, str(exc) or type(exc).__name__)
    finally:
        connection.close()
    if not isinstance(entries, list):
        return ServerReading(server, None, "/api/kernels did not answer with a list")
    kernels = [k for k in (_kernel(e, server) for e in entries if isinstance(e, dict)) if k]
    return ServerReading(server, tuple(kernels))


class JupyterWatch:
    """Finds the servers at each read and reads their kernels; says once why a server cannot
    be read, and again once it can."""

    def __init__(
        self,
        runtime_dirs: Sequence[Path] | None = None,
        *,
        urls: Sequence[str] = (),
        tokens: Mapping[str, str] | None = None,
        timeout_s: float = 2.0,
        is_alive: Callable[[int], bool] = lambda pid: True,
    ) -> None:
        self.runtime_dirs = list(runtime_dirs) if runtime_dirs else default_runtime_dirs()
        self.urls = tuple(urls)
        self.tokens = dict(tokens or {})
        self.timeout_s = timeout_s
        self.is_alive = is_alive
        self._reported: dict[str, str] = {}  # server label → the error last reported

    def read(self) -> list[ServerReading]:
        servers = find_servers(
            self.runtime_dirs, urls=self.urls, tokens=self.tokens, is_alive=self.is_alive
        )
        readings = [read_kernels(server, self.timeout_s) for server in servers]
        for reading in readings:
            label = reading.server.label
            if reading.error is not None and self._reported.get(label) != reading.error:
                log.warning(
                    "jupyter_unreadable",
                    server=label,
                    source=reading.server.source,
                    error=reading.error,
                    treated_as="a browser connected",
                )
                self._reported[label] = reading.error
            elif reading.error is None and label in self._reported:
                log.info("jupyter_readable", server=label)
                del self._reported[label]
        return readings

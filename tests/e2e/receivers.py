"""Local stand-ins for the outside world of alerts: an HTTP webhook receiver and an SMTP server.

Both are real servers on 127.0.0.1 that apprise reaches over the wire (``json://`` and
``mailto://``); both can be switched off and on again on the same port to play an outage.
"""

from __future__ import annotations

import email
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message as EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["HttpReceiver", "Mail", "NotifySocket", "SmtpReceiver", "free_port", "wait_for"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; returns its value or raises ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


class HttpReceiver:
    """Records JSON POSTs; ``failing = True`` answers 503 to play a broken endpoint."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.received_at: list[float] = []  # wall-clock time of each post, for grace checks
        self.failing = False
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.attempts += 1
                if receiver.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.posts.append((self.path, json.loads(body or b"{}")))
                receiver.received_at.append(time.time())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"json://127.0.0.1:{self.port}{path}"

    def first_received(self, prefix: str) -> float:
        """When the first post whose title starts with ``prefix`` arrived."""
        return next(
            at
            for at, (_path, payload) in zip(self.received_at, self.posts, strict=True)
            if str(payload.get("title", "")).startswith(prefix)
        )

    def titles(self) -> list[str]:
        return [str(payload.get("title", "")) for _path, payload in self.posts]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: tuple[str, ...]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    def text(self) -> str:
        parts = []
        for part in self.message.walk():
            if part.get_content_type() in ("text/plain", "text/html"):
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    parts.append(payload.decode(part.get_content_charset() or "utf-8"))
        return "\n".join(parts)


class SmtpReceiver:
    """An aiosmtpd server on a fixed port that can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self._controller: Controller | None = None
        self.start()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        content = envelope.content
        raw = content if isinstance(content, bytes) else content.encode()
        self.mails.append(
            Mail(envelope.mail_from, tuple(envelope.rcpt_tos), email.message_from_bytes(raw))
        )
        return "250 OK"

    def url(self, to: str = "ops@example.com", sender: str = "guardian@example.com") -> str:
        return f"mailto://127.0.0.1:{self.port}?from={sender}&to={to}"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None


class NotifySocket:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``, read continuously
    as systemd reads it (a reader that stops reading fills the queue and loses datagrams)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(message)

    def drain(self) -> list[str]:
        """Every datagram received so far (kept across calls)."""
        time.sleep(0.1)  # what was sent just before is in the queue: let the reader take it
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=2)
        self.sock.close()

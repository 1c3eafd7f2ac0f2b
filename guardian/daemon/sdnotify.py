"""The systemd notify protocol: one datagram to ``$NOTIFY_SOCKET`` per state change.

A few lines instead of a dependency. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op, so the daemon runs the same under a terminal, a container or a test.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

__all__ = ["notify", "watchdog_period"]


def notify(*states: str) -> bool:
    """Send ``READY=1``, ``WATCHDOG=1``, ``STATUS=...`` and friends; False when not under systemd.

    A failure to send is swallowed: the service manager being unreachable must never stop an
    audit cycle, and systemd notices a missing watchdog ping by itself.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not states:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    # A STATUS= line must stay on one line: newlines would start a new assignment.
    payload = "\n".join(state.replace("\n", " ") for state in states).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never wait: a datagram socket whose reader has stopped reading blocks a send once
            # its queue is full, and that froze a cycle (and then SIGTERM) in a test. Dropping a
            # ping is harmless; waiting on the service manager is not.
            sock.setblocking(False)
            sock.connect(address)
            sock.send(payload)
    except OSError:  # BlockingIOError (queue full) included
        return False
    return True


def watchdog_period() -> timedelta | None:
    """The watchdog interval systemd expects pings within, if it watches this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the variables were inherited from a parent that is the watched one
    return timedelta(microseconds=int(usec))

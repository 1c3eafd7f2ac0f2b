"""A fake ``/proc`` tree on disk, laid out as Linux lays out the real one, for
``guardian.agent.processes.ProcFs``: ``PID/cmdline`` (NUL-separated), ``PID/stat``, ``PID/fd/N``
symlinks to ``socket:[INODE]``, ``PID/net/tcp`` and ``tcp6`` in the kernel's format, and files
under ``PID/root/`` as the process sees them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

_TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._next_inode = 40_000

    def inode(self) -> int:
        self._next_inode += 1
        return self._next_inode

    def add(
        self,
        pid: int,
        argv: Sequence[str],
        *,
        ppid: int = 1,
        comm: str | None = None,
        listening: Sequence[int] = (),
        loopback: Sequence[int] = (),
        connected: int = 0,
        ipv6: bool = False,
        files: Mapping[str, str] | None = None,
        readable_fds: bool = True,
    ) -> dict[int, int]:
        """A process listening on ``listening`` ports on every interface and on ``loopback``
        ports on 127.0.0.1 (or ::1), holding ``connected`` other sockets; returns its listening
        sockets, inode → port."""
        proc = self.root / str(pid)
        (proc / "net").mkdir(parents=True, exist_ok=True)
        (proc / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        name = comm if comm is not None else Path(argv[0]).name[:15]
        (proc / "stat").write_text(f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")
        sockets = {self.inode(): port for port in [*listening, *loopback]}
        local = "00000000000000000000000001000000" if ipv6 else "0100007F"
        any_address = "00000000" * (4 if ipv6 else 1)
        address = {
            inode: local if port in loopback else any_address for inode, port in sockets.items()
        }
        other = [self.inode() for _ in range(connected)]
        # No fd directory plays one the agent may not list (tests run as root, which chmod
        # cannot keep out).
        if readable_fds:
            (proc / "fd").mkdir()
            for n, inode in enumerate([*sockets, *other], start=3):
                os.symlink(f"socket:[{inode}]", proc / "fd" / str(n))
            os.symlink("/dev/null", proc / "fd" / "0")
        lines = [
            f"   {n}: {address[inode]}:{port:04X} "
            f"{any_address}:0000 0A 00000000:00000000 00:00000000 00000000  "
            f"1000        0 {inode} 1 0000000000000000 100 0 0 10 0"
            for n, (inode, port) in enumerate(sockets.items())
        ]
        # A connected socket of another process in the namespace: not a listener of ours.
        lines.append(
            "   9: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  "
            "1000        0 99999 1 0000000000000000 20 4 30 10 -1"
        )
        (proc / "net" / ("tcp6" if ipv6 else "tcp")).write_text(_TCP_HEADER + "\n".join(lines))
        (proc / "net" / ("tcp" if ipv6 else "tcp6")).write_text(_TCP_HEADER)
        for path, text in (files or {}).items():
            target = proc / "root" / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return sockets

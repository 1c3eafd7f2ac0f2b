"""What one poll of the agent produced: shared by the loop, its sinks and the status file."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from guardian.agent.gpu import Snapshot
from guardian.model import Decision, Point

if TYPE_CHECKING:
    from guardian.agent.autostop import AutostopState
    from guardian.agent.local_disks import LocalDisks
    from guardian.agent.notebook import NotebookReport

__all__ = ["PollResult"]


@dataclass(frozen=True)
class PollResult:
    snapshot: Snapshot
    decision: Decision
    autostop: AutostopState | None
    keep_until: datetime | None
    notebook: NotebookReport | None = None  # who holds the GPUs; the notebook signal
    local_disks: LocalDisks | None = None  # the newest reading (None: none found, or not read)
    local_disks_at: datetime | None = None

    @property
    def local_disk_used(self) -> Point | None:
        """(when, MiB used beyond empty filesystems), as the daemon reads the published metric."""
        disks, at = self.local_disks, self.local_disks_at
        if disks is None or disks.used_mib is None or at is None:
            return None
        return at, disks.used_mib

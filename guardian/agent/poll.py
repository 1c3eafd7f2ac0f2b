"""What one poll of the agent produced: shared by the loop, its sinks and the status file."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from guardian.agent.gpu import Snapshot
from guardian.model import Decision

if TYPE_CHECKING:
    from guardian.agent.autostop import AutostopState
    from guardian.agent.notebook import NotebookReport

__all__ = ["PollResult"]


@dataclass(frozen=True)
class PollResult:
    snapshot: Snapshot
    decision: Decision
    autostop: AutostopState | None
    keep_until: datetime | None
    notebook: NotebookReport | None = None  # who holds the GPUs; the notebook signal

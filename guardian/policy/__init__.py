"""The pure decision core: what an instance does (verdict rules, its own pause history), the
warn→stop ladder, the per-instance safety gates and the guardian tags. No I/O, no clock (the
time is an argument), no SDK: the daemon, the audit, the agent and the backtest all call it.

Exports ``decide``, the ladder (``Episode``, ``Step``, ``next_step``), the gates
(``instance_block``, ``permanent_block``), the tag readers and the notebook warning text.
"""

from guardian.policy.gates import instance_block, permanent_block
from guardian.policy.ladder import Episode, Step, next_step
from guardian.policy.notebook import NOTEBOOK_ADVICE
from guardian.policy.rules import decide
from guardian.policy.tags import format_keep_until, protection, speedup_override

__all__ = [
    "NOTEBOOK_ADVICE",
    "Episode",
    "Step",
    "decide",
    "format_keep_until",
    "instance_block",
    "next_step",
    "permanent_block",
    "protection",
    "speedup_override",
]

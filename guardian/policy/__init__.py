"""The pure decision core: what an instance does (verdict rules, its own pause history), the
warn→stop ladder, the per-instance safety gates and the guardian tags. No I/O, no clock (the
time is an argument), no SDK: the daemon, the audit, the agent and the backtest all call it.

Exports ``decide``, the ladder (``Episode``, ``Step``, ``next_step``), the gates
(``instance_block``, ``permanent_block``, ``enforce_plan``...), who owns an instance
(``aws_managed_by``, ``gcp_managed_by``), the tag readers and the notebook warning text.
"""

from guardian.policy.gates import (
    STANDBY_STOP,
    Block,
    Plan,
    enforce_plan,
    instance_block,
    ownership_block,
    permanent_block,
    standby_eligible,
)
from guardian.policy.ladder import Episode, Step, next_step
from guardian.policy.notebook import NOTEBOOK_ADVICE
from guardian.policy.owners import (
    aws_managed_by,
    controller_label,
    gcp_managed_by,
    reservation_knob,
    saving_knob,
)
from guardian.policy.rules import decide
from guardian.policy.tags import format_keep_until, protection, speedup_override

__all__ = [
    "NOTEBOOK_ADVICE",
    "STANDBY_STOP",
    "Block",
    "Episode",
    "Plan",
    "Step",
    "aws_managed_by",
    "controller_label",
    "decide",
    "enforce_plan",
    "format_keep_until",
    "gcp_managed_by",
    "instance_block",
    "next_step",
    "ownership_block",
    "permanent_block",
    "protection",
    "reservation_knob",
    "saving_knob",
    "speedup_override",
    "standby_eligible",
]

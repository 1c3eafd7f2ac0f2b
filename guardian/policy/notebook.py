"""The notebook signal as of a decision: the one representation the daemon, the agent and the
backtest share.

All three hand ``decide`` a ``GpuUtilisation`` whose ``instance_series`` may hold
``InstanceMetric.NOTEBOOK_IDLE_S``: the daemon as its provider read it beside the GPU metrics, the
agent as it computed it at each poll, the backtest from the trace's ``notebook_idle_s`` column.
The signal counts only when it was measured with the newest GPU sample: the agent stops sending it
the moment a browser reconnects or a cell runs, so an older point says nothing about now.

Pure, like the rest of ``guardian.policy``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from datetime import datetime
from operator import itemgetter

from guardian.model import GpuUtilisation, InstanceMetric

__all__ = ["NOTEBOOK_ADVICE", "notebook_idle_s"]

_AT = itemgetter(0)

# What a notebook's owner needs to read in the warning, from the daemon or the agent. Reopening
# the notebook alone may not cancel the stop (the GPUs may be idle past the usual wait too).
NOTEBOOK_ADVICE = (
    "A notebook kernel holds the GPU with no browser connected. Save your notebooks, and "
    "anything that lives only in the kernel's memory (variables, a trained model), before the "
    "stop: stopping the machine ends the kernel. To keep working on it, keep the machine."
)


def notebook_idle_s(
    utilisation: GpuUtilisation, newest_sample: datetime, now: datetime
) -> float | None:
    """Seconds the GPU-holding notebook kernels have been idle with no browser connected, as
    of the newest GPU sample; None when absent, older than that sample, or not a number."""
    series = utilisation.instance_series.get(InstanceMetric.NOTEBOOK_IDLE_S)
    if not series:
        return None
    index = bisect_right(series, now, key=_AT)  # nothing from after the decision
    if index == 0:
        return None
    at, value = series[index - 1]
    if at < newest_sample or not math.isfinite(value) or value < 0:
        return None
    return value

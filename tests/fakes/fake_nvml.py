"""The scripted NVML backend, for tests that look for fakes here.

It lives in ``guardian.agent.gpu.fake`` so that ``guardian agent --simulate SCENARIO`` can use
it too; this module only re-exports it.
"""

from guardian.agent.gpu.fake import (
    ERROR_CODES,
    SCENARIOS,
    FakeNvml,
    FakeNVMLError,
    ManualClock,
    Scenario,
    load_scenario,
)

__all__ = [
    "ERROR_CODES",
    "SCENARIOS",
    "FakeNVMLError",
    "FakeNvml",
    "ManualClock",
    "Scenario",
    "load_scenario",
]

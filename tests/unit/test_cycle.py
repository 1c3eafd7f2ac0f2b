"""audit_cycle consumes a provider's streamed metrics: each instance decided once, none lost."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from guardian import cycle
from guardian.config import Config
from guardian.cycle import audit_cycle
from guardian.model import GpuInstance, GpuUtilisation, Verdict
from guardian.policy import decide
from tests.fake_provider import CATALOG, NOW, FakeProvider, flat_samples, make_instance


@dataclass
class ScriptedProvider(FakeProvider):
    """Answers with exactly the pairs it is given, in that order."""

    script: Sequence[tuple[str, GpuUtilisation]] = ()

    def utilisation(
        self, instances: Sequence[GpuInstance], start: datetime, end: datetime
    ) -> Iterator[tuple[str, GpuUtilisation]]:
        self.utilisation_calls += 1
        yield from self.script


def test_out_of_order_stray_and_missing_entries() -> None:
    a, b, c = make_instance("i-a"), make_instance("i-b"), make_instance("i-c")
    idle = GpuUtilisation(flat_samples(0.0, 120, mem_mib=0.0), 60, 1)
    busy = GpuUtilisation(flat_samples(90.0, 120), 60, 1)
    provider = ScriptedProvider(
        instances=[a, b, c],
        script=[
            (c.key, idle),  # out of discovery order
            ("aws/123456789012/us-east-1/i-stranger", idle),  # never discovered: ignored
            (a.key, busy),
            (c.key, busy),  # answered twice: the first answer stands
        ],  # b: no entry at all
    )

    result = audit_cycle(Config(), [provider], CATALOG, NOW)

    by_id = {f.instance.instance_id: f for f in result.findings}
    assert sorted(by_id) == ["i-a", "i-b", "i-c"]
    assert by_id["i-a"].decision.verdict is Verdict.BUSY
    assert by_id["i-c"].decision.verdict is Verdict.IDLE
    assert by_id["i-b"].decision.verdict is Verdict.UNMEASURED
    assert "no metrics entry" in " ".join(by_id["i-b"].decision.reasons)


def test_each_instance_is_decided_before_the_next_entry_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The point of streaming: the cycle must not drain the iterator before deciding."""
    decided: list[str] = []
    decisions_before_entry: list[int] = []

    def counting_decide(instance: GpuInstance, *args: Any, **kwargs: Any) -> Any:
        decided.append(instance.instance_id)
        return decide(instance, *args, **kwargs)

    monkeypatch.setattr(cycle, "decide", counting_decide)

    @dataclass
    class Watching(FakeProvider):
        def utilisation(
            self, instances: Sequence[GpuInstance], start: datetime, end: datetime
        ) -> Iterator[tuple[str, GpuUtilisation]]:
            for instance in instances:
                decisions_before_entry.append(len(decided))
                yield instance.key, GpuUtilisation(flat_samples(50.0, 60), 60, 1)

    instances = [make_instance(f"i-{n}") for n in range(3)]
    audit_cycle(Config(), [Watching(instances=instances)], CATALOG, NOW)

    assert decisions_before_entry == [0, 1, 2]
    assert decided == ["i-0", "i-1", "i-2"]

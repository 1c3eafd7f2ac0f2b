"""ParseGate on real botocore clients against moto: one large answer parsed at a time, and a
failed call never leaves the gate shut."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from guardian.providers.aws.parse_gate import ParseGate
from tests.conftest import MotoServer


class Overlap:
    """Counts how many threads are between before-parse and response-received at once."""

    def __init__(self, hold_s: float) -> None:
        self.inside = 0
        self.most = 0
        self.parses = 0
        self._hold_s = hold_s
        self._lock = threading.Lock()

    def enter(self, **_: Any) -> None:
        with self._lock:
            self.inside += 1
            self.parses += 1
            self.most = max(self.most, self.inside)
        time.sleep(self._hold_s)  # a slow parse: without the gate, the threads overlap here

    def leave(self, **_: Any) -> None:
        with self._lock:
            self.inside = max(0, self.inside - 1)


def _clients(moto_server: MotoServer, gate: ParseGate | None, overlap: Overlap) -> list[Any]:
    clients = []
    for region in ("us-east-1", "us-west-2", "eu-west-1"):
        ec2 = moto_server.client("ec2", region)
        # The counter leaves before the gate opens and enters after the gate is passed.
        ec2.meta.events.register("response-received.ec2.DescribeInstances", overlap.leave)
        if gate is not None:
            gate.attach(ec2.meta.events, "ec2", ["DescribeInstances"])
        ec2.meta.events.register("before-parse.ec2.DescribeInstances", overlap.enter)
        clients.append(ec2)
    return clients


def _in_threads(calls: list[Callable[[], Any]]) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None] * len(calls)

    def run(n: int) -> None:
        try:
            calls[n]()
        except BaseException as exc:
            errors[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


@pytest.mark.parametrize("gated", [False, True])
def test_one_parse_at_a_time_with_the_gate(moto_server: MotoServer, gated: bool) -> None:
    overlap = Overlap(hold_s=0.2)
    clients = _clients(moto_server, ParseGate() if gated else None, overlap)
    calls = [lambda ec2=ec2: ec2.describe_instances() for ec2 in clients for _ in range(2)]
    assert _in_threads(calls) == [None] * 6
    assert overlap.parses == 6
    if gated:
        assert overlap.most == 1
    else:  # the control run shows the check can fail: ungated, the slow parses overlap
        assert overlap.most > 1


def test_an_error_answer_and_a_failing_parse_release_the_gate(moto_server: MotoServer) -> None:
    gate = ParseGate(timeout_s=5)
    overlap = Overlap(hold_s=0)
    first, second, _ = _clients(moto_server, gate, overlap)
    with pytest.raises(ClientError):  # an error answer is parsed too, then released
        first.describe_instances(InstanceIds=["i-doesnotexist"])

    def broken_parser(**_: Any) -> None:
        raise RuntimeError("parse failed")

    first.meta.events.register("before-parse.ec2.DescribeInstances", broken_parser)
    with pytest.raises(RuntimeError, match="parse failed"):
        first.describe_instances()

    started = time.monotonic()
    errors = _in_threads([second.describe_instances])
    assert errors == [None]
    assert time.monotonic() - started < 2  # not the 5 s timeout: the gate was open

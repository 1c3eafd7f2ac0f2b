"""One part of the cloud down while the rest works: guardian audits what it can, reports what it
cannot, acts on nothing it cannot see or measure, says so once, and picks up where it left off.

Each test runs the daemon cycle by cycle (``tests/fault_world.py``) on a simulated clock against
moto through a ``FaultProxy``: an instance is warned, then part of the cloud fails for longer
than its grace period and than ``limits.alert_after_failed_cycles``, then comes back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from structlog.testing import capture_logs

from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.simulated import moto_speedups
from tests.conftest import MotoServer
from tests.e2e.receivers import HttpReceiver
from tests.fakes.fault_proxy import Fault, Request, ScheduledFaults
from tests.fault_world import ACCOUNT, FaultWorld, Machine, busy, idle_after, world_config

HISTORY, FUTURE = 30, 15
TOTAL = HISTORY + FUTURE
OUTAGE = 5  # cycles: past the 3-minute grace and past alert_after_failed_cycles (3)
ONE_RETRY = BotoConfig(retries={"mode": "standard", "total_max_attempts": 2})


@pytest.fixture
def indexed_moto(moto_server: MotoServer) -> Iterator[MotoServer]:
    """Stock moto's ListMetrics is quadratic in datums: index it for these tests only."""
    moto_speedups.install()
    try:
        yield moto_server
    finally:
        moto_speedups.uninstall()
        moto_server.reset()


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


def open_world(
    tmp_path: Path,
    moto: MotoServer,
    catalog: GpuTypeCatalog,
    http: HttpReceiver,
    machines: list[Machine],
    **config: Any,
) -> FaultWorld:
    return FaultWorld(
        tmp_path,
        moto.endpoint_url,
        machines,
        world_config(tmp_path, http.url(), idle={"grace": "3m"}, **config),
        history=timedelta(minutes=HISTORY),
        future=timedelta(minutes=FUTURE),
        catalog=catalog,
        client_config=ONE_RETRY,
    )


def titled(http: HttpReceiver, prefix: str) -> list[str]:
    return [title for title in http.titles() if title.startswith(prefix)]


def body(http: HttpReceiver, prefix: str) -> str:
    (message,) = [p["message"] for _, p in http.posts if str(p["title"]).startswith(prefix)]
    return str(message)


def open_episodes(world: FaultWorld) -> set[str]:
    with world.daemon.store.reader() as tx:
        return {e.ref.instance_id for e in tx.open_episodes().values()}


def test_an_unreachable_region_is_reported_not_audited_and_left_alone(
    tmp_path: Path, indexed_moto: MotoServer, aws_gpu_catalog: GpuTypeCatalog, http: HttpReceiver
) -> None:
    machines = [
        Machine("east", "idle", idle_after(0, TOTAL)),
        Machine("west", "idle", idle_after(0, TOTAL), region="us-west-2"),
        Machine("west-busy", "busy", busy(TOTAL), region="us-west-2"),
    ]
    world = open_world(
        tmp_path,
        indexed_moto,
        aws_gpu_catalog,
        http,
        machines,
        aws={"regions": ["us-east-1", "us-west-2"]},
    )
    try:
        world.cycle()  # both idle ones warned
        world.proxy.intercept = lambda r: Fault("drop") if r.region == "us-west-2" else None
        reports = [world.cycle() for _ in range(OUTAGE)]
        west = {world.ids["west"], world.ids["west-busy"]}
        for report in reports:
            assert report is not None
            assert {f.instance.region for f in report.result.findings} <= {"us-east-1"}
            assert {ref.instance_id for ref in report.not_audited} == west
            assert "2 not audited" in report.status_line()
        assert world.state("east") == "stopped"  # the reachable region went on as usual
        assert world.state("west") == "running"
        assert [a for a in world.actions("west") if a.action != "warn"] == []
        assert world.ids["west"] in open_episodes(world)  # not gone: the episode stays open
        alert = f"guardian cannot audit aws account {ACCOUNT}"
        assert titled(http, "guardian") == [alert]  # once, not once per cycle or instance
        assert "us-west-2" in body(http, alert)
        assert all(instance_id in body(http, alert) for instance_id in west)

        world.proxy.intercept = None
        world.cycle()
        assert world.state("west") == "stopped"  # warned, past its deadline, still idle
        assert titled(http, "guardian") == [alert, f"guardian audits aws account {ACCOUNT} again"]
        world.daemon.flush_outbox()
        assert len(titled(http, "Idle GPU instance")) == 2  # no second warning for "west"
    finally:
        world.close()


def test_metrics_down_while_discovery_works_stops_nothing_and_alerts_once(
    tmp_path: Path, indexed_moto: MotoServer, aws_gpu_catalog: GpuTypeCatalog, http: HttpReceiver
) -> None:
    machines = [
        Machine("idle", "idle", idle_after(0, TOTAL)),
        Machine("busy", "busy", busy(TOTAL)),
        Machine("busy-2", "busy", busy(TOTAL)),
    ]
    world = open_world(tmp_path, indexed_moto, aws_gpu_catalog, http, machines)
    try:
        world.cycle()
        before = len(http.posts)  # the warning
        world.proxy.intercept = lambda r: (
            Fault("http503") if r.operation.startswith("monitoring:") else None
        )
        reports = [world.cycle() for _ in range(OUTAGE)]
        for report in reports:
            assert report is not None
            verdicts = {f.decision.verdict.value for f in report.result.findings}
            assert verdicts == {"unmeasured"}
            assert all(f.metrics_failed for f in report.result.findings)
        assert world.state("idle") == "running"  # past its deadline, but not measured
        assert [a.action for a in world.actions()] == ["warn"]
        new = http.titles()[before:]
        assert new == ["GPU metrics missing in aws: nothing is stopped there"]
        assert "3 of 3 GPU instances could not be measured" in body(http, "GPU metrics missing")

        world.proxy.intercept = None
        world.cycle()
        assert world.state("idle") == "stopped"
        world.daemon.flush_outbox()
        assert titled(http, "GPU metrics") == [
            "GPU metrics missing in aws: nothing is stopped there",
            "GPU metrics back in aws",
        ]
    finally:
        world.close()


def test_a_stop_whose_answer_is_lost_is_read_from_the_instance_not_repeated(
    tmp_path: Path, indexed_moto: MotoServer, aws_gpu_catalog: GpuTypeCatalog, http: HttpReceiver
) -> None:
    world = open_world(
        tmp_path, indexed_moto, aws_gpu_catalog, http, [Machine("idle", "idle", idle_after(0, 45))]
    )
    # Every StopInstances reaches moto, which stops the instance, but no answer comes back.
    world.proxy.plan = ScheduledFaults(always={"ec2:StopInstances": Fault("forward_then_drop")})
    try:
        reports = [world.cycle() for _ in range(6)]
        world.daemon.flush_outbox()
    finally:
        world.close()
    unconfirmed = [r.enforcement.unconfirmed for r in reports if r is not None]
    assert unconfirmed == [0, 0, 0, 1, 0, 0]  # the deadline's cycle; the next reconciles
    assert world.state("idle") == "stopped"
    stops = [(a.phase, a.outcome, a.reason) for a in world.actions("idle") if a.action == "stop"]
    assert stops == [
        ("intent", None, stops[0][2]),
        ("outcome", "ok", "no longer running when checked again: the stop took effect"),
    ]
    # One call from guardian, retried once by the SDK, both answered by nobody; none after.
    assert world.proxy.calls["ec2:StopInstances"] == 2
    assert world.proxy.injected[("ec2:StopInstances", "forward_then_drop")] == 2
    label = f"idle ({world.ids['idle']})"
    assert titled(http, "Stopped") == [f"Stopped idle GPU instance {label}"]
    assert titled(http, "Could not stop") == []
    assert titled(http, "Stop unconfirmed") == []


ROLE_A = "arn:aws:iam::111111111111:role/guardian"
ROLE_B = "arn:aws:iam::222222222222:role/guardian"


def test_revoked_credentials_of_one_account_give_one_error_and_the_others_go_on(
    tmp_path: Path, indexed_moto: MotoServer, aws_gpu_catalog: GpuTypeCatalog, http: HttpReceiver
) -> None:
    machines = [
        Machine("a-idle", "idle", idle_after(0, TOTAL), role_arn=ROLE_A),
        Machine("b-idle", "idle", idle_after(0, TOTAL), role_arn=ROLE_B),
    ]
    world = open_world(
        tmp_path,
        indexed_moto,
        aws_gpu_catalog,
        http,
        machines,
        aws={"accounts": [{"role_arn": ROLE_A, "external_id": "ext-a"}, {"role_arn": ROLE_B}]},
    )
    b_keys: set[str] = set()

    def remember_b(operation: str, answer: bytes, _headers: Any) -> bytes:
        if operation == "sts:AssumeRole" and b"222222222222" in answer:
            b_keys.update(re.findall(r"<AccessKeyId>([^<]+)</AccessKeyId>", answer.decode()))
        return answer

    def revoked(request: Request) -> Fault | None:
        return (
            Fault("error", status=401, code="AuthFailure") if request.access_key in b_keys else None
        )

    world.proxy.rewrite = remember_b
    try:
        world.cycle()  # both warned
        assert b_keys
        world.proxy.intercept = revoked
        with capture_logs() as logs:
            reports = [world.cycle() for _ in range(OUTAGE)]
        for report in reports:
            assert report is not None
            assert [e.account for e in report.result.errors] == ["222222222222"]
            assert "AuthFailure" in report.result.errors[0].message
            assert [ref.instance_id for ref in report.not_audited] == [world.ids["b-idle"]]
        assert world.state("a-idle") == "stopped"
        assert world.state("b-idle") == "running"
        assert world.ids["b-idle"] in open_episodes(world)
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [(e["event"], e["account"]) for e in errors] == [
            ("unit_unreachable", "222222222222")  # one error line for the episode
        ]
        alert = "guardian cannot audit aws account 222222222222"
        assert titled(http, "guardian") == [alert]
        assert "AuthFailure" in body(http, alert)

        world.proxy.intercept = None
        world.cycle()
        assert world.state("b-idle") == "stopped"
        assert titled(http, "guardian") == [alert, "guardian audits aws account 222222222222 again"]
    finally:
        world.close()

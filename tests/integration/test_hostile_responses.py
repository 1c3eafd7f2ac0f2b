"""API answers with missing fields, wrong types and unknown enum values: the instance they
concern is skipped with a logged reason, the cycle goes on, the other instances are audited and
enforced as before, and nothing busy or unknown is stopped.

The daemon runs cycle by cycle (``tests/fault_world.py``) against moto through a ``FaultProxy``
whose ``rewrite`` breaks one instance's part of EC2's real DescribeInstances XML
(``tests/fakes/body_rewrites.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.config import Config as BotoConfig
from structlog.testing import capture_logs

from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.series import reduce_gpu_series
from tests.conftest import MotoServer
from tests.e2e.receivers import HttpReceiver
from tests.fakes.body_rewrites import ElementEdit, drop, ec2_instance_rewrite, set_text
from tests.fakes.fault_proxy import Rewrite
from tests.fault_world import FaultWorld, Machine, busy, idle_after, world_config

HISTORY, FUTURE = 30, 15
TOTAL = HISTORY + FUTURE
CYCLES = 6  # past the 3-minute grace: every idle instance that may be stopped is stopped
ONE_RETRY = BotoConfig(retries={"mode": "standard", "total_max_attempts": 2})

# What EC2 could send for one instance: each makes it impossible to know what the machine is.
SKIPPED: dict[str, tuple[ElementEdit, ...]] = {
    "no_instance_type": (drop("instanceType"),),
    "no_state": (drop("instanceState"),),
    "unknown_state": (
        set_text("instanceState/name", "hibernating-soon"),
        set_text("instanceState/code", "99"),
    ),
    "not_running": (set_text("instanceState/name", "stopping"),),
    "no_launch_time": (drop("launchTime"),),
    "unknown_lifecycle": (set_text("instanceLifecycle", "capacity-future"),),
}


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


def _chain(*rewrites: Rewrite) -> Rewrite:
    def rewrite(operation: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        for each in rewrites:
            body = each(operation, body, headers)
        return body

    return rewrite


def test_instances_ec2_describes_brokenly_are_skipped_and_the_rest_goes_on(
    tmp_path: Path, moto_server: MotoServer, aws_gpu_catalog: GpuTypeCatalog, http: HttpReceiver
) -> None:
    """One world, one broken instance per kind of breakage: each is skipped with its reason
    logged; a tag without a value is only a tag; the idle one is stopped, the busy one not."""
    machines = [Machine(case, "idle", idle_after(0, TOTAL)) for case in SKIPPED]
    machines += [
        Machine("no_tag_value", "idle", idle_after(0, TOTAL), tags={"team": "ml"}),
        Machine("idle", "idle", idle_after(0, TOTAL)),
        Machine("busy", "busy", busy(TOTAL)),
    ]
    world = FaultWorld(
        tmp_path,
        moto_server.endpoint_url,
        machines,
        world_config(
            tmp_path, http.url(), idle={"grace": "3m"}, limits={"max_stops_per_cycle": 50}
        ),
        history=timedelta(minutes=HISTORY),
        future=timedelta(minutes=FUTURE),
        catalog=aws_gpu_catalog,
        client_config=ONE_RETRY,
    )
    broken = {world.ids[case]: case for case in SKIPPED}
    world.proxy.rewrite = _chain(
        *(ec2_instance_rewrite(world.ids[case], *edits) for case, edits in SKIPPED.items()),
        ec2_instance_rewrite(world.ids["no_tag_value"], drop("tagSet/item/value")),
    )
    try:
        with capture_logs() as logs:
            world.run(CYCLES)
        for report in world.reports:
            assert report is not None
            assert not report.result.errors  # the region was listed: only instances skipped
            seen = {f.instance.instance_id for f in report.result.findings}
            assert not seen & broken.keys()
        first = {f.instance.instance_id: f for f in world.reports[0].result.findings}  # type: ignore[union-attr]
        assert first[world.ids["no_tag_value"]].instance.tags == {"Name": "", "team": ""}
        skipped = {
            e["instance_id"]: e["reason"] for e in logs if e["event"] == "aws_instance_skipped"
        }
        assert skipped.keys() == broken.keys()
        assert all(skipped.values())
        for case in broken.values():
            assert world.state(case) == "running", case
        assert world.state("idle") == "stopped"
        assert world.state("no_tag_value") == "stopped"
        assert world.state("busy") == "running"
        assert not world.pending_intents()
    finally:
        world.close()


def test_nan_and_negative_readings_are_no_readings() -> None:
    """What the providers and traces reduce through: a NaN or negative reading of one GPU must
    not let the other GPU's 0 % stand for the instance (max() over NaN depends on order)."""
    now = datetime.now(UTC).replace(microsecond=0)
    samples = reduce_gpu_series(
        {"0": [(now, 0.0)], "1": [(now, math.nan)], "2": [(now, -5.0)]},
        {"0": [(now, 100.0)], "1": [(now, math.inf)]},
        expected_gpus=3,
    )
    (sample,) = samples
    assert sample.gpu_util_pct == 0.0
    assert not sample.complete  # two GPUs did not really report: incomplete, never idle
    assert sample.mem_used_mib == 100.0  # the one GPU that reported both

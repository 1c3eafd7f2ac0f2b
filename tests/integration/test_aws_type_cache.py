"""The instance-type catalog kept on disk for a day: a second audit lists its instances, not
every instance type again; a type the cache does not know is described (issue 12)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from moto.ec2.models.instance_types import INSTANCE_TYPES
from structlog.testing import capture_logs

from guardian.config import Config
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.provider import AwsProvider
from guardian.providers.aws.type_cache import CACHE_FILE, TypeCacheFile
from guardian.simulated.aws import launch_gpu_instances
from tests.conftest import AwsWire, MotoServer

REGIONS = ["us-east-1", "eu-west-1"]
ACCOUNT = "123456789012"


def audit_once(wire: AwsWire, state_dir: Path, *, primed: bool = False) -> set[str]:
    """One audit's discovery, as a fresh process would run it: a new provider and catalog."""
    config = Config.model_validate({"state_dir": str(state_dir), "aws": {"regions": REGIONS}})
    catalog = GpuTypeCatalog(disk=TypeCacheFile(state_dir))
    if primed:  # moto's copy of the descriptions: skips its 3-4 s full listing
        catalog.prime(INSTANCE_TYPES.values())
    provider = AwsProvider(config, session=wire.session, catalog=catalog)
    try:
        discovery = provider.discover()
    finally:
        provider.close()
    assert discovery.errors == ()
    return {instance.instance_id for instance in discovery.instances}


def test_a_second_audit_skips_the_type_listing(moto_server: MotoServer, tmp_path: Path) -> None:
    trainers = {
        launch_gpu_instances(moto_server.client("ec2", region), "g5.xlarge")[0]
        for region in REGIONS
    }
    cold_wire = AwsWire()
    assert audit_once(cold_wire, tmp_path, primed=True) == trainers
    assert (tmp_path / CACHE_FILE).is_file()
    entries = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert set(entries) == {f"{ACCOUNT}/{region}" for region in REGIONS}
    assert "g5.xlarge" in entries[f"{ACCOUNT}/us-east-1"]["gpu"]

    warm_wire = AwsWire()
    assert audit_once(warm_wire, tmp_path) == trainers
    assert warm_wire.sent("ec2:DescribeInstanceTypes") == []
    # The one check per region that no type is new to the cache.
    assert len(warm_wire.sent("ec2:DescribeInstanceTypeOfferings")) == len(REGIONS)


def test_a_type_the_cache_does_not_know_is_described(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    (trainer,) = launch_gpu_instances(moto_server.client("ec2"), "g6.xlarge")
    audit_once(AwsWire(), tmp_path, primed=True)
    # As if the cache had been written before g6.xlarge existed.
    path = tmp_path / CACHE_FILE
    data = json.loads(path.read_text())
    entry = data["entries"][f"{ACCOUNT}/us-east-1"]
    entry["offered"].remove("g6.xlarge")
    entry["gpu"].pop("g6.xlarge")
    path.write_text(json.dumps(data))

    wire = AwsWire()
    assert trainer in audit_once(wire, tmp_path)
    described = [c.params.get("InstanceTypes") for c in wire.sent("ec2:DescribeInstanceTypes")]
    assert ["g6.xlarge"] in described  # only the unknown name, not the whole catalog
    assert "g6.xlarge" in json.loads(path.read_text())["entries"][f"{ACCOUNT}/us-east-1"]["gpu"]


def test_a_day_old_entry_or_an_unwritable_dir_costs_only_time(tmp_path: Path) -> None:
    now = [datetime.now(UTC)]
    cache = TypeCacheFile(tmp_path, clock=lambda: now[0])
    cache.save(ACCOUNT, "us-east-1", frozenset({"g5.xlarge"}), {})
    assert cache.load(ACCOUNT, "us-east-1") is not None
    assert cache.load("999999999999", "us-east-1") is None  # per account
    now[0] += timedelta(days=1, minutes=1)
    assert cache.load(ACCOUNT, "us-east-1") is None  # a day old: listed again
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert cache.load(ACCOUNT, "us-east-1") is None
    blocked = TypeCacheFile(tmp_path / CACHE_FILE / "below-a-file")
    with capture_logs() as logs:
        blocked.save(ACCOUNT, "us-east-1", frozenset(), {})
        blocked.save(ACCOUNT, "us-east-1", frozenset(), {})
    assert [e["event"] for e in logs] == ["aws_type_cache_not_written"]  # said once

"""AwsProvider.discover against a moto server: what it finds, and what it sends to find it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from moto.ec2.models.instance_types import INSTANCE_TYPES

from guardian.config import Config
from guardian.errors import AuthError
from guardian.model import Lifecycle
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.errors import CREDENTIALS_HELP
from guardian.providers.aws.limits import AwsLimits
from guardian.providers.aws.provider import AwsProvider, probe_credentials
from guardian.simulated.aws import launch_gpu_instances
from tests.conftest import AwsWire, MotoServer

ACCOUNT = "123456789012"  # moto's default account


def make_provider(
    catalog: GpuTypeCatalog,
    wire: AwsWire | None = None,
    *,
    regions: Any = ("us-east-1",),
    accounts: Any = (),
    limits: AwsLimits | None = None,
    client_config: BotoConfig | None = None,
) -> AwsProvider:
    config = Config.model_validate(
        {
            "aws": {
                "regions": regions if isinstance(regions, str) else list(regions),
                "accounts": list(accounts),
            }
        }
    )
    return AwsProvider(
        config,
        session=wire.session if wire else None,
        catalog=catalog,
        limits=limits,
        client_config=client_config,
    )


def test_discovers_running_gpu_instances_with_their_facts(
    moto_server: MotoServer, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ec2 = moto_server.client("ec2")
    three_hours_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    (trainer,) = launch_gpu_instances(
        ec2,
        "g5.12xlarge",
        tags={"Name": "trainer", "team": "vision", "CreatedBy": "bob"},
        zone="us-east-1b",
        hibernation=True,
        launched_at=three_hours_ago,
    )
    (persistent,) = launch_gpu_instances(ec2, "p4d.24xlarge", spot="persistent")
    (one_time,) = launch_gpu_instances(ec2, "g4dn.xlarge", spot="one-time")
    (graviton,) = launch_gpu_instances(ec2, "g5g.xlarge")
    (fractional,) = launch_gpu_instances(ec2, "g6f.large")
    launch_gpu_instances(ec2, "m5.large")  # no GPU: not ours
    (stopped,) = launch_gpu_instances(ec2, "g5.xlarge")
    ec2.stop_instances(InstanceIds=[stopped])
    launch_gpu_instances(moto_server.client("ec2", "us-west-2"), "g6.xlarge")  # not configured
    (irish,) = launch_gpu_instances(moto_server.client("ec2", "eu-west-1"), "g5.xlarge")

    provider = make_provider(aws_gpu_catalog, regions=["us-east-1", "eu-west-1"])
    discovery = provider.discover()

    assert discovery.errors == ()
    found = {i.instance_id: i for i in discovery.instances}
    assert set(found) == {trainer, persistent, one_time, graviton, fractional, irish}
    t = found[trainer]
    assert (t.provider, t.account, t.region, t.zone) == ("aws", ACCOUNT, "us-east-1", "us-east-1b")
    assert (t.instance_type, t.gpu_count, t.gpu_model, t.gpu_memory_mib) == (
        "g5.12xlarge",
        4,
        "NVIDIA A10G",
        22888,
    )
    assert t.launch_time == three_hours_ago
    assert t.launch_time.tzinfo is not None
    assert t.launch_time.utcoffset() == timedelta(0)
    assert (t.name, t.owner) == ("trainer", "vision")  # "team" comes before "CreatedBy"
    assert t.tags == {"Name": "trainer", "team": "vision", "CreatedBy": "bob"}
    assert (t.lifecycle, t.spot_one_time) == (Lifecycle.ON_DEMAND, False)
    assert (t.hibernation_configured, t.has_instance_store) == (True, True)
    assert t.key == f"aws:{ACCOUNT}:{trainer}"
    assert (found[persistent].lifecycle, found[persistent].spot_one_time) == (Lifecycle.SPOT, False)
    assert found[persistent].gpu_count == 8
    assert (found[one_time].lifecycle, found[one_time].spot_one_time) == (Lifecycle.SPOT, True)
    assert found[graviton].has_instance_store is False
    assert (found[fractional].gpu_count, found[fractional].gpu_model) == (1, "NVIDIA L4")
    assert found[irish].region == "eu-west-1"
    assert found[irish].name is None
    # Sorted, and the calls were counted per operation.
    assert [i.instance_id for i in discovery.instances] == sorted(
        found, key=lambda i: (found[i].region, i)
    )
    assert discovery.api_calls["ec2:DescribeInstances"] == 2
    assert discovery.api_calls["ec2:DescribeSpotInstanceRequests"] == 1
    assert discovery.api_calls["sts:GetCallerIdentity"] == 1
    assert provider.api_calls["ec2:DescribeInstances"] == 2
    second = provider.discover()
    assert "sts:GetCallerIdentity" not in second.api_calls  # the account id is read once
    assert provider.api_calls["ec2:DescribeInstances"] == 4


def test_sends_exact_type_filters_in_chunks_and_follows_every_page(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ec2 = moto_server.client("ec2")
    launched = [launch_gpu_instances(ec2, "g5.xlarge")[0] for _ in range(12)]
    launched += launch_gpu_instances(ec2, "p5.48xlarge", spot="one-time", count=3)
    limits = AwsLimits(filter_values=20, page_size=5)
    provider = make_provider(aws_gpu_catalog, aws_wire, limits=limits)

    discovery = provider.discover()

    assert sorted(i.instance_id for i in discovery.instances) == sorted(launched)
    gpu_types = set(aws_gpu_catalog.gpu_types(ec2, "us-east-1"))
    sent = aws_wire.sent("ec2:DescribeInstances")
    chunks: list[list[str]] = []
    for call in sent:
        filters = {f["Name"]: f["Values"] for f in call.params["Filters"]}
        assert filters["instance-state-name"] == ["running"]
        assert call.params["MaxResults"] == 5
        values = filters["instance-type"]
        assert len(values) <= 20
        assert not any("*" in v or "?" in v for v in values)  # exact names, no wildcards
        if values not in chunks:
            chunks.append(values)
    assert sorted(v for chunk in chunks for v in chunk) == sorted(gpu_types)
    assert len(chunks) == -(-len(gpu_types) // 20)
    # 15 reservations in pages of 5 (moto pages by reservation): the token was followed.
    tokens = [c.params.get("NextToken") for c in sent]
    assert sum(t is not None for t in tokens) >= 2
    spot = aws_wire.sent("ec2:DescribeSpotInstanceRequests")
    assert len(spot) == 1  # batched: one call for the three spot instances
    assert spot[0].params["Filters"][0]["Name"] == "instance-id"
    assert len(spot[0].params["Filters"][0]["Values"]) == 3


def test_the_catalog_describes_types_once_then_only_lists_names_per_region(
    moto_server: MotoServer, aws_wire: AwsWire
) -> None:
    catalog = GpuTypeCatalog()
    provider = make_provider(catalog, aws_wire, regions=["us-east-1", "eu-west-1", "ap-south-1"])
    provider.discover()
    full = [
        c for c in aws_wire.sent("ec2:DescribeInstanceTypes") if "InstanceTypes" not in c.params
    ]
    assert len(full) == 1  # moto answers in one page; AWS would be ~14 pages of 100
    assert full[0].params.get("MaxResults") == 100
    assert len(aws_wire.sent("ec2:DescribeInstanceTypeOfferings")) == 2  # the other two regions
    for call in aws_wire.sent("ec2:DescribeInstanceTypes"):
        assert len(call.params.get("InstanceTypes", [])) <= 100
    before = len(aws_wire.calls)
    provider.discover()
    later = {c.operation for c in aws_wire.calls[before:]}
    assert later == {"ec2:DescribeInstances"}  # cached for the day


def test_all_regions_means_the_enabled_ones(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    (mumbai,) = launch_gpu_instances(moto_server.client("ec2", "ap-south-1"), "g5.xlarge")
    provider = make_provider(aws_gpu_catalog, aws_wire, regions="all")
    discovery = provider.discover()
    assert [i.instance_id for i in discovery.instances] == [mumbai]
    (call,) = aws_wire.sent("ec2:DescribeRegions")
    assert call.params["Filters"] == [
        {"Name": "opt-in-status", "Values": ["opt-in-not-required", "opted-in"]}
    ]
    assert len({c.region for c in aws_wire.sent("ec2:DescribeInstances")}) > 10


def test_assumes_each_configured_role_and_audits_its_account(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    import boto3

    ids: dict[str, str] = {}
    for account in ("222222222222", "333333333333"):
        sts = moto_server.client("sts")
        creds = sts.assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/seed", RoleSessionName="seed"
        )["Credentials"]
        ec2 = boto3.client(
            "ec2",
            region_name="us-east-1",
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        ids[account] = launch_gpu_instances(ec2, "g5.xlarge")[0]
    launch_gpu_instances(moto_server.client("ec2"), "g5.xlarge")  # the default account: not listed

    provider = make_provider(
        aws_gpu_catalog,
        aws_wire,
        accounts=[
            {"role_arn": "arn:aws:iam::222222222222:role/guardian", "external_id": "guardian-x1"},
            {"role_arn": "arn:aws:iam::333333333333:role/guardian"},
        ],
    )
    discovery = provider.discover()

    assert discovery.errors == ()
    assert {(i.account, i.instance_id) for i in discovery.instances} == {
        ("222222222222", ids["222222222222"]),
        ("333333333333", ids["333333333333"]),
    }
    assumed = [c.params for c in aws_wire.sent("sts:AssumeRole")]
    assert assumed == [
        {
            "RoleArn": "arn:aws:iam::222222222222:role/guardian",
            "RoleSessionName": "gpu-guardian",
            "ExternalId": "guardian-x1",
        },
        {"RoleArn": "arn:aws:iam::333333333333:role/guardian", "RoleSessionName": "gpu-guardian"},
    ]
    assert aws_wire.sent("sts:GetCallerIdentity") == []
    provider.discover()
    assert len(aws_wire.sent("sts:AssumeRole")) == 2  # credentials reused until near expiry

    report = probe_credentials(provider_config(accounts=[{"role_arn": assumed[0]["RoleArn"]}]))
    assert report == (
        f"arn:aws:sts::{ACCOUNT}:user/moto (account {ACCOUNT}); "
        "role arn:aws:iam::222222222222:role/guardian assumed (account 222222222222)"
    )


def provider_config(**aws: Any) -> Config:
    return Config.model_validate({"aws": aws})


def test_a_denied_region_is_a_unit_error_and_the_others_carry_on(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    (ok,) = launch_gpu_instances(moto_server.client("ec2"), "g5.xlarge")
    launch_gpu_instances(moto_server.client("ec2", "eu-west-1"), "g5.xlarge")
    aws_wire.fail("ec2:DescribeInstances", "UnauthorizedOperation", status=403, region="eu-west-1")
    provider = make_provider(aws_gpu_catalog, aws_wire, regions=["us-east-1", "eu-west-1"])

    discovery = provider.discover()

    assert [i.instance_id for i in discovery.instances] == [ok]
    (error,) = discovery.errors
    assert (error.provider, error.account, error.region, error.operation) == (
        "aws",
        ACCOUNT,
        "eu-west-1",
        "ec2:DescribeInstances",
    )
    assert error.message.startswith("ec2:DescribeInstances: UnauthorizedOperation")


def test_a_broken_region_endpoint_is_a_unit_error(
    moto_server: MotoServer, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    # moto answers a region it does not know with an HTML 500 page: a real broken endpoint.
    provider = make_provider(
        aws_gpu_catalog,
        regions=["us-east-1", "xx-nowhere-1"],
        client_config=BotoConfig(retries={"mode": "standard", "max_attempts": 1}),
    )
    discovery = provider.discover()
    assert [e.region for e in discovery.errors] == ["xx-nowhere-1"]
    assert discovery.errors[0].message


def test_missing_credentials_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing may leave the host
    provider = AwsProvider(Config())
    discovery = provider.discover()
    assert discovery.instances == ()
    (error,) = discovery.errors
    assert (error.operation, error.message) == ("sts:GetCallerIdentity", CREDENTIALS_HELP)
    with pytest.raises(AuthError) as raised:
        probe_credentials(Config())
    assert str(raised.value) == CREDENTIALS_HELP


def test_a_role_that_cannot_be_assumed_is_a_unit_error(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    aws_wire.fail("sts:AssumeRole", "AccessDenied", status=403)
    provider = make_provider(
        aws_gpu_catalog,
        aws_wire,
        accounts=[{"role_arn": "arn:aws:iam::222222222222:role/guardian"}],
    )
    discovery = provider.discover()
    assert discovery.instances == ()
    (error,) = discovery.errors
    assert (error.account, error.region, error.operation) == (
        "222222222222",
        "*",
        "sts:AssumeRole",
    )
    assert "AccessDenied" in error.message
    with pytest.raises(AuthError, match="AccessDenied"):
        probe_credentials(
            provider_config(accounts=[{"role_arn": "arn:aws:iam::222222222222:role/guardian"}]),
            session=aws_wire.session,
        )


def test_role_credentials_are_renewed_before_they_expire(
    moto_server: MotoServer, aws_wire: AwsWire
) -> None:
    from guardian.config import AwsAccount
    from guardian.providers.aws.clients import AwsClients

    now = [datetime.now(UTC)]
    clients = AwsClients(aws_wire.session, clock=lambda: now[0])
    role = AwsAccount(role_arn="arn:aws:iam::222222222222:role/guardian")
    first = clients.role_account(role)
    ec2 = clients.client(first, "ec2", "us-east-1")
    assert first.expires_at is not None
    now[0] = first.expires_at - timedelta(minutes=30)
    assert clients.client(clients.role_account(role), "ec2", "us-east-1") is ec2
    assert len(aws_wire.sent("sts:AssumeRole")) == 1
    now[0] = first.expires_at - timedelta(minutes=5)  # inside the renewal margin
    renewed = clients.role_account(role)
    assert len(aws_wire.sent("sts:AssumeRole")) == 2
    assert clients.client(renewed, "ec2", "us-east-1") is not ec2  # built on the new keys
    clients.close()


def test_without_the_offerings_permission_the_types_learned_elsewhere_are_used(
    moto_server: MotoServer, aws_wire: AwsWire
) -> None:
    (irish,) = launch_gpu_instances(moto_server.client("ec2", "eu-west-1"), "g5.xlarge")
    catalog = GpuTypeCatalog()
    catalog.prime(INSTANCE_TYPES.values())
    aws_wire.fail("ec2:DescribeInstanceTypeOfferings", "UnauthorizedOperation", status=403)
    discovery = make_provider(catalog, aws_wire, regions=["eu-west-1"]).discover()
    assert discovery.errors == ()
    assert [i.instance_id for i in discovery.instances] == [irish]

"""Accounts and projects found for guardian: an AWS Organization through moto (Organizations,
AssumeRole), and a GCP folder tree through the real Resource Manager client and its local fake.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from structlog.testing import capture_logs

from guardian.config import Config
from guardian.providers import Unit
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.provider import AwsProvider
from guardian.providers.gcp.provider import GcpProvider
from guardian.simulated.aws import launch_gpu_instances
from tests.clock import NOW
from tests.conftest import AwsWire, MotoServer
from tests.fakes.gcp_compute import FakeComputeServer, FakeComputeState, FakeVm
from tests.fakes.gcp_resource_manager import FakeResourceManagerServer, FakeResourceManagerState

OWN = "123456789012"  # moto's default account: the management account here


def _org(moto: MotoServer, names: list[str]) -> dict[str, str]:
    org = moto.client("organizations")
    org.create_organization(FeatureSet="ALL")
    return {
        name: org.create_account(Email=f"{name}@example.com", AccountName=name)[
            "CreateAccountStatus"
        ]["AccountId"]
        for name in names
    }


def _member_ec2(moto: MotoServer, account: str, region: str = "us-east-1") -> Any:
    creds = moto.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/gpu-guardian", RoleSessionName="test"
    )["Credentials"]
    return boto3.client(
        "ec2",
        region_name=region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def _aws(wire: AwsWire, catalog: GpuTypeCatalog, **aws: Any) -> AwsProvider:
    config = Config.model_validate({"aws": {"regions": ["us-east-1"], **aws}})
    return AwsProvider(config, session=wire.session, catalog=catalog)


def test_an_organizations_accounts_are_found_entered_and_audited(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    ids = _org(moto_server, ["research", "prod", "sandbox"])
    instance = launch_gpu_instances(_member_ec2(moto_server, ids["research"]), "g5.xlarge")[0]
    org = {"role_name": "gpu-guardian", "external_id": "gg-7f3a", "exclude": [ids["sandbox"]]}
    provider = _aws(aws_wire, aws_gpu_catalog, accounts={"organization": org})

    plan = provider.units()
    assert plan.errors == ()
    assert sorted(plan.units) == sorted(
        Unit("aws", account, "us-east-1") for account in (OWN, ids["research"], ids["prod"])
    )
    assumed = aws_wire.sent("sts:AssumeRole")
    assert sorted(c.params["RoleArn"] for c in assumed) == sorted(
        f"arn:aws:iam::{ids[n]}:role/gpu-guardian" for n in ("research", "prod")
    )
    assert {c.params["ExternalId"] for c in assumed} == {"gg-7f3a"}
    found = provider.discover([Unit("aws", ids["research"], "us-east-1")])
    assert [(i.account, i.instance_id) for i in found.instances] == [(ids["research"], instance)]
    assert provider.discover([Unit("aws", ids["prod"], "us-east-1")]).instances == ()

    calls = len(aws_wire.calls)
    provider.units()  # listing and sessions are cached: a cycle costs no STS or Organizations call
    assert not [
        c for c in aws_wire.calls[calls:] if c.operation.split(":")[0] in ("sts", "organizations")
    ]
    provider.close()


def test_a_member_account_that_refuses_the_role_is_reported_and_skipped(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    _org(moto_server, ["a", "b"])
    aws_wire.fail("sts:AssumeRole", "AccessDenied", status=403, times=1)
    provider = _aws(aws_wire, aws_gpu_catalog, regions="all", accounts={"organization": {}})
    plan = provider.units()
    (error,) = plan.errors
    assert error.region == "*"
    assert "sts:AssumeRole" in error.operation
    entered = {u.account for u in plan.units}
    assert len(entered) == 2  # the management account and the other member
    assert OWN in entered
    # regions: all is per account: DescribeRegions once for each account entered.
    assert len(aws_wire.sent("ec2:DescribeRegions")) == 2
    assert len({u.region for u in plan.units}) > 10
    provider.close()


def test_organizations_denied_is_one_error_not_a_crash(
    moto_server: MotoServer, aws_wire: AwsWire, aws_gpu_catalog: GpuTypeCatalog
) -> None:
    aws_wire.fail("organizations:ListAccounts", "AccessDeniedException", status=400)
    provider = _aws(aws_wire, aws_gpu_catalog, accounts={"organization": {}})
    plan = provider.units()
    assert plan.units == ()
    (error,) = plan.errors
    assert error.account == "organization"
    assert "ListAccounts" in error.operation
    provider.close()


@pytest.fixture
def gcp() -> Iterator[tuple[FakeResourceManagerServer, FakeComputeServer]]:
    rm = FakeResourceManagerServer(FakeResourceManagerState(page_size=1)).start()
    compute = FakeComputeServer(FakeComputeState()).start()
    yield rm, compute
    rm.stop()
    compute.stop()


def test_projects_below_a_folder_tree_are_found_and_compute_less_ones_skipped(
    gcp: tuple[FakeResourceManagerServer, FakeComputeServer],
) -> None:
    rm, compute = gcp
    tree = rm.state
    research = tree.add_folder("folders/10", "organizations/1")
    vision = tree.add_folder("folders/11", research)
    locked = tree.add_folder("folders/12", "organizations/1")
    tree.add_project("ml-train", research)
    tree.add_project("ml-vision", vision)
    tree.add_project("ml-old", research, active=False)
    tree.add_project("billing-only", research)
    tree.add_project("shared-vpc", "organizations/1")
    tree.add_project("secret", locked)
    tree.fail_parents[locked] = ("PERMISSION_DENIED", "the caller may not list folders/12")
    created = NOW - timedelta(days=25)  # up long enough to be audited
    for project in ("ml-train", "ml-vision"):
        compute.state.add(
            project,
            [FakeVm(f"{project}-a100", "us-central1-a", "a2-highgpu-1g", created_at=created)],
        )
    compute.state.compute_disabled.add("billing-only")
    config = Config.model_validate(
        {
            "aws": {"enabled": False},
            "gcp": {
                "enabled": True,
                "projects": {"organization": "1", "exclude": ["shared-vpc"]},
                "credentials": "anonymous",
                "compute_endpoint": compute.endpoint,
                "resource_manager_endpoint": rm.endpoint,
            },
        }
    )
    provider = GcpProvider(config)
    plan = provider.units()
    assert [u.account for u in plan.units] == ["billing-only", "ml-train", "ml-vision"]
    (error,) = plan.errors
    assert error.account == locked
    assert "PERMISSION_DENIED" in error.message or "may not list" in error.message
    # Every page was followed (the fake answers one item a page).
    assert ("ListProjects", research, "1") in tree.requests
    with capture_logs() as logs:
        found = provider.discover(plan.units)
    assert sorted(i.account for i in found.instances) == ["ml-train", "ml-vision"]
    assert found.errors == ()  # no Compute API, no VMs: not an error
    assert [e["project"] for e in logs if e["event"] == "gcp_compute_disabled"] == ["billing-only"]
    provider.close()


def test_probe_enters_every_account_of_the_organization(
    moto_server: MotoServer, aws_wire: AwsWire
) -> None:
    from guardian.providers.aws.provider import probe_credentials

    _org(moto_server, ["a", "b"])
    config = Config.model_validate({"aws": {"accounts": {"organization": {}}}})
    line = probe_credentials(config, session=aws_wire.session)
    assert f"(account {OWN})" in line
    assert "organization: 3 accounts entered" in line

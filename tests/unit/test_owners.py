"""Who owns an instance, from the tags and labels the listings already carry; the knob that
saves the money; the audit's "what would enforce do" over every gate."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from guardian.config import parse_config
from guardian.model import Controller, ManagedBy, ScalingGroup
from guardian.policy import (
    aws_managed_by,
    controller_label,
    enforce_plan,
    gcp_managed_by,
    saving_knob,
)
from guardian.providers.aws.discovery import GpuType, to_instance
from tests.fake_provider import CATALOG, NOW, FakeProvider, flat_samples, make_instance

ASG = {"aws:autoscaling:groupName": "gpu-pool"}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, None),
        ({"Name": "x", "team": "ml"}, None),
        (ASG, ManagedBy(Controller.AUTOSCALING_GROUP, "gpu-pool")),
        # An EKS managed node group's instances are in its Auto Scaling group too.
        ({**ASG, "eks:cluster-name": "prod", "eks:nodegroup-name": "ng-a10g",
          "kubernetes.io/cluster/prod": "owned"},
         ManagedBy(Controller.EKS_NODEGROUP, "ng-a10g", "prod")),
        ({"karpenter.sh/nodepool": "gpu", "karpenter.sh/managed-by": "prod",
          "kubernetes.io/cluster/prod": "owned"},
         ManagedBy(Controller.KARPENTER, "gpu", "prod")),
        ({"karpenter.sh/provisioner-name": "old"}, ManagedBy(Controller.KARPENTER, "old")),
        ({**ASG, "kubernetes.io/cluster/kops-1": "owned"},
         ManagedBy(Controller.KUBERNETES, "kops-1")),
        ({"AWSBatchServiceTag": "batch-ce", **ASG}, ManagedBy(Controller.BATCH, "batch-ce")),
        ({"aws:batch:compute-environment": "ce-2"}, ManagedBy(Controller.BATCH, "ce-2")),
        ({"parallelcluster:cluster-name": "hpc", "parallelcluster:node-type": "Compute"},
         ManagedBy(Controller.PARALLELCLUSTER, "hpc")),
        ({"aws:elasticmapreduce:job-flow-id": "j-1", "aws:elasticmapreduce:instance-group-role":
          "CORE"}, ManagedBy(Controller.EMR, "j-1")),
        ({"aws:ec2:fleet-id": "fleet-1"}, ManagedBy(Controller.EC2_FLEET, "fleet-1")),
        ({"aws:ec2spot:fleet-request-id": "sfr-1"}, ManagedBy(Controller.SPOT_FLEET, "sfr-1")),
    ],
)  # fmt: skip
def test_aws_owners_from_tags(tags: dict[str, str], expected: ManagedBy | None) -> None:
    assert aws_managed_by(tags) == expected


MIG = "projects/1/zones/us-central1-a/instanceGroupManagers/l4-pool"


@pytest.mark.parametrize(
    ("labels", "metadata", "expected"),
    [
        ({}, {}, None),
        ({}, {"created-by": MIG}, ManagedBy(Controller.MIG, "l4-pool")),
        ({}, {"created-by": "projects/1/regions/us-central1/instanceGroupManagers/r-pool"},
         ManagedBy(Controller.MIG, "r-pool")),
        ({"goog-gke-node": "", "goog-k8s-cluster-name": "prod",
          "goog-k8s-node-pool-name": "a100"}, {"created-by": MIG},
         ManagedBy(Controller.GKE, "a100", "prod")),
        ({"goog-dataproc-cluster-name": "etl", "goog-dataproc-cluster-uuid": "u"},
         {"created-by": MIG}, ManagedBy(Controller.DATAPROC, "etl")),
        ({"goog-batch-job-uid": "j-42"}, {"created-by": MIG},
         ManagedBy(Controller.GCP_BATCH, "j-42")),
        ({"goog-caip-notebook": ""}, {}, ManagedBy(Controller.WORKBENCH, "vm")),
    ],
)  # fmt: skip
def test_gcp_owners_from_labels_and_created_by(
    labels: dict[str, str], metadata: dict[str, str], expected: ManagedBy | None
) -> None:
    assert gcp_managed_by(labels, metadata, "vm") == expected


def test_the_knob_names_the_controller_and_the_setting() -> None:
    pool = ManagedBy(Controller.AUTOSCALING_GROUP, "gpu-pool")
    group = ScalingGroup("gpu-pool", min_size=2, desired=2, max_size=4)
    assert saving_knob(pool, group).startswith(
        "Auto Scaling group gpu-pool: min 2 / desired 2 keeps these idle; set min and desired to 0"
    )
    gke = saving_knob(ManagedBy(Controller.GKE, "a100-pool", "prod"))
    assert gke.startswith("GKE node pool a100-pool (cluster prod): enable autoscaling to 0")
    for kind in Controller:  # every kind has a label and a knob
        knob = saving_knob(ManagedBy(kind, "x"))
        assert knob.startswith(f"{controller_label(kind)} x")
        assert len(knob) > 40


def _raw(**extra: Any) -> dict[str, Any]:
    return {
        "InstanceId": "i-1",
        "InstanceType": "p4d.24xlarge",
        "LaunchTime": NOW - timedelta(days=30),
        "Placement": {"AvailabilityZone": "us-east-1a"},
        "Tags": [{"Key": "aws:autoscaling:groupName", "Value": "pool"}],
        **extra,
    }


def test_reserved_capacity_from_describe_instances() -> None:
    gpu = GpuType("p4d.24xlarge", 8, "NVIDIA A100", 40960, True, False)

    def parse(**extra: Any) -> Any:
        raw: Any = _raw(**extra)
        return to_instance(raw, account="1", region="us-east-1", gpu=gpu, owner_tags=[])

    assert parse().reservation is None
    assert parse(CapacityReservationId="cr-0abc").reservation == "cr-0abc"
    block = parse(InstanceLifecycle="capacity-block", CapacityReservationId="cr-cb1")
    assert (block.reservation, block.lifecycle.value) == ("cr-cb1", "on-demand")
    assert parse(InstanceLifecycle="capacity-block").reservation == "capacity block"
    assert parse().managed_by == ManagedBy(Controller.AUTOSCALING_GROUP, "pool")


@pytest.mark.parametrize(
    ("changes", "settings", "expected"),
    [
        ({}, {}, "stop"),
        ({"managed_by": ManagedBy(Controller.AUTOSCALING_GROUP, "p")}, {},
         "alert (managed by Auto Scaling group)"),
        ({"managed_by": ManagedBy(Controller.AUTOSCALING_GROUP, "p")},
         {"enforce": {"autoscaling_groups": "standby"}}, "standby+stop"),
        ({"managed_by": ManagedBy(Controller.EKS_NODEGROUP, "n", "c")},
         {"enforce": {"autoscaling_groups": "standby"}}, "alert (managed by EKS node group)"),
        ({"managed_by": ManagedBy(Controller.AUTOSCALING_GROUP, "p"), "reservation": "cr-1"},
         {"enforce": {"autoscaling_groups": "standby"}}, "alert (reserved capacity)"),
        ({"spot_one_time": True}, {}, "alert (one-time spot)"),
        ({"has_instance_store": True}, {}, "alert (local disk not reported)"),
        ({"has_instance_store": True}, {"enforce": {"local_disks": "stop"}}, "stop"),
        ({"has_instance_store": True}, {"enforce": {"local_disks": "alert"}},
         "alert (local disks alert-only)"),
    ],
)  # fmt: skip
def test_what_enforce_would_do(
    changes: dict[str, Any], settings: dict[str, Any], expected: str
) -> None:
    from guardian.cycle import audit_cycle

    instance = make_instance("i-1", **changes)
    provider = FakeProvider([instance], {instance.key: flat_samples(0.0, 120, mem_mib=0.0)})
    config = parse_config(settings)
    (finding,) = audit_cycle(config, [provider], CATALOG, NOW).findings
    plan = enforce_plan(finding, config, NOW)
    assert plan is not None
    assert plan.label == expected
    busy = provider.samples[instance.key] = flat_samples(90.0, 120)
    assert busy
    (finding,) = audit_cycle(config, [provider], CATALOG, NOW).findings
    assert enforce_plan(finding, config, NOW) is None  # not idle: nothing to do
    assert enforce_plan(finding, config, NOW, assume_idle=True) == plan


def test_a_stale_or_full_local_disk_reading_is_never_unused() -> None:
    from dataclasses import replace

    from guardian.cycle import audit_cycle

    instance = make_instance("i-1", has_instance_store=True)
    provider = FakeProvider([instance], {instance.key: flat_samples(0.0, 120, mem_mib=0.0)})
    config = parse_config({})
    (finding,) = audit_cycle(config, [provider], CATALOG, NOW).findings
    labels = {}
    for name, reading in (
        ("fresh, empty", (NOW - timedelta(minutes=2), 0.0)),
        ("stale", (NOW - timedelta(minutes=11), 0.0)),
        ("full", (NOW, 2048.0)),
        ("nan", (NOW, float("nan"))),
    ):
        plan = enforce_plan(replace(finding, local_disk_used=reading), config, NOW)
        assert plan is not None
        labels[name] = plan.label
    assert labels == {
        "fresh, empty": "stop",
        "stale": "alert (local disk not reported)",
        "full": "alert (local disk in use)",
        "nan": "alert (local disk in use)",
    }

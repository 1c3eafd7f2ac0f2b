"""Who owns an instance, from what the cloud APIs already return, and which knob saves money.

A controller (an Auto Scaling group, an EKS node group, Karpenter, a managed instance group,
GKE...) replaces an instance it owns when it is stopped: the group marks it unhealthy,
terminates it and launches a copy, so the bill goes on. Guardian therefore never stops such an
instance and tells the person which setting of the controller does save the money.

Pure: tags, labels and metadata in, ``ManagedBy`` and sentences out. The providers call the
readers while they parse their listings; enforcement and the audit call the texts.
"""

from __future__ import annotations

from collections.abc import Mapping

from guardian.model import Controller, ManagedBy, ScalingGroup

__all__ = [
    "aws_managed_by",
    "controller_label",
    "gcp_managed_by",
    "reservation_knob",
    "saving_knob",
]

_LABELS = {
    Controller.AUTOSCALING_GROUP: "Auto Scaling group",
    Controller.EKS_NODEGROUP: "EKS node group",
    Controller.KARPENTER: "Karpenter node pool",
    Controller.KUBERNETES: "Kubernetes cluster",
    Controller.BATCH: "AWS Batch compute environment",
    Controller.PARALLELCLUSTER: "ParallelCluster",
    Controller.EMR: "EMR cluster",
    Controller.EC2_FLEET: "EC2 Fleet",
    Controller.SPOT_FLEET: "Spot Fleet",
    Controller.MIG: "managed instance group",
    Controller.GKE: "GKE node pool",
    Controller.DATAPROC: "Dataproc cluster",
    Controller.GCP_BATCH: "Batch job",
    Controller.WORKBENCH: "Vertex AI Workbench instance",
}


def controller_label(kind: Controller) -> str:
    """``Auto Scaling group``: what a person calls this kind of controller."""
    return _LABELS[kind]


def _first(tags: Mapping[str, str], *keys: str) -> str | None:
    return next((tags[key] for key in keys if tags.get(key)), None)


def _with_prefix(tags: Mapping[str, str], prefix: str) -> str | None:
    """The value of the first tag whose key starts with ``prefix`` (in key order), or None."""
    found = sorted(key for key in tags if key.startswith(prefix))
    return tags[found[0]] if found else None


def _kubernetes_cluster(tags: Mapping[str, str]) -> str | None:
    """The cluster of ``kubernetes.io/cluster/<name>`` (owned or shared)."""
    prefix = "kubernetes.io/cluster/"
    names = sorted(key.removeprefix(prefix) for key in tags if key.startswith(prefix))
    return names[0] if names else None


def aws_managed_by(tags: Mapping[str, str]) -> ManagedBy | None:
    """The controller an EC2 instance's tags name, the most specific first.

    An EKS managed node group's instances also carry their Auto Scaling group's tag, and a
    Karpenter node the cluster's: the node group or node pool is the knob, not the group.
    """
    cluster = _first(tags, "eks:cluster-name") or _kubernetes_cluster(tags)
    if any(key.startswith("karpenter.sh/") for key in tags):
        pool = _first(tags, "karpenter.sh/nodepool", "karpenter.sh/provisioner-name")
        return ManagedBy(Controller.KARPENTER, pool or "?", cluster)
    if tags.get("eks:nodegroup-name"):
        return ManagedBy(Controller.EKS_NODEGROUP, tags["eks:nodegroup-name"], cluster)
    batch = _first(tags, "aws:batch:compute-environment", "AWSBatchServiceTag")
    if batch is not None or any(key.startswith("aws:batch:") for key in tags):
        return ManagedBy(Controller.BATCH, batch or _with_prefix(tags, "aws:batch:") or "?")
    if any(key.startswith("parallelcluster:") for key in tags):
        name = _first(tags, "parallelcluster:cluster-name")
        return ManagedBy(Controller.PARALLELCLUSTER, name or "?")
    if any(key.startswith("aws:elasticmapreduce:") for key in tags):
        name = _first(tags, "aws:elasticmapreduce:job-flow-id")
        return ManagedBy(Controller.EMR, name or "?")
    if cluster is not None:
        return ManagedBy(Controller.KUBERNETES, cluster)
    if tags.get("aws:autoscaling:groupName"):
        return ManagedBy(Controller.AUTOSCALING_GROUP, tags["aws:autoscaling:groupName"])
    if tags.get("aws:ec2:fleet-id"):
        return ManagedBy(Controller.EC2_FLEET, tags["aws:ec2:fleet-id"])
    if tags.get("aws:ec2spot:fleet-request-id"):
        return ManagedBy(Controller.SPOT_FLEET, tags["aws:ec2spot:fleet-request-id"])
    return None


def _last_segment(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def gcp_managed_by(
    labels: Mapping[str, str], metadata: Mapping[str, str], vm_name: str
) -> ManagedBy | None:
    """The controller a Compute Engine VM's labels and ``created-by`` metadata name.

    GKE nodes, Dataproc and Batch VMs are created by managed instance groups of their own: the
    labels say which service owns the group, so they are read first.
    """
    if any(key.startswith(("goog-gke-", "goog-k8s-")) for key in labels):
        pool = _first(labels, "goog-k8s-node-pool-name") or "?"
        return ManagedBy(Controller.GKE, pool, _first(labels, "goog-k8s-cluster-name"))
    if any(key.startswith("goog-dataproc-") for key in labels):
        name = _first(labels, "goog-dataproc-cluster-name") or "?"
        return ManagedBy(Controller.DATAPROC, name)
    if any(key.startswith("goog-batch-") for key in labels):
        name = _first(labels, "batch-job-id", "goog-batch-job-uid") or "?"
        return ManagedBy(Controller.GCP_BATCH, name)
    if any(key.startswith(("goog-caip-notebook", "goog-workbench")) for key in labels):
        return ManagedBy(Controller.WORKBENCH, vm_name)
    created_by = metadata.get("created-by", "")
    if "/instanceGroupManagers/" in created_by:
        return ManagedBy(Controller.MIG, _last_segment(created_by))
    return None


def saving_knob(managed_by: ManagedBy, group: ScalingGroup | None = None) -> str:
    """What actually saves the money for instances this controller keeps running."""
    kind, name, cluster = managed_by.kind, managed_by.name, managed_by.cluster
    label = f"{controller_label(kind)} {name}"
    in_cluster = f" (cluster {cluster})" if cluster else ""
    if kind is Controller.AUTOSCALING_GROUP:
        if group is not None:
            return (
                f"{label}: min {group.min_size} / desired {group.desired} keeps these idle; "
                "set min and desired to 0 (aws autoscaling update-auto-scaling-group "
                f"--auto-scaling-group-name {name} --min-size 0 --desired-capacity 0), or set "
                "enforce.autoscaling_groups: standby"
            )
        return (
            f"{label} keeps these running; set its minimum and desired capacity to 0, or set "
            "enforce.autoscaling_groups: standby"
        )
    knobs = {
        Controller.EKS_NODEGROUP: "set its minimum size to 0 and let the cluster autoscaler "
        "remove idle GPU nodes",
        Controller.KARPENTER: "enable consolidation (disruption.consolidationPolicy: "
        "WhenEmptyOrUnderutilized) so that idle nodes are removed",
        Controller.KUBERNETES: "let its autoscaler remove idle GPU nodes (scale-down on, "
        "node group minimum 0)",
        Controller.BATCH: "set minvCpus to 0 so that idle instances are released",
        Controller.PARALLELCLUSTER: "set the queue's MinCount to 0 and let ScaledownIdletime "
        "release idle compute nodes",
        Controller.EMR: "terminate the cluster when its work is done, or turn on "
        "auto-termination or managed scaling",
        Controller.EC2_FLEET: "lower its target capacity (aws ec2 modify-fleet)",
        Controller.SPOT_FLEET: "lower its target capacity (aws ec2 modify-spot-fleet-request)",
        Controller.MIG: f"resize it to 0 or autoscale it down to 0 (gcloud compute "
        f"instance-groups managed resize {name} --size 0)",
        Controller.GKE: "enable autoscaling to 0 (gcloud container clusters update "
        f"{cluster or 'CLUSTER'} --node-pool {name} --enable-autoscaling --min-nodes 0)",
        Controller.DATAPROC: "delete the cluster when its work is done, or set scheduled "
        "deletion (--max-idle)",
        Controller.GCP_BATCH: "its VMs go when its tasks end: look for a stuck task",
        Controller.WORKBENCH: "enable idle shutdown, or stop it from Workbench",
    }
    return f"{label}{in_cluster}: {knobs[kind]}"


def reservation_knob(reservation: str) -> str:
    """What saves the money of idle instances in reserved capacity: not a stop."""
    if reservation == "capacity block":
        return "capacity block: paid until it ends whether its instances run or not; put work on it"
    return f"reservation {reservation}: release it or put work on it"

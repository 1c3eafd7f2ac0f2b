"""A simulated AWS: a moto server seeded with GPU instances and the CloudWatch agent's metrics.

Used by the AWS provider's tests, ``guardian demo``, the daemon's end-to-end tests and the fleet
benchmark. The real ``AwsProvider`` reads all of it over the wire with boto3, exactly as it
would read AWS.

What is simulated
- **EC2**: instances of real GPU types (moto ships AWS's DescribeInstanceTypes catalog, GpuInfo
  and InstanceStorageInfo included), on-demand through RunInstances or spot through
  RequestSpotInstances (``one-time`` or ``persistent``: the request type guardian reads), with
  tags, zone and hibernation. AMIs are registered on demand (``guardian-sim-gpu``).
- **Launch time in the past** (an instance must be up ``idle.min_uptime`` before it can be idle):
  moto stamps LaunchTime with its own clock and has no API to change it, but its
  ModifyInstanceAttribute stores whatever attribute it is given, so ``backdate_launch`` sets
  ``launchTime`` over the wire. That works against an in-process or a separate moto server and
  needs no freezegun; real EC2 rejects the attribute.
- **Host series** beside them: ``AWS/EC2 CPUUtilization`` with exactly {InstanceId} at 5 minutes
  (basic monitoring), and the agent's ``mem_used_percent`` (its ``mem`` plugin) in ``CWAgent``
  with the same ``host`` dimension as its GPU series (``host_datums``).
- **CloudWatch agent GPU metrics** in the agent's own schema: namespace ``CWAgent``, metrics
  ``nvidia_smi_utilization_gpu`` (Percent) and ``nvidia_smi_memory_used`` (Megabytes — in fact
  MiB), one series per GPU with the dimensions ``InstanceId``, ``host``, ``index``, ``name``
  (plus any ``extra_dimensions``), one datum per GPU per minute ending at ``now``, sent in
  PutMetricData calls of at most 1000 datums.

What moto does not check, and guardian's tests therefore assert on the wire: it accepts any
number of GetMetricData queries, has no ``instance-type`` wildcards and ignores MaxResults of
DescribeInstanceTypes (``moto_speedups`` pages it by 100, as AWS does).

What a seeded history costs (moto 5.2 in-process, measured on 2 shared cores):
- Stock moto over HTTP: PutMetricData takes 0.06-0.3 s per 1000 datums, so 200 one-GPU
  instances with 2 h of minutes (48,000 datums) seed in ~10 s, and a day (576,000) would take
  minutes. Reading is worse: moto's ListMetrics lists a series once per datum and deduplicates
  with a pairwise scan, and its GetMetricData scans every datum in the window for every query
  and period — reading those 48,000 datums did not finish in 5 minutes. Stock moto suits the
  provider's tests: a few instances, an hour or two of history.
- ``start_moto_server(indexed_metrics=True)`` swaps moto's metric storage for an index
  (``moto_speedups``; same answers, checked against stock moto) and ``seed_fleet(...,
  in_process=True)`` writes datums and launch times straight into it: 200 instances x 24 h seed
  in ~6 s and read back in ~12 s; 200 x 2 h in 1.5 s and 0.8 s; 5,000 x 2 h in ~31 s (mostly
  moto's RunInstances) and ~19 s. Use these for the demo and the benchmarks.
"""

from __future__ import annotations

import urllib.request
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from guardian.providers.aws.discovery import gpu_type_from

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client

__all__ = [
    "AGENT_NAMESPACE",
    "EC2_NAMESPACE",
    "HOST_CPU_METRIC",
    "HOST_MEM_METRIC",
    "MAX_DATUMS_PER_CALL",
    "MEM_METRIC",
    "UTIL_METRIC",
    "Reading",
    "SimInstance",
    "backdate_launch",
    "constant",
    "fake_aws_env",
    "gpu_datums",
    "host_datums",
    "image_id",
    "launch_autoscaling_group",
    "launch_gpu_instances",
    "local_disk_datums",
    "put_datums",
    "put_gpu_metrics",
    "reset_moto_server",
    "seed_fleet",
    "start_moto_server",
]

AGENT_NAMESPACE = "CWAgent"
UTIL_METRIC = "nvidia_smi_utilization_gpu"
MEM_METRIC = "nvidia_smi_memory_used"
EC2_NAMESPACE = "AWS/EC2"
HOST_CPU_METRIC = "CPUUtilization"  # AWS/EC2, exactly {InstanceId}
HOST_MEM_METRIC = "mem_used_percent"  # CWAgent, the agent's mem plugin
MAX_DATUMS_PER_CALL = 1000  # PutMetricData's limit per request
SIM_IMAGE_NAME = "guardian-sim-gpu"

SpotKind = Literal["one-time", "persistent"]


# -- the server -------------------------------------------------------------------------------


def start_moto_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    load_default_amis: bool = False,
    indexed_metrics: bool = False,
) -> tuple[ThreadedMotoServer, str]:
    """A moto server in this process on a free port (``port=0``); returns it and its URL.

    moto otherwise loads ~1,300 public AMIs into every region it touches (and again on every
    reset), which makes an all-regions scan several times slower; the simulator registers its
    own. The setting is moto's, process-wide: ``MOTO_EC2_LOAD_DEFAULT_AMIS``.
    ``indexed_metrics`` installs ``moto_speedups``' metric store, for fleets with long
    histories (the demo, the benchmark); the provider's own tests use moto as it comes.
    """
    import logging
    import os

    from moto.server import ThreadedMotoServer

    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "true" if load_default_amis else "false"
    if indexed_metrics:
        from guardian.simulated import moto_speedups

        moto_speedups.install()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    return server, f"http://{bound_host}:{bound_port}"


def reset_moto_server(endpoint_url: str) -> None:
    """Forget every resource and metric (moto's ``/moto-api/reset``)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def fake_aws_env(endpoint_url: str, region: str = "us-east-1") -> dict[str, str]:
    """The environment that points boto3 (and ``guardian``) at the simulator, nowhere else."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# -- EC2 --------------------------------------------------------------------------------------


def image_id(ec2: EC2Client) -> str:
    """The simulator's AMI in the client's region, registered on first use."""
    images = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "name", "Values": [SIM_IMAGE_NAME]}]
    )["Images"]
    if images:
        return images[0]["ImageId"]
    return ec2.register_image(
        Name=SIM_IMAGE_NAME,
        Architecture="x86_64",
        VirtualizationType="hvm",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 64}}],
    )["ImageId"]


def launch_gpu_instances(
    ec2: EC2Client,
    instance_type: str,
    *,
    count: int = 1,
    tags: Mapping[str, str] | None = None,
    zone: str | None = None,
    spot: SpotKind | None = None,
    hibernation: bool = False,
    launched_at: datetime | None = None,
    disable_api_stop: bool = False,
) -> list[str]:
    """Launch ``count`` running instances; returns their ids in launch order.

    Spot instances come from RequestSpotInstances, so their request (and its type) exists as
    on AWS; moto cannot configure hibernation on those. ``disable_api_stop``: stop protection,
    which moto enforces (StopInstances answers OperationNotPermitted).
    """
    if spot is not None and hibernation:
        raise ValueError("the simulator configures hibernation on on-demand instances only")
    image = image_id(ec2)
    placement: dict[str, Any] = {"AvailabilityZone": zone} if zone else {}
    if spot is None:
        kwargs: dict[str, Any] = {}
        if tags:
            kwargs["TagSpecifications"] = [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ]
        if placement:
            kwargs["Placement"] = placement
        response = ec2.run_instances(
            ImageId=image,
            InstanceType=instance_type,  # type: ignore[arg-type]
            MinCount=count,
            MaxCount=count,
            HibernationOptions={"Configured": hibernation},
            DisableApiStop=disable_api_stop,
            **kwargs,
        )
        ids = [instance["InstanceId"] for instance in response["Instances"]]
    else:
        spec: dict[str, Any] = {"ImageId": image, "InstanceType": instance_type}
        if placement:
            spec["Placement"] = placement
        requests = ec2.request_spot_instances(
            InstanceCount=count,
            Type=spot,
            LaunchSpecification=spec,  # type: ignore[arg-type]
        )["SpotInstanceRequests"]
        ids = [request["InstanceId"] for request in requests if "InstanceId" in request]
        if tags and ids:
            ec2.create_tags(Resources=ids, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    if launched_at is not None:
        backdate_launch(ec2, ids, launched_at)
    return ids


def launch_autoscaling_group(
    ec2: EC2Client,
    autoscaling: Any,
    name: str,
    instance_type: str,
    *,
    min_size: int,
    desired: int,
    max_size: int,
    zone: str,
    tags: Mapping[str, str] | None = None,
    launched_at: datetime | None = None,
) -> list[str]:
    """A plain Auto Scaling group of running GPU instances (moto launches its members at once
    and tags them ``aws:autoscaling:groupName``, as AWS does); returns the members' ids."""
    autoscaling.create_launch_configuration(
        LaunchConfigurationName=f"{name}-lc", ImageId=image_id(ec2), InstanceType=instance_type
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchConfigurationName=f"{name}-lc",
        MinSize=min_size,
        MaxSize=max_size,
        DesiredCapacity=desired,
        AvailabilityZones=[zone],
        Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in (tags or {}).items()],
    )
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
    ids = [member["InstanceId"] for member in group["AutoScalingGroups"][0]["Instances"]]
    if launched_at is not None:
        backdate_launch(ec2, ids, launched_at)
    return ids


def backdate_launch(ec2: EC2Client, instance_ids: Iterable[str], launched_at: datetime) -> None:
    """Make moto report ``launched_at`` as the instances' LaunchTime (moto only, see above)."""
    stamp = launched_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for instance_id in instance_ids:
        ec2.modify_instance_attribute(
            InstanceId=instance_id,
            Attribute="launchTime",  # type: ignore[arg-type]
            Value=stamp,
        )


# -- CloudWatch agent metrics -----------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One GPU at one minute: utilisation in percent (None = the agent sent nothing) and the
    GPU memory in use in MiB (None = not reported)."""

    util_pct: float | None
    mem_mib: float | None = None


def constant(util_pct: float | None, mem_mib: float | None, minutes: int) -> list[Reading]:
    """``minutes`` identical readings: build traces by adding these up."""
    return [Reading(util_pct, mem_mib)] * minutes


def _per_gpu(
    gpus: int, samples: Sequence[Reading] | Mapping[int, Sequence[Reading]]
) -> dict[int, Sequence[Reading]]:
    if isinstance(samples, Mapping):
        return {int(index): readings for index, readings in samples.items()}
    return dict.fromkeys(range(gpus), samples)


def _host_name(instance_id: str) -> str:
    return f"ip-10-0-{zlib.crc32(instance_id.encode()) % 256}-1.ec2.internal"


def host_datums(
    instance_id: str,
    metric: str,
    values: Sequence[float],
    now: datetime,
    *,
    period_s: int = 300,
) -> list[dict[str, Any]]:
    """A host series ending at ``now`` (floored to the period), one value per period, oldest
    first: ``CPUUtilization`` with exactly {InstanceId} as EC2 publishes it, or the agent's
    ``mem_used_percent`` with its ``host`` dimension too. Put them in their namespaces
    (``EC2_NAMESPACE``, ``AGENT_NAMESPACE``)."""
    end = now.astimezone(UTC).replace(microsecond=0)
    end -= timedelta(seconds=int(end.timestamp()) % period_s)
    dims = [{"Name": "InstanceId", "Value": instance_id}]
    if metric != HOST_CPU_METRIC:
        dims.append({"Name": "host", "Value": _host_name(instance_id)})
    count = len(values)
    return [
        {
            "MetricName": metric,
            "Dimensions": dims,
            "Timestamp": end - timedelta(seconds=period_s * (count - 1 - position)),
            "Value": float(value),
            "Unit": "Percent",
        }
        for position, value in enumerate(values)
    ]


def gpu_datums(
    instance_id: str,
    gpus: int,
    samples: Sequence[Reading] | Mapping[int, Sequence[Reading]],
    now: datetime,
    *,
    period_s: int = 60,
    gpu_name: str = "NVIDIA A10G",
    host: str | None = None,
    extra_dimensions: Mapping[str, str] | None = None,
    util_metric: str = UTIL_METRIC,
    mem_metric: str = MEM_METRIC,
) -> list[dict[str, Any]]:
    """The datums the agent would have sent: the last reading at ``now`` (floored to the
    period), each earlier one a period before. ``samples`` is one trace for every GPU, or a
    trace per GPU index."""
    end = now.astimezone(UTC).replace(microsecond=0)
    end -= timedelta(seconds=int(end.timestamp()) % period_s)
    host_name = host or _host_name(instance_id)
    datums: list[dict[str, Any]] = []
    for index, readings in sorted(_per_gpu(gpus, samples).items()):
        dims = [
            {"Name": "InstanceId", "Value": instance_id},
            {"Name": "host", "Value": host_name},
            {"Name": "index", "Value": str(index)},
            {"Name": "name", "Value": gpu_name},
            *({"Name": k, "Value": v} for k, v in (extra_dimensions or {}).items()),
        ]
        count = len(readings)
        for position, reading in enumerate(readings):
            at = end - timedelta(seconds=period_s * (count - 1 - position))
            if reading.util_pct is not None:
                datums.append(
                    {
                        "MetricName": util_metric,
                        "Dimensions": dims,
                        "Timestamp": at,
                        "Value": float(reading.util_pct),
                        "Unit": "Percent",
                    }
                )
            if reading.mem_mib is not None:
                datums.append(
                    {
                        "MetricName": mem_metric,
                        "Dimensions": dims,
                        "Timestamp": at,
                        "Value": float(reading.mem_mib),
                        "Unit": "Megabytes",
                    }
                )
    return datums


def local_disk_datums(
    instance_id: str, used_mib: Sequence[float], now: datetime, *, period_s: int = 60
) -> list[dict[str, Any]]:
    """What ``guardian agent`` publishes of the instance's local disks: ``guardian_local_disk_used``
    (Unit Megabytes, in fact MiB), dimensions exactly ``InstanceId``, the last value at ``now``."""
    end = now.astimezone(UTC).replace(microsecond=0)
    end -= timedelta(seconds=int(end.timestamp()) % period_s)
    return [
        {
            "MetricName": "guardian_local_disk_used",
            "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
            "Timestamp": end - timedelta(seconds=period_s * (len(used_mib) - 1 - n)),
            "Value": float(value),
            "Unit": "Megabytes",
        }
        for n, value in enumerate(used_mib)
    ]


def _batches(items: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def put_datums(
    cloudwatch: CloudWatchClient,
    datums: Sequence[dict[str, Any]],
    namespace: str = AGENT_NAMESPACE,
) -> int:
    """Send datums in PutMetricData calls of at most 1000; returns the number of calls."""
    calls = 0
    for batch in _batches(datums, MAX_DATUMS_PER_CALL):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=list(batch))  # type: ignore[arg-type]
        calls += 1
    return calls


def put_gpu_metrics(
    cloudwatch: CloudWatchClient,
    instance_id: str,
    gpus: int,
    samples: Sequence[Reading] | Mapping[int, Sequence[Reading]],
    now: datetime,
    *,
    namespace: str = AGENT_NAMESPACE,
    **schema: Any,
) -> int:
    """Publish one instance's GPU history as the agent would; returns the datums sent.

    ``schema`` takes ``gpu_datums``'s keywords (period, GPU name, extra dimensions...).
    """
    datums = gpu_datums(instance_id, gpus, samples, now, **schema)
    put_datums(cloudwatch, datums, namespace)
    return len(datums)


# -- a whole fleet ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SimInstance:
    """One kind of instance in a seeded fleet. ``samples=None``: no agent, so no metrics; one
    trace for every GPU, or one per GPU index. ``host_cpu_pct`` (one value per 5 minutes, as
    basic monitoring) and ``host_mem_pct`` (per minute, as the agent) end at ``now``."""

    instance_type: str
    samples: Sequence[Reading] | Mapping[int, Sequence[Reading]] | None
    count: int = 1
    tags: Mapping[str, str] = field(default_factory=dict)
    spot: SpotKind | None = None
    hibernation: bool = False
    age: timedelta = timedelta(days=1)
    # What `guardian agent` reports of its instance store (MiB beyond empty filesystems); None:
    # no agent metric. A reservation id puts it in reserved capacity (moto's setattr, as above).
    local_disk_used_mib: float | None = None
    reservation: str | None = None
    disable_api_stop: bool = False
    host_cpu_pct: Sequence[float] | None = None
    host_mem_pct: Sequence[float] | None = None


def seed_fleet(
    ec2: EC2Client,
    cloudwatch: CloudWatchClient,
    fleet: Sequence[SimInstance],
    now: datetime,
    *,
    in_process: bool = False,
) -> list[tuple[str, SimInstance]]:
    """Launch every instance of ``fleet`` and publish its metrics, packing the datums of many
    instances into full PutMetricData calls. Returns (instance id, its spec) in launch order.

    ``in_process`` (an in-process server with ``indexed_metrics``): launch times and metrics
    are written straight into moto instead of one HTTP call per instance and per 1000 datums —
    for fleets of thousands with days of history. Instances are still launched over HTTP.
    """
    from guardian.simulated import moto_speedups

    if in_process and not moto_speedups.installed():
        raise RuntimeError("in_process seeding needs start_moto_server(indexed_metrics=True)")
    types = sorted({spec.instance_type for spec in fleet})
    gpu_of: dict[str, tuple[int, str]] = {}
    for info in ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]:  # type: ignore[arg-type]
        gpu = gpu_type_from(info)
        # A type without GPUs still gets an agent trace if asked: it is how a test shows that
        # guardian ignores it.
        gpu_of[info["InstanceType"]] = (
            (gpu.gpu_count, gpu.gpu_model or "GPU") if gpu else (1, "none")
        )
    launched: list[tuple[str, SimInstance]] = []
    datums: list[dict[str, Any]] = []
    ec2_datums: list[dict[str, Any]] = []
    for spec in fleet:
        ids = launch_gpu_instances(
            ec2,
            spec.instance_type,
            count=spec.count,
            tags=spec.tags,
            spot=spec.spot,
            hibernation=spec.hibernation,
            launched_at=None if in_process else now - spec.age,
            disable_api_stop=spec.disable_api_stop,
        )
        if in_process:
            moto_speedups.backdate_in_process(ec2.meta.region_name, ids, now - spec.age)
        gpus, gpu_name = gpu_of[spec.instance_type]
        for instance_id in ids:
            launched.append((instance_id, spec))
            if spec.samples is not None:
                datums.extend(gpu_datums(instance_id, gpus, spec.samples, now, gpu_name=gpu_name))
            if spec.local_disk_used_mib is not None:
                datums.extend(local_disk_datums(instance_id, [spec.local_disk_used_mib] * 5, now))
            if spec.reservation is not None:
                ec2.modify_instance_attribute(
                    InstanceId=instance_id,
                    Attribute="capacityReservationId",  # type: ignore[arg-type]
                    Value=spec.reservation,
                )
            if spec.host_cpu_pct is not None:
                ec2_datums += host_datums(instance_id, HOST_CPU_METRIC, spec.host_cpu_pct, now)
            if spec.host_mem_pct is not None:
                datums += host_datums(
                    instance_id, HOST_MEM_METRIC, spec.host_mem_pct, now, period_s=60
                )
    if in_process:
        region = cloudwatch.meta.region_name
        moto_speedups.put_in_process(region, datums, AGENT_NAMESPACE)
        moto_speedups.put_in_process(region, ec2_datums, EC2_NAMESPACE)
    else:
        put_datums(cloudwatch, datums)
        put_datums(cloudwatch, ec2_datums, EC2_NAMESPACE)
    return launched

"""Where the agent's readings go: Prometheus (always, if ``agent.listen``), CloudWatch or Cloud
Monitoring (``agent.publish``).

CloudWatch gets exactly the CloudWatch agent's ``nvidia_gpu`` schema — namespace ``CWAgent``,
``nvidia_smi_utilization_gpu`` / ``nvidia_smi_memory_used`` (the names in ``aws.metrics``),
dimensions ``InstanceId``, ``index``, ``name`` — so the daemon reads either source the same
way. Cloud Monitoring gets custom metrics with the Ops Agent's labels (``gpu_number``,
``model``, ``uuid``; memory in bytes with ``memory_state=used``), which the GCP provider reads
when ``gcp.metrics`` names them. The notebook signal (``guardian.agent.notebook``) goes beside
them, per instance: ``guardian_notebook_idle`` (Seconds, dimensions exactly ``InstanceId``) and
``custom.googleapis.com/guardian/notebook/idle_seconds``, only while it is present. Unknown
values are left out, never sent as 0. A sink never raises into the poll loop: failures are
logged, and a bounded buffer keeps the newest data for the next try. boto3 and the Google
libraries are imported only by the sink that needs them.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from guardian.agent.gpu import GpuReading
from guardian.config import Config
from guardian.errors import ConfigError
from guardian.model import Verdict
from guardian.providers.aws.metrics import NOTEBOOK_IDLE_METRIC
from guardian.providers.gcp.metrics import NOTEBOOK_IDLE_METRIC_TYPE

if TYPE_CHECKING:
    from guardian.agent.poll import PollResult

__all__ = [
    "CW_MAX_BYTES",
    "CW_MAX_DATUMS",
    "GCP_MEM_METRIC",
    "GCP_UTIL_METRIC",
    "CloudWatchSink",
    "GcpMonitoringSink",
    "PrometheusSink",
    "cloudwatch_batches",
    "cloudwatch_datums",
    "local_disk_datum",
    "parse_listen",
]

log = structlog.get_logger(__name__)

CW_MAX_DATUMS = 1000  # PutMetricData: at most 1000 datums per call
CW_MAX_BYTES = 1_000_000  # ... and a 1 MB request body; we budget for query-protocol encoding
_CW_BUDGET = 900_000  # headroom for the envelope (Action, Version, Namespace, signature)
_MAX_BUFFERED = 20_000  # datums kept while CloudWatch is unreachable (~10 min of 8 GPUs at 1 s)
GCP_UTIL_METRIC = "custom.googleapis.com/guardian/gpu/utilization"
GCP_MEM_METRIC = "custom.googleapis.com/guardian/gpu/memory/bytes_used"
_GCP_MAX_SERIES = 200  # CreateTimeSeries: at most 200 series per call, one point each
_MIB = 1024 * 1024


def parse_listen(value: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:9465`` for IPv6) → (host, port); empty → None (off)."""
    if not value.strip():
        return None
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"agent.listen: expected host:port, got {value!r}")
    # A bare ":9465" asks for every interface, as prometheus_client's own default does.
    return host.strip("[]") or "0.0.0.0", int(port)


# -- Prometheus --------------------------------------------------------------------------------


class _MaybeGauge:
    """An unlabelled gauge with no sample while its value is unknown or absent: a plain
    ``Gauge`` always exports one, and 0 would read as "idle 0 minutes" or "a stop in 1970"."""

    def __init__(self, name: str, documentation: str, registry: Any) -> None:
        self._name, self._documentation = name, documentation
        self._value: float | None = None
        registry.register(self)

    def set(self, value: float | None) -> None:
        self._value = value

    def describe(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self._name, self._documentation)
        if self._value is not None:
            family.add_metric([], self._value)
        yield family


class PrometheusSink:
    """Per-GPU gauges (labels ``gpu``, ``uuid``, ``model``) and the agent's verdict, served
    from the agent's own registry (so nothing else in the process leaks into the scrape)."""

    name = "prometheus"

    def __init__(self, listen: str, *, serve: bool = True) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("gpu", "uuid", "model")
        r = self.registry
        self._util = Gauge(
            "guardian_agent_gpu_utilization_percent", "GPU busy time, percent", labels, registry=r
        )
        self._mem_used = Gauge(
            "guardian_agent_gpu_memory_used_mib", "GPU memory in use, MiB", labels, registry=r
        )
        self._mem_total = Gauge(
            "guardian_agent_gpu_memory_total_mib", "GPU memory size, MiB", labels, registry=r
        )
        self._procs = Gauge(
            "guardian_agent_gpu_processes",
            "Compute processes holding the GPU",
            labels,
            registry=r,
        )
        self._up = Gauge(
            "guardian_agent_gpu_up",
            "1 if the GPU's utilisation could be read at the last poll, else 0",
            labels,
            registry=r,
        )
        self._verdict = Gauge(
            "guardian_agent_verdict", "1 for the agent's current verdict", ["verdict"], registry=r
        )
        self._idle_minutes = _MaybeGauge(
            "guardian_agent_idle_minutes",
            "Minutes every GPU has been idle (no sample while unknown)",
            r,
        )
        self._deadline = _MaybeGauge(
            "guardian_agent_stop_deadline_timestamp_seconds",
            "When the pending autostop will stop the machine (no sample when none is pending)",
            r,
        )
        self._polls = Counter("guardian_agent_polls", "Polls of the GPUs", registry=r)
        self._problems = Counter(
            "guardian_agent_gpu_problems", "NVML failures by severity", ["severity"], registry=r
        )
        self._seen: set[tuple[str, str, str]] = set()
        self._server: Any = None
        address = parse_listen(listen) if serve else None
        if address is not None:
            from prometheus_client import start_http_server

            try:
                self._server, _ = start_http_server(address[1], addr=address[0], registry=r)
            except OSError as exc:
                raise ConfigError(f"agent.listen {listen}: cannot listen: {exc}") from exc

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def publish(self, result: PollResult) -> None:
        snapshot, decision = result.snapshot, result.decision
        current: set[tuple[str, str, str]] = set()
        for gpu in snapshot.gpus:
            key = (str(gpu.index), gpu.uuid or "", gpu.name or "")
            current.add(key)
            self._up.labels(*key).set(0 if gpu.gpu_util_pct is None else 1)
            for gauge, value in (
                (self._util, gpu.gpu_util_pct),
                (self._mem_used, gpu.mem_used_mib),
                (self._mem_total, gpu.mem_total_mib),
                (self._procs, None if gpu.processes is None else len(gpu.processes)),
            ):
                if value is None:  # unknown: no sample at all, never a 0
                    with contextlib.suppress(KeyError):
                        gauge.remove(*key)
                else:
                    gauge.labels(*key).set(value)
        for gone in self._seen - current:  # a GPU that vanished leaves no stale series
            for gauge in (self._util, self._mem_used, self._mem_total, self._procs, self._up):
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        self._seen = current
        for verdict in Verdict:
            self._verdict.labels(str(verdict)).set(1 if decision.verdict is verdict else 0)
        self._idle_minutes.set(decision.idle_minutes)
        episode = result.autostop.episode if result.autostop else None
        self._deadline.set(episode.deadline.timestamp() if episode else None)
        self._polls.inc()
        for problem in snapshot.all_problems:
            self._problems.labels(str(problem.severity)).inc()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- CloudWatch --------------------------------------------------------------------------------


def cloudwatch_datums(
    gpus: Sequence[GpuReading], at: datetime, instance_id: str, config: Config
) -> list[dict[str, Any]]:
    """The CloudWatch agent's nvidia_gpu datums for one poll; unknown values are left out."""
    names = config.aws.metrics
    datums: list[dict[str, Any]] = []
    for gpu in gpus:
        if gpu.name is None:
            continue  # no `name` dimension, no series the daemon would match
        dims = [
            {"Name": "InstanceId", "Value": instance_id},
            {"Name": "index", "Value": str(gpu.index)},
            {"Name": "name", "Value": gpu.name},
        ]
        for metric, value, unit in (
            (names.gpu_util, gpu.gpu_util_pct, "Percent"),
            ("nvidia_smi_utilization_memory", gpu.mem_util_pct, "Percent"),
            (names.gpu_mem_used, gpu.mem_used_mib, "Megabytes"),
            ("nvidia_smi_memory_total", gpu.mem_total_mib, "Megabytes"),
        ):
            if value is not None:
                datums.append(
                    {
                        "MetricName": metric,
                        "Dimensions": dims,
                        "Timestamp": at,
                        "Value": float(value),
                        "Unit": unit,
                    }
                )
    return datums


def local_disk_datum(result: PollResult, instance_id: str, config: Config) -> dict[str, Any] | None:
    """``guardian_local_disk_used``: MiB of instance store in use beyond empty filesystems
    (Unit Megabytes, as the GPU memory), dimensions exactly ``InstanceId``. None when there is
    nothing to say: no local disks, or they could not be measured (unknown is never sent)."""
    point = result.local_disk_used
    if point is None or not config.aws.metrics.local_disk_used:
        return None
    return {
        "MetricName": config.aws.metrics.local_disk_used,
        "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
        "Timestamp": point[0],
        "Value": float(point[1]),
        "Unit": "Megabytes",
    }


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flat(f"{prefix}.{key}", item)
    elif isinstance(value, list):
        for n, item in enumerate(value, 1):
            yield from _flat(f"{prefix}.member.{n}", item)
    elif isinstance(value, datetime):
        yield prefix, value.isoformat()
    else:
        yield prefix, str(value)


def _wire_size(datum: Mapping[str, Any]) -> int:
    """Bytes the datum takes in a query-protocol body (the largest of botocore's encodings),
    numbered as the 1000th member, so the estimate is an upper bound."""
    return sum(
        len(quote(key, safe=".")) + len(quote(value, safe="")) + 2
        for key, value in _flat("MetricData.member.1000", datum)
    )


def cloudwatch_batches(datums: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into PutMetricData calls of at most 1000 datums and under the 1 MB body limit."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for datum in datums:
        datum_size = _wire_size(datum)
        if current and (len(current) >= CW_MAX_DATUMS or size + datum_size > _CW_BUDGET):
            batches.append(current)
            current, size = [], 0
        current.append(datum)
        size += datum_size
    if current:
        batches.append(current)
    return batches


class CloudWatchSink:
    """Buffers each poll's datums and sends them every ``aws.metrics.period`` seconds (the
    daemon's read period) in as few PutMetricData calls as the limits allow."""

    name = "cloudwatch"

    def __init__(
        self, config: Config, instance_id: str, region: str, *, client: Any = None
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.namespace = config.aws.metrics.namespace
        self.flush_every = timedelta(seconds=config.aws.metrics.period)
        self._client = client if client is not None else _cloudwatch_client(region)
        self._buffer: deque[dict[str, Any]] = deque(maxlen=_MAX_BUFFERED)
        self._last_flush: datetime | None = None
        self._failing = False
        self.calls = 0

    def publish(self, result: PollResult) -> None:
        at = result.snapshot.sampled_at
        self._buffer.extend(
            cloudwatch_datums(result.snapshot.gpus, at, self.instance_id, self.config)
        )
        idle_s = result.notebook.idle_s if result.notebook is not None else None
        if idle_s is not None:  # absent is no datum, never a 0
            self._buffer.append(
                {
                    "MetricName": NOTEBOOK_IDLE_METRIC,
                    "Dimensions": [{"Name": "InstanceId", "Value": self.instance_id}],
                    "Timestamp": at,
                    "Value": float(idle_s),
                    "Unit": "Seconds",
                }
            )
        first = self._last_flush is None
        if first or (self._last_flush is not None and at - self._last_flush >= self.flush_every):
            # Once a period (and at the start, so the daemon sees the disks soon).
            local = local_disk_datum(result, self.instance_id, self.config)
            if local is not None:
                self._buffer.append(local)
        if self._last_flush is None:
            self._last_flush = at
        elif at - self._last_flush >= self.flush_every:
            self._last_flush = at
            self.flush()

    def flush(self) -> None:
        batches = cloudwatch_batches(list(self._buffer))
        self._buffer.clear()
        for n, batch in enumerate(batches):
            try:
                self.calls += 1
                self._client.put_metric_data(Namespace=self.namespace, MetricData=batch)
            except Exception as exc:  # botocore errors of every kind: keep the data, retry
                unsent = [datum for later in batches[n:] for datum in later]
                self._buffer.extendleft(reversed(unsent))
                if not self._failing:
                    from guardian.providers.aws.errors import map_aws_error

                    # One line naming the permission (cloudwatch:PutMetricData) if IAM refused.
                    error = map_aws_error(
                        exc,
                        operation="cloudwatch:PutMetricData",
                        policy="docs/iam-policy-agent.json",
                    )
                    log.warning("publish_failed", sink=self.name, error=str(error))
                self._failing = True
                return
        if self._failing:
            log.info("publish_recovered", sink=self.name)
        self._failing = False

    def close(self) -> None:
        if self._buffer:
            self.flush()


def _cloudwatch_client(region: str) -> Any:
    import boto3

    from guardian.providers.aws.clients import PATIENCE, boto_config

    # AWS_ENDPOINT_URL, if set, is honoured by boto3 itself: the one standard override.
    return boto3.client(
        "cloudwatch",
        region_name=region,
        config=boto_config(PATIENCE["daemon"], user_agent_extra="gpu-guardian-agent"),
    )


# -- Cloud Monitoring --------------------------------------------------------------------------


def _gcp_timeout_s() -> float:
    from guardian.providers.gcp.clients import PATIENCE

    return PATIENCE["daemon"].connect_s + PATIENCE["daemon"].read_s


class GcpMonitoringSink:
    """One point per GPU and metric every ``gcp.metrics.period``: the maximum over the polls
    since the last write, so a short burst of work is never averaged away into idleness."""

    name = "gcp"

    def __init__(
        self, config: Config, project: str, instance_id: str, zone: str, *, client: Any = None
    ) -> None:
        metrics = config.gcp.metrics
        custom = "custom.googleapis.com/"
        self.util_metric = (
            metrics.gpu_util if metrics.gpu_util.startswith(custom) else GCP_UTIL_METRIC
        )
        self.mem_metric = (
            metrics.gpu_mem_used if metrics.gpu_mem_used.startswith(custom) else GCP_MEM_METRIC
        )
        self.project = project
        self.resource = {"project_id": project, "instance_id": instance_id, "zone": zone}
        self.flush_every = timedelta(seconds=metrics.period)
        self._config = config
        self._client = client
        self._clients: Any = None
        # (gpu index, uuid, model) → [max util, max mem bytes or None]
        self._pending: dict[tuple[int, str, str], list[float | None]] = {}
        # The notebook signal over the period: its minimum, and absent if any poll lacked it.
        self._notebook: float | None = None
        self._notebook_broken = False
        self._last_at: datetime | None = None
        self._last_flush: datetime | None = None
        self._failing = False
        self.calls = 0
        self.local_metric = metrics.local_disk_used
        self._local_bytes: float | None = None  # the newest local-disk reading, in bytes

    def publish(self, result: PollResult) -> None:
        at = result.snapshot.sampled_at
        local = result.local_disk_used
        self._local_bytes = local[1] * _MIB if local is not None else None
        for gpu in result.snapshot.gpus:
            if gpu.gpu_util_pct is None:
                continue
            key = (gpu.index, gpu.uuid or "", gpu.name or "")
            mem = gpu.mem_used_mib * _MIB if gpu.mem_used_mib is not None else None
            held = self._pending.get(key)
            if held is None:
                self._pending[key] = [gpu.gpu_util_pct, mem]
            else:
                held[0] = max(held[0] or 0.0, gpu.gpu_util_pct)
                held[1] = None if held[1] is None or mem is None else max(held[1], mem)
        idle_s = result.notebook.idle_s if result.notebook is not None else None
        if idle_s is None:
            self._notebook_broken = True
        else:
            self._notebook = idle_s if self._notebook is None else min(self._notebook, idle_s)
        self._last_at = at
        if self._last_flush is None:
            self._last_flush = at
        elif at - self._last_flush >= self.flush_every:
            self._last_flush = at
            self.flush()

    def _series(self) -> list[Any]:
        from google.cloud import monitoring_v3

        assert self._last_at is not None  # only called after a publish
        interval = monitoring_v3.TimeInterval(end_time=self._last_at)
        resource = {"type": "gce_instance", "labels": self.resource}
        series = []
        for (index, uuid, model), (util, mem) in sorted(self._pending.items()):
            labels = {"gpu_number": str(index), "uuid": uuid, "model": model}
            series.append(
                monitoring_v3.TimeSeries(
                    metric={"type": self.util_metric, "labels": labels},
                    resource=resource,
                    points=[{"interval": interval, "value": {"double_value": util}}],
                )
            )
            if mem is not None:
                series.append(
                    monitoring_v3.TimeSeries(
                        metric={
                            "type": self.mem_metric,
                            "labels": {**labels, "memory_state": "used"},
                        },
                        resource=resource,
                        points=[{"interval": interval, "value": {"double_value": mem}}],
                    )
                )
        if self._notebook is not None and not self._notebook_broken and series:
            series.append(
                monitoring_v3.TimeSeries(
                    metric={"type": NOTEBOOK_IDLE_METRIC_TYPE},
                    resource=resource,
                    points=[{"interval": interval, "value": {"double_value": self._notebook}}],
                )
            )
        if self._local_bytes is not None and self.local_metric:
            series.append(
                monitoring_v3.TimeSeries(
                    metric={"type": self.local_metric},
                    resource=resource,
                    points=[{"interval": interval, "value": {"double_value": self._local_bytes}}],
                )
            )
        return series

    def flush(self) -> None:
        if not self._pending:
            return
        try:
            series = self._series()
            client = self._metric_client()
            for start in range(0, len(series), _GCP_MAX_SERIES):
                self.calls += 1
                client.create_time_series(
                    name=f"projects/{self.project}",
                    time_series=series[start : start + _GCP_MAX_SERIES],
                    timeout=_gcp_timeout_s(),
                )
        except Exception as exc:  # google.api_core errors of every kind: log, drop, go on
            if not self._failing:
                log.warning("publish_failed", sink=self.name, error=str(exc))
            self._failing = True
        else:
            if self._failing:
                log.info("publish_recovered", sink=self.name)
            self._failing = False
        # A point is a maximum over its period; a late one would land out of order, so drop it.
        self._pending.clear()
        self._notebook, self._notebook_broken = None, False

    def _metric_client(self) -> Any:
        if self._client is None:
            from guardian.providers.gcp.clients import GcpClients, resolve_credentials

            credentials, _ = resolve_credentials(self._config.gcp)
            self._clients = GcpClients(self._config.gcp, credentials)
            self._client = self._clients.metrics()
        return self._client

    def close(self) -> None:
        self.flush()
        if self._clients is not None:
            self._clients.close()

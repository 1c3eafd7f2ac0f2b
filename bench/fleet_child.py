"""The fleet benchmark's child processes: each measured alone (its own peak RSS, its own calls).

    python -m bench.fleet_child audit CALLS_JSON -- GUARDIAN_ARGS...
        ``guardian`` itself (``guardian.cli.main``), with every API call counted.
    python -m bench.fleet_child per-instance CONFIG NOW OUT_JSON [WORKERS]
        The obvious alternative on the same fleet: what Cloud Custodian's ``metrics`` filter
        does — one GetMetricStatistics per resource, three worker threads over sets of 50 — here
        once per instance, GPU and metric (the policy needs utilisation and memory per GPU).
        Verdicts come from the same ``policy.decide``.
    python -m bench.fleet_child help-imports
        Which cloud SDK modules ``guardian --help`` imports (there must be none).

API calls are counted with a botocore ``before-call`` event hook, registered in every botocore
session this process creates (it is appended to botocore's built-in handler list before any
session exists): once per call and per page, not per retry.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardian.config import AwsMetricsConfig
    from guardian.model import GpuInstance, GpuUtilisation

CLOUD_SDKS = ("boto3", "botocore", "moto", "grpc", "google.cloud", "google.api_core", "google.auth")
CUSTODIAN_WORKERS = 3  # c7n/filters/metrics.py: executor_factory(max_workers=3)
CUSTODIAN_SET = 50  # ... over chunks(resources, 50)


class CallCounter:
    """API calls per ``service:Operation``; safe from many threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, model: Any = None, **_: Any) -> None:
        name = f"{model.service_model.service_name}:{model.name}" if model else "unknown"
        with self._lock:
            self.counts[name] += 1


def count_calls() -> CallCounter:
    """Count every API call of every botocore session created from now on in this process."""
    from botocore import handlers

    counter = CallCounter()
    handlers.BUILTIN_HANDLERS.append(("before-call", counter))
    return counter


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB (10^6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def run_audit(calls_path: str, argv: Sequence[str]) -> int:
    """``guardian ARGV`` in this process, then the calls and its time to ``calls_path``."""
    counter = count_calls()
    from guardian.cli import main

    sys.argv = ["guardian", *argv]
    started = time.perf_counter()
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    finally:
        report = {
            "calls": dict(counter.counts),
            "seconds": time.perf_counter() - started,
            "exit": code,
            "peak_rss_mb": _peak_rss_mb(),
        }
        Path(calls_path).write_text(json.dumps(report))
    return int(code or 0) if not isinstance(code, str) else 1


def _chunks(items: Sequence[GpuInstance], size: int) -> Iterator[Sequence[GpuInstance]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _gpu_of(dims: Sequence[tuple[str, str]]) -> str:
    return next((value for name, value in dims if name == "index"), repr(dims))


def per_instance(config_path: str, now_iso: str, out_path: str, workers: int) -> int:
    """Discover as guardian does, list the series as guardian does (generous: without the
    listing the alternative could not name the agent's per-GPU series at all), then read each
    series with its own GetMetricStatistics and decide with the same policy."""
    counter = count_calls()
    import boto3
    from botocore.config import Config as BotoConfig

    from guardian.config import load_config
    from guardian.policy import decide
    from guardian.prices import assess, load_catalog
    from guardian.providers.aws.metrics import aligned_window
    from guardian.providers.aws.provider import AwsProvider

    config, _ = load_config(Path(config_path), ())
    now = datetime.fromisoformat(now_iso).astimezone(UTC)
    metrics = config.aws.metrics
    start, end = aligned_window(now - config.cost.lookback, now, metrics.period)
    started = time.perf_counter()
    provider = AwsProvider(config)
    instances = provider.discover().instances
    provider.close()
    discovered = time.perf_counter()

    session = boto3.Session()
    client_config = BotoConfig(retries={"mode": "standard", "max_attempts": 5})
    results: dict[str, GpuUtilisation] = {}
    for region in sorted({i.region for i in instances}):
        members = [i for i in instances if i.region == region]
        reader = SeriesReader(
            session.client("cloudwatch", region_name=region, config=client_config),
            metrics,
            start,
            end,
        )
        reader.list([i.instance_id for i in members])
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done in pool.map(reader.read_set, _chunks(members, CUSTODIAN_SET)):
                results.update(done)
    measured = time.perf_counter()
    catalog = load_catalog(config.state_dir)
    verdicts = {
        i.instance_id: decide(i, results[i.key], assess(catalog, i), config, now).verdict.value
        for i in instances
    }
    report = {
        "calls": dict(counter.counts),
        "seconds": time.perf_counter() - started,
        "discovery_seconds": discovered - started,
        "metrics_seconds": measured - discovered,
        "verdicts": verdicts,
        "peak_rss_mb": _peak_rss_mb(),
    }
    Path(out_path).write_text(json.dumps(report))
    return 0


class SeriesReader:
    """One region's reads for the per-instance method: a GetMetricStatistics per series."""

    def __init__(self, cloudwatch: Any, metrics: AwsMetricsConfig, start: datetime, end: datetime):
        self._cloudwatch = cloudwatch
        self._metrics = metrics
        self._window = (start, end)
        self._listed: dict[str, dict[str, list[Any]]] = {}

    def list(self, instance_ids: Sequence[str]) -> None:
        from guardian.providers.aws.metrics import list_instance_series

        m = self._metrics
        for name in (m.gpu_util, m.gpu_mem_used):
            self._listed[name] = list_instance_series(
                self._cloudwatch, m.namespace, name, instance_ids
            )

    def read_set(self, batch: Sequence[GpuInstance]) -> dict[str, GpuUtilisation]:
        """Custodian's unit of work: a set of resources, one after the other."""
        from guardian.model import GpuUtilisation

        found: dict[str, GpuUtilisation] = {}
        for instance in batch:
            try:
                found[instance.key] = self._read(instance)
            except Exception as exc:  # Custodian logs a failed lookup and matches nothing
                found[instance.key] = GpuUtilisation(error=f"GetMetricStatistics failed: {exc}")
        return found

    def _read(self, instance: GpuInstance) -> GpuUtilisation:
        from guardian.model import GpuUtilisation
        from guardian.series import reduce_gpu_series

        m = self._metrics
        by_metric: dict[str, dict[str, list[tuple[datetime, float]]]] = {}
        for name in (m.gpu_util, m.gpu_mem_used):
            per_gpu = by_metric.setdefault(name, {})
            for dims in self._listed[name].get(instance.instance_id, []):
                answer = self._cloudwatch.get_metric_statistics(
                    Namespace=m.namespace,
                    MetricName=name,
                    Dimensions=[{"Name": n, "Value": v} for n, v in dims],
                    StartTime=self._window[0],
                    EndTime=self._window[1],
                    Period=m.period,
                    Statistics=["Maximum"],
                )
                per_gpu.setdefault(_gpu_of(dims), []).extend(
                    (p["Timestamp"].astimezone(UTC), float(p["Maximum"]))
                    for p in answer["Datapoints"]
                )
        util, mem = by_metric[m.gpu_util], by_metric[m.gpu_mem_used]
        if not util:
            return GpuUtilisation(period_s=m.period, error="no utilisation series")
        samples = reduce_gpu_series(
            {gpu: _max_per_time(points) for gpu, points in util.items()},
            {gpu: _max_per_time(points) for gpu, points in mem.items()} or None,
            expected_gpus=instance.gpu_count,
        )
        return GpuUtilisation(samples=samples, period_s=m.period, gpus_reporting=len(util))


def _max_per_time(points: Sequence[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    """Two series of one GPU (the agent's dimensions changed) count once per time: the max,
    as guardian's provider merges them."""
    merged: dict[datetime, float] = {}
    for at, value in points:
        merged[at] = max(value, merged.get(at, value))
    return sorted(merged.items())


def help_imports() -> int:
    """Print, as JSON, the cloud SDK modules loaded by ``guardian --help``."""
    import contextlib
    import io

    from guardian.cli import main

    sys.argv = ["guardian", "--help"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main()
    loaded = sorted(
        m for m in sys.modules if any(m == s or m.startswith(s + ".") for s in CLOUD_SDKS)
    )
    print(json.dumps(loaded))
    return 0


def main(argv: Sequence[str]) -> int:
    command, *rest = argv
    if command == "audit":
        calls_path, separator, *guardian_args = rest
        assert separator == "--", "usage: audit CALLS_JSON -- GUARDIAN_ARGS..."
        return run_audit(calls_path, guardian_args)
    if command == "per-instance":
        config_path, now_iso, out_path, *workers = rest
        return per_instance(config_path, now_iso, out_path, int(workers[0]) if workers else 3)
    if command == "help-imports":
        return help_imports()
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""An in-memory Provider built from plain data: tests policy, cycle, report and enforcement
without a cloud. It implements our own protocol; the real providers are tested against moto and
the GCP fakes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from guardian.errors import ProviderError
from guardian.model import GpuInstance, GpuSample, GpuSummary, GpuUtilisation, InstanceMetric, Point
from guardian.prices import PriceCatalog, TypePrice
from guardian.providers import Discovery, StopResult, Unit, UnitError, UnitPlan
from guardian.series import percentile
from tests.clock import NOW

# A g5.xlarge and the CPU types that could stand in for it, at catalog prices.
CATALOG = PriceCatalog(
    types={
        "aws": {
            "us-east-1": {
                "g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, "A10G", 1.006),
                "m7i.xlarge": TypePrice("m7i.xlarge", 4, 16, 0, None, 0.2016),
                "c7i.xlarge": TypePrice("c7i.xlarge", 4, 8, 0, None, 0.1785),
            }
        }
    },
    source={"aws": f"catalog {(NOW - timedelta(days=25)).date()}"},
)


def make_instance(instance_id: str = "i-1", **changes: object) -> GpuInstance:
    base = GpuInstance(
        provider="aws",
        account="123456789012",
        region="us-east-1",
        zone="us-east-1a",
        instance_id=instance_id,
        instance_type="g5.xlarge",
        launch_time=NOW - timedelta(days=2),
        gpu_count=1,
        gpu_model="A10G",
        name=f"name-{instance_id}",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def flat_samples(
    util: float,
    minutes: int,
    *,
    mem_mib: float | None = 20000.0,
    end: datetime = NOW,
    period_s: int = 60,
) -> tuple[GpuSample, ...]:
    """``minutes`` one-per-period samples of constant utilisation ending at ``end``."""
    count = minutes * 60 // period_s
    return tuple(
        GpuSample(
            at=end - timedelta(seconds=period_s * (count - 1 - i)),
            gpu_util_pct=util,
            mem_used_mib=mem_mib,
        )
        for i in range(count)
    )


def _summaries(samples: Sequence[GpuSample], gpus: int) -> tuple[GpuSummary, ...]:
    """Every GPU summarised as the instance's reduced series (the fake keeps no per-GPU data)."""
    mems = [s.mem_used_mib for s in samples if s.mem_used_mib is not None]
    p95 = percentile((s.gpu_util_pct for s in samples), 95)
    peak = max(mems) if mems else None
    return tuple(GpuSummary(str(i), p95, peak, len(samples)) for i in range(gpus))


@dataclass
class FakeProvider:
    instances: list[GpuInstance]
    samples: dict[str, tuple[GpuSample, ...]] = field(default_factory=dict)
    errors: list[UnitError] = field(default_factory=list)
    # instance key → its per-instance series (the agent's local-disk reading, ...)
    instance_series: dict[str, dict[InstanceMetric, tuple[Point, ...]]] = field(
        default_factory=dict
    )
    name: str = "aws"
    stopped: list[str] = field(default_factory=list)
    utilisation_calls: int = 0
    # The agent's notebook signal per instance key, read beside the GPUs' as the clouds do.
    notebook: dict[str, tuple[Point, ...]] = field(default_factory=dict)
    stop_protected: set[str] = field(default_factory=set)  # instance keys with DisableApiStop
    protection_reads: list[str] = field(default_factory=list)  # keys asked about, in order
    describe_calls: int = 0

    def units(self) -> UnitPlan:
        found = {Unit(self.name, i.account, i.region) for i in self.instances}
        found |= {Unit(self.name, e.account, e.region) for e in self.errors if e.region != "*"}
        # An account that could not be entered at all (region "*") is the plan's error.
        entered = tuple(e for e in self.errors if e.region == "*")
        return UnitPlan(tuple(sorted(found)), entered)

    def discover(self, units: Sequence[Unit] | None = None) -> Discovery:
        def wanted(provider: str, account: str, region: str) -> bool:
            return units is None or any(u.covers(provider, account, region) for u in units)

        return Discovery(
            tuple(i for i in self.instances if wanted(i.provider, i.account, i.region)),
            tuple(e for e in self.errors if wanted(e.provider, e.account, e.region)),
        )

    def utilisation(
        self, instances: Sequence[GpuInstance], start: datetime, end: datetime
    ) -> Iterator[tuple[str, GpuUtilisation]]:
        self.utilisation_calls += 1
        for instance in instances:
            series = tuple(s for s in self.samples.get(instance.key, ()) if start <= s.at <= end)
            extra = dict(self.instance_series.get(instance.key, {}))
            points = tuple(p for p in self.notebook.get(instance.key, ()) if start <= p[0] <= end)
            if points:
                extra[InstanceMetric.NOTEBOOK_IDLE_S] = points
            yield (
                instance.key,
                (
                    GpuUtilisation(
                        series,
                        60,
                        instance.gpu_count,
                        instance_series=extra,
                        gpus=_summaries(series, instance.gpu_count),
                    )
                    if series
                    else GpuUtilisation(error=f"no GPU metrics for {instance.instance_id}")
                ),
            )

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        self.stopped.append(instance.key)
        return StopResult(instance.key, True, "hibernate" if hibernate else "stop")

    def describe(self, instance: GpuInstance) -> GpuInstance:
        self.describe_calls += 1
        for found in self.instances:
            if found.instance_id == instance.instance_id:
                return found
        if self.errors:
            raise ProviderError(self.errors[0].message, provider=self.name)
        raise ProviderError(f"instance {instance.instance_id} not found", provider=self.name)

    def stop_protection(self, instance: GpuInstance) -> bool | None:
        self.protection_reads.append(instance.key)
        return instance.key in self.stop_protected

    def close(self) -> None:
        pass

"""An in-memory Provider built from plain data: tests policy, cycle, report and enforcement
without a cloud. It implements our own protocol; the real providers are tested against moto and
the GCP fakes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from guardian.model import GpuInstance, GpuSample, GpuSummary, GpuUtilisation
from guardian.prices import PriceCatalog, TypePrice
from guardian.providers import Discovery, StopResult, UnitError
from guardian.series import percentile

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

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
    source={"aws": "catalog 2026-11-01"},
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
    name: str = "aws"
    stopped: list[str] = field(default_factory=list)
    utilisation_calls: int = 0

    def discover(self) -> Discovery:
        return Discovery(tuple(self.instances), tuple(self.errors))

    def utilisation(
        self, instances: Sequence[GpuInstance], start: datetime, end: datetime
    ) -> Iterator[tuple[str, GpuUtilisation]]:
        self.utilisation_calls += 1
        for instance in instances:
            series = tuple(s for s in self.samples.get(instance.key, ()) if start <= s.at <= end)
            yield (
                instance.key,
                (
                    GpuUtilisation(
                        series, 60, instance.gpu_count, gpus=_summaries(series, instance.gpu_count)
                    )
                    if series
                    else GpuUtilisation(error=f"no GPU metrics for {instance.instance_id}")
                ),
            )

    def stop(self, instance: GpuInstance, *, hibernate: bool = False) -> StopResult:
        self.stopped.append(instance.key)
        return StopResult(instance.key, True, "hibernate" if hibernate else "stop")

    def close(self) -> None:
        pass

"""One audit cycle: discover → utilisation → price → decide → right-size, for every provider.

Shared by ``guardian audit``, the daemon, the demo and the benchmarks. It never acts: stopping
is ``guardian.daemon.enforce``'s job, on the findings this returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from guardian.config import Config
from guardian.model import Finding, GpuInstance, GpuUtilisation, InstanceMetric
from guardian.policy import decide
from guardian.prices import PriceCatalog, assess, rightsize
from guardian.providers import Discovery, Provider, Unit, UnitError
from guardian.series import sparkline_values

__all__ = ["CycleResult", "audit_cycle", "audit_units"]

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CycleResult:
    generated_at: datetime
    findings: tuple[Finding, ...]
    errors: tuple[UnitError, ...] = ()

    @property
    def nothing_audited(self) -> bool:
        """Every unit failed: not one instance could be looked at. ``guardian audit`` and
        ``guardian run --once`` then exit 2, so that cron notices."""
        return bool(self.errors) and not self.findings

    def failure_line(self) -> str:
        """Why nothing could be audited, in one line: the first failure, and how many more."""
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        return f"nothing could be audited: {first.provider} {first.region}: {first.message}{more}"


def audit_cycle(
    config: Config,
    providers: Sequence[Provider],
    catalog: PriceCatalog,
    now: datetime,
    progress: Progress | None = None,
) -> CycleResult:
    """Audit every provider once. A failing unit is logged and reported, never fatal."""
    findings: list[Finding] = []
    errors: list[UnitError] = []
    for provider in providers:
        if progress:
            progress(f"{provider.name}: discovering GPU instances")
        discovery = provider.discover()
        _measure(
            config,
            provider,
            discovery,
            catalog,
            now,
            findings=findings,
            errors=errors,
            progress=progress,
        )
    findings.sort(key=lambda f: (-(f.decision.wasted_usd or 0.0), f.instance.key))
    return CycleResult(generated_at=now, findings=tuple(findings), errors=tuple(errors))


def audit_units(
    config: Config,
    provider: Provider,
    units: Sequence[Unit],
    catalog: PriceCatalog,
    now: datetime,
) -> CycleResult:
    """``audit_cycle`` for some units of one provider: what ``guardian run`` does per unit."""
    findings: list[Finding] = []
    errors: list[UnitError] = []
    discovery = provider.discover(units)
    _measure(
        config, provider, discovery, catalog, now, findings=findings, errors=errors, progress=None
    )
    findings.sort(key=lambda f: (-(f.decision.wasted_usd or 0.0), f.instance.key))
    return CycleResult(generated_at=now, findings=tuple(findings), errors=tuple(errors))


def _measure(
    config: Config,
    provider: Provider,
    discovery: Discovery,
    catalog: PriceCatalog,
    now: datetime,
    *,
    findings: list[Finding],
    errors: list[UnitError],
    progress: Progress | None,
) -> None:
    start = now - config.cost.lookback
    errors.extend(discovery.errors)
    for error in discovery.errors:
        log.warning(
            "discovery_failed",
            provider=error.provider,
            account=error.account,
            region=error.region,
            operation=error.operation,
            error=error.message,
        )
    if not discovery.instances:
        return
    if progress:
        progress(f"{provider.name}: reading GPU metrics of {len(discovery.instances)} instances")
    waiting = {instance.key: instance for instance in discovery.instances}
    # Decide on each instance as its history arrives and keep only the finding: the fleet's
    # samples (120 a GPU for 2 h at 60 s) are never all in memory at once.
    for key, utilisation in provider.utilisation(discovery.instances, start, now):
        instance = waiting.pop(key, None)
        if instance is None:  # not asked for, or answered twice: the first answer stands
            log.warning("unexpected_metrics_entry", provider=provider.name, instance=key)
            continue
        findings.append(_finding(instance, utilisation, catalog, config, now))
    missing = GpuUtilisation(error="the provider returned no metrics entry for this instance")
    findings.extend(_finding(i, missing, catalog, config, now) for i in waiting.values())


def _finding(
    instance: GpuInstance,
    utilisation: GpuUtilisation,
    catalog: PriceCatalog,
    config: Config,
    now: datetime,
) -> Finding:
    price = assess(catalog, instance)
    decision = decide(instance, utilisation, price, config, now)
    spark = sparkline_values(utilisation.samples, now, utilisation.period_s)
    local_disk = utilisation.newest(InstanceMetric.LOCAL_DISK_USED_MIB)
    sizing = rightsize(
        instance,
        utilisation,
        price=price,
        decision=decision,
        catalog=catalog,
        config=config,
        now=now,
    )
    return Finding(
        instance,
        price,
        decision,
        spark,
        recommendation=sizing.recommendation,
        rightsize_note=sizing.note,
        local_disk_used=local_disk,
        metrics_failed=utilisation.fetch_failed,
    )

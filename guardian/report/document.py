"""Turn a cycle's findings into the contract's JSON, CSV rows, and totals. No rich here.

``findings_json`` is the exact shape DESIGN.md promises to other tools; unknown numbers are
``null``, never a made-up value.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from guardian.config import Config
from guardian.cycle import CycleResult
from guardian.model import Finding, Recommendation, Verdict
from guardian.policy import Plan, enforce_plan

__all__ = [
    "CSV_COLUMNS",
    "HOURS_PER_MONTH",
    "RECOMMENDATION_COLUMNS",
    "EnforceReach",
    "Totals",
    "enforce_reach",
    "finding_json",
    "finding_reasons",
    "findings_csv",
    "findings_json",
    "iso",
    "recommendation_cells",
    "recommendation_json",
    "totals",
]

HOURS_PER_MONTH = 730  # AWS and GCP both bill a month as 730 hours


@dataclass(frozen=True)
class Totals:
    instances: int
    hourly_burn_usd: float
    idle_burn_usd_per_hour: float
    projected_monthly_waste_usd: float
    by_verdict: dict[str, int]
    unpriced: int  # instances whose price is unknown: not in the sums
    rightsizing_saves_usd_month: float = 0.0  # every recommendation taken, at list prices
    recommendations: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "hourly_burn_usd": self.hourly_burn_usd,
            "idle_burn_usd_per_hour": self.idle_burn_usd_per_hour,
            "projected_monthly_waste_usd": self.projected_monthly_waste_usd,
            "by_verdict": self.by_verdict,
            "rightsizing_saves_usd_month": self.rightsizing_saves_usd_month,  # extension
        }


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def totals(findings: Sequence[Finding]) -> Totals:
    """Sums over priced instances; the idle burn is what idle instances cost each hour."""
    prices = [f.price.hourly_price for f in findings]
    idle = [
        f.price.hourly_price
        for f in findings
        if f.decision.verdict is Verdict.IDLE and f.price.hourly_price is not None
    ]
    counts = Counter(f.decision.verdict.value for f in findings)
    idle_burn = round(sum(idle), 2)
    sized = [f.recommendation for f in findings if f.recommendation is not None]
    return Totals(
        instances=len(findings),
        hourly_burn_usd=round(sum(p for p in prices if p is not None), 2),
        idle_burn_usd_per_hour=idle_burn,
        projected_monthly_waste_usd=round(idle_burn * HOURS_PER_MONTH, 2),
        by_verdict={v.value: counts.get(v.value, 0) for v in Verdict},
        unpriced=sum(1 for p in prices if p is None),
        rightsizing_saves_usd_month=round(sum(r.saves_usd_month for r in sized), 2),
        recommendations=len(sized),
    )


@dataclass(frozen=True)
class EnforceReach:
    """What ``mode: enforce`` would do with the idle instances, whatever the configured mode."""

    idle: int
    stop: int
    standby_stop: int
    alert: dict[str, int]  # alert-only, by the gate's category

    @property
    def alert_only(self) -> int:
        return sum(self.alert.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "idle": self.idle,
            "stop": self.stop,
            "standby+stop": self.standby_stop,
            "alert": self.alert_only,
            "alert_by_reason": dict(self.alert),
        }

    def sentence(self, what: str = "idle") -> str:
        """``12 idle: 3 would be stopped, 9 alert-only: 7 local disk not reported, 2 …``."""
        stopped = self.stop + self.standby_stop
        parts = [f"{stopped} would be stopped"]
        if self.standby_stop:
            parts[0] += f" ({self.standby_stop} after Standby in their Auto Scaling group)"
        if self.alert:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.alert.items())
            parts.append(f"{self.alert_only} alert-only: {reasons}")
        return f"{self.idle} {what}: " + ", ".join(parts)


def enforce_plans(result: CycleResult, config: Config) -> list[Plan | None]:
    """Per finding, what enforcement would do (None: not idle), judged at the audit's time."""
    return [enforce_plan(f, config, result.generated_at) for f in result.findings]


def enforce_reach(plans: Sequence[Plan | None]) -> EnforceReach:
    alert = Counter(plan.block.category for plan in plans if plan and plan.block)
    return EnforceReach(
        idle=sum(1 for plan in plans if plan is not None),
        stop=sum(1 for plan in plans if plan and plan.action == "stop"),
        standby_stop=sum(1 for plan in plans if plan and plan.action == "standby+stop"),
        alert=dict(alert.most_common()),
    )


def finding_reasons(finding: Finding) -> list[str]:
    """The decision's reasons, plus why the price is unknown unless a reason says so already
    (the policy quotes it when it could not judge underuse)."""
    reasons = list(finding.decision.reasons)
    missing_price = finding.price.reason
    if missing_price and not any(missing_price in reason for reason in reasons):
        reasons.append(missing_price)
    return reasons


def recommendation_json(recommendation: Recommendation | None) -> dict[str, Any] | None:
    """The contract's ``recommendation`` object; ``move``, ``not_measured``, ``window_hours``
    and ``move_to_cpu`` extend it."""
    if recommendation is None:
        return None
    cpu = recommendation.move_to_cpu
    return {
        "instance_type": recommendation.instance_type,
        "hourly_price": recommendation.hourly_price,
        "saves_usd_month": recommendation.saves_usd_month,
        "gpus_used": recommendation.gpus_used,
        "peak_gpu_mem_mib": recommendation.peak_gpu_mem_mib,
        "reason": recommendation.reason,
        "move": recommendation.move,
        "not_measured": list(recommendation.not_measured),
        "window_hours": recommendation.window_hours,
        "move_to_cpu": (
            {
                "instance_type": cpu.instance_type,
                "hourly_price": cpu.hourly_price,
                "saves_usd_month": cpu.saves_usd_month,
            }
            if cpu
            else None
        ),
    }


def finding_json(finding: Finding, plan: Plan | None = None) -> dict[str, Any]:
    """One finding as the contract has it; ``plan`` is what enforcement would do with it."""
    inst, price, decision = finding.instance, finding.price, finding.decision
    equivalent = price.cpu_equivalent
    owner = inst.managed_by
    return {
        "provider": inst.provider,
        "account": inst.account,
        "region": inst.region,
        "zone": inst.zone,
        "instance_id": inst.instance_id,
        "name": inst.name,
        "instance_type": inst.instance_type,
        "gpu_count": inst.gpu_count,
        "gpu_model": inst.gpu_model,
        "launch_time": iso(inst.launch_time),
        "lifecycle": inst.lifecycle.value,
        "owner": inst.owner,
        "tags": dict(inst.tags),
        "gpu_util_mean": decision.gpu_util_mean,
        "gpu_util_max": decision.gpu_util_max,
        "gpu_mem_used_max_mib": decision.gpu_mem_used_max_mib,
        "idle_minutes": decision.idle_minutes,
        "metric_coverage": decision.metric_coverage,
        "hourly_price": price.hourly_price,
        "price_source": price.price_source,
        "cpu_equivalent": (
            {"instance_type": equivalent.instance_type, "hourly_price": equivalent.hourly_price}
            if equivalent
            else {"instance_type": None, "hourly_price": None}
        ),
        "premium": price.premium,
        "required_speedup": decision.required_speedup,
        "verdict": decision.verdict.value,
        "reasons": finding_reasons(finding),
        "wasted_usd": decision.wasted_usd,
        "action": decision.action,
        "managed_by": (
            {"kind": owner.kind.value, "name": owner.name, "cluster": owner.cluster}
            if owner is not None
            else None
        ),
        "reserved": inst.reserved,
        "reservation": inst.reservation,
        "local_disk_used_mib": finding.local_disk_used[1] if finding.local_disk_used else None,
        # What mode: enforce would do with it, in any mode: stop | standby+stop | alert (why);
        # null when it is not idle. "enforce_reason" says why it is alert-only.
        "enforce": plan.label if plan is not None else None,
        "enforce_reason": plan.block.detail if plan is not None and plan.block else None,
        "recommendation": recommendation_json(finding.recommendation),
        "rightsize_note": finding.rightsize_note,  # extension: why there is no recommendation
    }


def effective_thresholds(config: Config) -> dict[str, Any]:
    """The part of the config that decided the verdicts, as the JSON output's ``config``."""
    data = config.model_dump(
        mode="json", include={"mode", "dry_run", "idle", "cost", "rightsize", "limits"}
    )
    data["metrics"] = {
        "aws": config.aws.metrics.model_dump(mode="json"),
        "gcp": config.gcp.metrics.model_dump(mode="json"),
    }
    return data


def findings_json(result: CycleResult, config: Config) -> dict[str, Any]:
    """The ``guardian audit --format json`` document. ``errors`` extends the contract."""
    plans = enforce_plans(result, config)
    return {
        "generated_at": iso(result.generated_at),
        "config": effective_thresholds(config),
        "findings": [finding_json(f, plan) for f, plan in zip(result.findings, plans, strict=True)],
        "totals": {
            **totals(result.findings).as_json(),
            "enforce": enforce_reach(plans).as_json(),
        },
        "errors": [
            {
                "provider": e.provider,
                "account": e.account,
                "region": e.region,
                "operation": e.operation,
                "message": e.message,
            }
            for e in result.errors
        ],
    }


# The recommendation's fields, flattened: ``recommendation_<field>``; empty when there is none.
RECOMMENDATION_FIELDS = (
    "instance_type",
    "hourly_price",
    "saves_usd_month",
    "gpus_used",
    "peak_gpu_mem_mib",
    "reason",
    "move",
)
RECOMMENDATION_COLUMNS = tuple(f"recommendation_{name}" for name in RECOMMENDATION_FIELDS)

CSV_COLUMNS = (
    "provider",
    "account",
    "region",
    "zone",
    "instance_id",
    "name",
    "instance_type",
    "gpu_count",
    "gpu_model",
    "launch_time",
    "lifecycle",
    "owner",
    "gpu_util_mean",
    "gpu_util_max",
    "gpu_mem_used_max_mib",
    "idle_minutes",
    "metric_coverage",
    "hourly_price",
    "price_source",
    "cpu_equivalent_type",
    "cpu_equivalent_hourly_price",
    "premium",
    "required_speedup",
    "verdict",
    "wasted_usd",
    "action",
    "managed_by",
    "reserved",
    "reservation",
    "local_disk_used_mib",
    "enforce",
    "reasons",
    *RECOMMENDATION_COLUMNS,
    "rightsize_note",
)


def recommendation_cells(recommendation: dict[str, Any] | None) -> dict[str, Any]:
    """A recommendation's JSON as the ``recommendation_*`` CSV cells (None when there is none)."""
    return {
        f"recommendation_{name}": (recommendation or {}).get(name) for name in RECOMMENDATION_FIELDS
    }


def findings_csv(result: CycleResult, config: Config | None = None) -> str:
    """One row per finding; empty cells for unknown numbers; reasons joined by ``; ``.
    ``managed_by`` is ``kind:name``; ``enforce`` needs the config (empty without it)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    plans = enforce_plans(result, config) if config else [None] * len(result.findings)
    for finding, plan in zip(result.findings, plans, strict=True):
        row = finding_json(finding, plan)
        owner = row["managed_by"]
        row["managed_by"] = f"{owner['kind']}:{owner['name']}" if owner else None
        row["cpu_equivalent_type"] = row["cpu_equivalent"]["instance_type"]
        row["cpu_equivalent_hourly_price"] = row["cpu_equivalent"]["hourly_price"]
        row["reasons"] = "; ".join(row["reasons"])
        row.update(recommendation_cells(row["recommendation"]))
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()

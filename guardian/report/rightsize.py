"""``guardian rightsize``'s output: just the recommendations, largest saving first, as JSON, CSV
or a table, and the instances that were not sized because someone protects them (or their
metrics could not tell), marked. rich is imported by the table only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guardian.cycle import CycleResult
from guardian.model import Finding
from guardian.report.document import (
    RECOMMENDATION_COLUMNS,
    iso,
    recommendation_cells,
    recommendation_json,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "RIGHTSIZE_CSV_COLUMNS",
    "print_rightsize",
    "recommended",
    "rightsize_csv",
    "rightsize_json",
    "without_recommendation",
]

_INSTANCE_FIELDS = (
    "provider",
    "account",
    "region",
    "instance_id",
    "name",
    "owner",
    "instance_type",
    "hourly_price",
    "verdict",
)
RIGHTSIZE_CSV_COLUMNS = (*_INSTANCE_FIELDS, *RECOMMENDATION_COLUMNS, "recommendation_move_to_cpu")


def _saving(finding: Finding) -> float:
    return finding.recommendation.saves_usd_month if finding.recommendation else 0.0


def recommended(findings: Sequence[Finding]) -> list[Finding]:
    """The findings with a recommendation, largest monthly saving first."""
    sized = [f for f in findings if f.recommendation is not None]
    return sorted(sized, key=lambda f: (-_saving(f), f.instance.key))


def without_recommendation(findings: Sequence[Finding]) -> list[Finding]:
    """The findings without a recommendation that say why (protected, unmeasured, nothing
    cheaper fits), by name."""
    marked = [f for f in findings if f.recommendation is None and f.rightsize_note]
    return sorted(marked, key=lambda f: (f.instance.name or "", f.instance.key))


def _instance(finding: Finding) -> dict[str, Any]:
    inst = finding.instance
    return {
        "provider": inst.provider,
        "account": inst.account,
        "region": inst.region,
        "instance_id": inst.instance_id,
        "name": inst.name,
        "owner": inst.owner,
        "instance_type": inst.instance_type,
        "hourly_price": finding.price.hourly_price,
        "verdict": finding.decision.verdict.value,
    }


def rightsize_json(result: CycleResult) -> dict[str, Any]:
    """``guardian rightsize --format json``: one object, recommendations largest saving first."""
    rows = recommended(result.findings)
    return {
        "generated_at": iso(result.generated_at),
        "recommendations": [
            {**_instance(f), "recommendation": recommendation_json(f.recommendation)} for f in rows
        ],
        "no_recommendation": [
            {**_instance(f), "note": f.rightsize_note}
            for f in without_recommendation(result.findings)
        ],
        "totals": {
            "recommendations": len(rows),
            "saves_usd_month": round(sum(map(_saving, rows)), 2),
        },
    }


def rightsize_csv(result: CycleResult) -> str:
    """One row per recommendation, largest saving first; empty cells for unknown numbers."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=RIGHTSIZE_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for finding in recommended(result.findings):
        cells = recommendation_cells(recommendation_json(finding.recommendation))
        row = {**_instance(finding), **cells}
        cpu = finding.recommendation.move_to_cpu if finding.recommendation else None
        row["recommendation_move_to_cpu"] = cpu.instance_type if cpu else None
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def print_rightsize(result: CycleResult, console: Console) -> None:
    """The recommendations as a table, the marked instances under it, and the total."""
    from rich import box
    from rich.table import Table

    from guardian.report.table import suggestion

    rows = recommended(result.findings)
    if rows:
        table = Table(box=box.SIMPLE_HEAVY, header_style="bold", expand=False)
        for header, justify in (
            ("Instance", "left"),
            ("Now", "left"),
            ("Suggest", "left"),
            ("GPUs used\npeak MiB", "right"),
            ("Why", "left"),
        ):
            table.add_column(header, justify=justify)  # type: ignore[arg-type]
        for finding in rows:
            rec = finding.recommendation
            assert rec is not None
            inst = finding.instance
            price = finding.price.hourly_price
            now = inst.instance_type + (f"\n${price:,.3f}/h" if price is not None else "")
            cpu = rec.move_to_cpu
            also = f"\nor CPU {cpu.instance_type} −${cpu.saves_usd_month:,.0f}/mo" if cpu else ""
            peak = "—" if rec.peak_gpu_mem_mib is None else f"{rec.peak_gpu_mem_mib:,.0f}"
            table.add_row(
                f"{inst.name or '—'}\n{inst.instance_id}",
                now,
                suggestion(rec) + also,
                f"{rec.gpus_used}/{inst.gpu_count}\n{peak}",
                rec.reason,
            )
        console.print(table)
    total = sum(map(_saving, rows))
    console.print(
        f"{len(rows)} recommendation{'s' if len(rows) != 1 else ''} · right-sizing would save "
        f"${total:,.0f}/month (list prices, 730 h a month)"
    )
    marked = without_recommendation(result.findings)
    if marked:
        console.print()
        console.print("No recommendation", style="bold")
        for finding in marked:
            label = finding.instance.name or finding.instance.instance_id
            console.print(f"{label}: {finding.rightsize_note}", highlight=False)
    console.print(
        "Advice only: guardian never resizes anything. Each reason says what was measured, "
        "over which window, and what was kept for want of a measurement.",
        style="dim",
    )

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


# The "Why" column joins the table when it can be at least this wide; else the reasons follow
# the table as a list, one per line (at 80 columns a reason in a cell wrapped over 17 lines).
_WHY_LEAST = 50


def print_rightsize(result: CycleResult, console: Console) -> None:
    """The recommendations as a table that fits the console (the instance id, the type now,
    the suggestion and the GPUs used whole; the reason in the table when there is room, else
    listed under it), the marked instances under it, and the total."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from guardian.report.table import fit_columns, suggestion

    rows = recommended(result.findings)
    if rows:
        cells = []
        for finding in rows:
            rec = finding.recommendation
            assert rec is not None
            inst = finding.instance
            price = finding.price.hourly_price
            now = inst.instance_type + (f"\n${price:,.3f}/h" if price is not None else "")
            cpu = rec.move_to_cpu
            also = f"\nor CPU {cpu.instance_type}\n−${cpu.saves_usd_month:,.0f}/mo" if cpu else ""
            peak = "—" if rec.peak_gpu_mem_mib is None else f"{rec.peak_gpu_mem_mib:,.0f}"
            cells.append((now, suggestion(rec) + also, f"{rec.gpus_used}/{inst.gpu_count}\n{peak}"))
        headers = ("Now", "Suggest", "GPUs used\npeak MiB")
        widths = [
            max(len(line) for text in (header, *(c[n] for c in cells)) for line in text.split("\n"))
            for n, header in enumerate(headers)
        ]
        ids = max([len("Instance")] + [len(f.instance.instance_id) for f in rows])
        names = max([ids] + [len(f.instance.name or "") for f in rows])
        used = 2 + ids + 3 + sum(w + 3 for w in widths)
        reasons = [f.recommendation.reason for f in rows if f.recommendation]
        shown, used = fit_columns(
            console.width, used, [("Why", max(map(len, reasons)), _WHY_LEAST)]
        )
        instance_width = max(ids, min(names, ids + max(0, console.width - used)))
        table = Table(box=box.SIMPLE_HEAVY, header_style="bold", expand=False)
        table.add_column("Instance", no_wrap=True, width=instance_width)
        for header, justify in zip(headers, ("left", "left", "right"), strict=True):
            table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        if "Why" in shown:
            table.add_column("Why")
        for finding, row in zip(rows, cells, strict=True):
            inst = finding.instance
            name = Text(inst.name or "—", no_wrap=True)
            name.truncate(instance_width, overflow="ellipsis")
            extra = (
                [finding.recommendation.reason] if "Why" in shown and finding.recommendation else []
            )
            table.add_row(Text("\n").join([name, Text(inst.instance_id)]), *row, *extra)
        console.print(table)
        if "Why" not in shown:
            console.print("Why", style="bold")
            for finding in rows:
                assert finding.recommendation is not None
                label = finding.instance.name or finding.instance.instance_id
                console.print(f"{label}: {finding.recommendation.reason}", highlight=False)
            console.print()
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

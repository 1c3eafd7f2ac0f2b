"""Rich rendering of an audit for people: the table, the sparkline and the totals line.

The table fits the width it is given. Six columns are essential and never cut: the instance
(its id whole; a long name is shortened), the verdict, GPU %, idle minutes, $/h and money
wasted. The others join, most useful first, while their narrowest form still fits — at 120
columns usually the type and the premium, at about 190 all of them — and ``--wide`` shows every
one whatever the width. Where the region or type is not in the table, the "Why" list says
it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guardian.cycle import CycleResult
from guardian.model import Finding, Verdict
from guardian.report.document import finding_reasons, totals

__all__ = ["VERDICT_STYLE", "audit_table", "fit_columns", "print_audit", "sparkline"]

VERDICT_STYLE = {
    Verdict.IDLE: "bold red",
    Verdict.UNDERUSED: "yellow",
    Verdict.BUSY: "green",
    Verdict.UNMEASURED: "magenta",
    Verdict.PROTECTED: "cyan",
}
_BARS = "▁▂▃▄▅▆▇█"
_CELL_SPACE = 3  # one space of padding each side, one between columns


def sparkline(values: Sequence[float | None]) -> str:
    """0–100 % as eight bar heights; a gap (no sample) is a middle dot, never a zero bar."""
    chars = []
    for value in values:
        if value is None:
            chars.append("·")
        else:
            clamped = min(100.0, max(0.0, value))
            chars.append(_BARS[min(len(_BARS) - 1, int(clamped / 100 * len(_BARS)))])
    return "".join(chars)


def _money(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"${value:,.{digits}f}"


def _num(value: float | None, fmt: str = "{:g}") -> str:
    return "—" if value is None else fmt.format(value)


def _type(finding: Finding) -> str:
    inst = finding.instance
    gpus = f"{inst.gpu_count}× {inst.gpu_model}" if inst.gpu_model else f"{inst.gpu_count} GPU"
    lifecycle = "" if inst.lifecycle.value == "on-demand" else f" ({inst.lifecycle.value})"
    return f"{inst.instance_type}{lifecycle}\n{gpus}"


def _util(finding: Finding) -> str:
    decision = finding.decision
    if decision.gpu_util_mean is None:
        return "—"
    return f"{decision.gpu_util_mean:.0f}/{decision.gpu_util_max or 0:.0f}"


def _equivalent(finding: Finding) -> str:
    cpu = finding.price.cpu_equivalent
    return f"{cpu.instance_type}\n{_money(cpu.hourly_price, 3)}" if cpu else "—"


@dataclass(frozen=True)
class _Column:
    header: str
    justify: Literal["left", "right"]
    cell: Callable[[Finding], str | Text]
    essential: bool = False  # never cut, at any width


_INSTANCE = "Instance"
# In the order they appear; essential columns first in priority, then the others by usefulness.
_COLUMNS: tuple[_Column, ...] = (
    _Column(_INSTANCE, "left", lambda f: f.instance.instance_id, essential=True),
    _Column("Region\naccount", "left", lambda f: f"{f.instance.region}\n{f.instance.account}"),
    _Column("Type\nGPUs", "left", _type),
    _Column(
        "Verdict",
        "left",
        lambda f: Text(f.decision.verdict.value, style=VERDICT_STYLE[f.decision.verdict]),
        essential=True,
    ),
    _Column("GPU %\nmean/max", "right", _util, essential=True),
    _Column(
        "Last hour\n(2 min per mark)",
        "left",
        lambda f: sparkline(f.sparkline) if f.sparkline else "",
    ),
    _Column(
        "Idle\nmin", "right", lambda f: _num(f.decision.idle_minutes, "{:.0f}"), essential=True
    ),
    _Column("$/h", "right", lambda f: _money(f.price.hourly_price, 3), essential=True),
    _Column("CPU\nequivalent", "left", _equivalent),
    _Column("Premium", "right", lambda f: _num(f.price.premium, "{:.1f}×")),
    _Column("Needs", "right", lambda f: _num(f.decision.required_speedup, "{:.1f}×")),
    _Column("Wasted", "right", lambda f: _money(f.decision.wasted_usd), essential=True),
)
# Which optional columns join first as the width grows.
_PRIORITY: tuple[str, ...] = (
    "Type\nGPUs",
    "Premium",
    "Needs",
    "Region\naccount",
    "CPU\nequivalent",
    "Last hour\n(2 min per mark)",
)


def _width(text: str | Text) -> int:
    return max((len(line) for line in str(text).splitlines()), default=0)


def _narrowest(text: str | Text) -> int:
    """The narrowest a cell can be folded to: its longest word."""
    return max((len(word) for word in str(text).split()), default=0)


def fit_columns(
    width: int, used: int, optional: Sequence[tuple[str, int, int]], *, wide: bool = False
) -> tuple[set[str], int]:
    """Which optional columns join a table whose essential columns take ``used`` characters:
    in the order given, each ``(name, natural, least)`` at its natural width while that fits,
    else folded to its least while that fits (every one with ``wide``). Returns the names that
    join and the width then used. Widths count the cell's content only."""
    shown: set[str] = set()
    for name, natural, least in optional:
        for cost in (natural + _CELL_SPACE, least + _CELL_SPACE):
            if wide or used + cost <= width:
                shown.add(name)
                used += cost
                break
    return shown, used


def _choose(findings: Sequence[Finding], width: int, wide: bool) -> tuple[list[_Column], int, int]:
    """The columns that fit ``width`` (every one with ``wide``), the width the instance column
    may take (its id whole, its name shortened to fit) and the table's width. The instance's
    name gets what the other columns leave."""
    natural = {
        c.header: max([_width(c.header)] + [_width(c.cell(f)) for f in findings]) for c in _COLUMNS
    }
    ids = max([len(_INSTANCE)] + [len(f.instance.instance_id) for f in findings])
    names = max([ids] + [len(f.instance.name or "") for f in findings])
    used = 2 + sum(natural[c.header] + _CELL_SPACE for c in _COLUMNS if c.essential)
    used += ids - natural[_INSTANCE]
    optional = [
        (
            header,
            natural[header],
            max([_narrowest(header)] + [_narrowest(column.cell(f)) for f in findings]),
        )
        for header in _PRIORITY
        for column in _COLUMNS
        if column.header == header
    ]
    shown, used = fit_columns(width, used, optional, wide=wide)
    shown |= {c.header for c in _COLUMNS if c.essential}
    instance_width = names if wide else max(ids, min(names, ids + max(0, width - used)))
    used += instance_width - ids
    return [c for c in _COLUMNS if c.header in shown], instance_width, used


def audit_table(result: CycleResult, width: int = 200, *, wide: bool = False) -> Table:
    """The findings as a table for ``width`` columns (all columns with ``wide``)."""
    columns, instance_width, _ = _choose(result.findings, width, wide)
    table = Table(box=box.SIMPLE_HEAVY, header_style="bold", expand=False)
    for column in columns:
        if column.header == _INSTANCE:
            table.add_column(_INSTANCE, no_wrap=True, width=instance_width)
        elif column.essential:
            table.add_column(column.header, justify=column.justify, no_wrap=True)
        else:
            table.add_column(column.header, justify=column.justify, overflow="fold")
    for finding in result.findings:
        cells: list[str | Text] = []
        for column in columns:
            if column.header == _INSTANCE:
                name = Text(finding.instance.name or "—", overflow="ellipsis", no_wrap=True)
                name.truncate(instance_width, overflow="ellipsis")
                cells.append(Text("\n").join([name, Text(finding.instance.instance_id)]))
            else:
                cells.append(column.cell(finding))
        table.add_row(*cells)
    return table


def reasons_lines(result: CycleResult, *, where: bool = False) -> list[Text]:
    """Why each instance that is not simply busy got its verdict, one line each; with
    ``where``, each line also names its type and region (when the table does not)."""
    lines = []
    for finding in result.findings:
        decision, price = finding.decision, finding.price
        if decision.verdict is Verdict.BUSY and not price.reason:
            continue
        reasons = finding_reasons(finding)
        inst = finding.instance
        label = inst.name or inst.instance_id
        if where:
            label += f" ({inst.instance_type}, {inst.region})"
        line = Text(f"{label}: ", style=VERDICT_STYLE[decision.verdict])
        line.append("; ".join(reasons) or decision.verdict.value)
        lines.append(line)
    return lines


def totals_line(result: CycleResult) -> str:
    total = totals(result.findings)
    counts = ", ".join(f"{n} {verdict}" for verdict, n in total.by_verdict.items() if n)
    unpriced = f" ({total.unpriced} unpriced, not in the sums)" if total.unpriced else ""
    return (
        f"{total.instances} GPU instances{unpriced} · burn {_money(total.hourly_burn_usd)}/h · "
        f"idle burn {_money(total.idle_burn_usd_per_hour)}/h · projected monthly waste "
        f"{_money(total.projected_monthly_waste_usd, 0)} · {counts or 'nothing found'}"
    )


def print_audit(result: CycleResult, console: Console, *, wide: bool = False) -> None:
    """The table at the console's width (``wide``: every column, however wide), the totals,
    the reasons and a note on the columns left out."""
    hidden: list[str] = []
    if result.findings:
        table = audit_table(result, console.width, wide=wide)
        shown = {column.header for column in table.columns}
        hidden = [c.header.split("\n")[0] for c in _COLUMNS if c.header not in shown]
        width = console.width
        if wide:  # as wide as the columns need, whatever the terminal: for a pager or a file
            console.width = max(width, _choose(result.findings, width, True)[2])
        try:
            console.print(table)
        finally:
            console.width = width
    console.print(totals_line(result))
    lines = reasons_lines(result, where=bool({"Region", "Type"} & set(hidden)) if hidden else False)
    if lines:
        console.print()
        console.print("Why", style="bold")
        for line in lines:
            console.print(line)
    if hidden:
        console.print(f"Not shown at this width: {', '.join(hidden)} (--wide shows them).")
    if result.findings and "Needs" not in hidden:
        console.print(
            "Needs = how many times faster than its CPU equivalent the GPU must be at its "
            "measured utilisation to pay off (rule of thumb: 2–3× premium at full use).",
            style="dim",
        )

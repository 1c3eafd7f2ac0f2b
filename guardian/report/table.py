"""Rich rendering of an audit for people: the table, the sparkline and the lines under it.

The table fits the width it is given. Six columns are essential and never cut: the instance
(its id whole; a long name is shortened), the verdict, GPU %, idle minutes, $/h and money
wasted. The others join, most useful first, while their narrowest form still fits — at 120
columns usually the type (with its owner), what enforce would do and the premium, at about 220
all of them — and ``--wide`` shows every one whatever the width. What a hidden column said is
not lost: the "Why" list gives the type, region and owner, and what enforce would do, of each
instance it names; the totals give what right-sizing would save and the "Suggest" list each
recommendation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guardian.config import Config
from guardian.cycle import CycleResult
from guardian.model import Finding, GpuInstance, Recommendation, Verdict
from guardian.policy import Plan, controller_label
from guardian.report.document import enforce_plans, enforce_reach, finding_reasons, totals

__all__ = [
    "VERDICT_STYLE",
    "audit_table",
    "fit_columns",
    "print_audit",
    "sparkline",
    "suggestion",
]

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


def _owner(inst: GpuInstance) -> str:
    """Who owns it, or the reserved capacity it runs in; empty for neither."""
    if inst.managed_by is not None:
        return f"{controller_label(inst.managed_by.kind)} {inst.managed_by.name}"
    if inst.reservation is not None:
        return f"reserved {inst.reservation}"
    return ""


def suggestion(recommendation: Recommendation | None) -> str:
    """The Suggest cell: the cheaper type and what it saves a month; — when there is none."""
    if recommendation is None:
        return "—"
    prefix = "CPU " if recommendation.move == "cpu" else ""
    return (
        f"{prefix}{recommendation.instance_type}\n−{_money(recommendation.saves_usd_month, 0)}/mo"
    )


@dataclass(frozen=True)
class _Row:
    finding: Finding
    plan: Plan | None  # what mode: enforce would do (None: not idle, or no config given)


def _type(row: _Row) -> str:
    """The type, its GPUs and, on a third line, its owner (issue 11)."""
    inst = row.finding.instance
    gpus = f"{inst.gpu_count}× {inst.gpu_model}" if inst.gpu_model else f"{inst.gpu_count} GPU"
    lifecycle = "" if inst.lifecycle.value == "on-demand" else f" ({inst.lifecycle.value})"
    owner = _owner(inst)
    return f"{inst.instance_type}{lifecycle}\n{gpus}" + (f"\n{owner}" if owner else "")


def _util(row: _Row) -> str:
    decision = row.finding.decision
    if decision.gpu_util_mean is None:
        return "—"
    return f"{decision.gpu_util_mean:.0f}/{decision.gpu_util_max or 0:.0f}"


def _equivalent(row: _Row) -> str:
    cpu = row.finding.price.cpu_equivalent
    return f"{cpu.instance_type}\n{_money(cpu.hourly_price, 3)}" if cpu else "—"


def _enforced(row: _Row) -> Text:
    plan = row.plan
    if plan is None:
        return Text("")
    if plan.block is None:
        return Text(plan.action, style="bold red")
    return Text(f"alert\n{plan.block.category}", style="yellow")


@dataclass(frozen=True)
class _Column:
    header: str
    justify: Literal["left", "right"]
    cell: Callable[[_Row], str | Text]
    essential: bool = False  # never cut, at any width

    @property
    def label(self) -> str:
        """How the "Not shown" note names it."""
        return (
            self.header.replace("\n", " ")
            if self.header == _ENFORCED
            else self.header.split("\n")[0]
        )


_INSTANCE = "Instance"
_TYPE = "Type\nGPUs"
_ENFORCED = "If\nenforced"
_SUGGEST = "Suggest"
# In the order they appear.
_COLUMNS: tuple[_Column, ...] = (
    _Column(_INSTANCE, "left", lambda r: r.finding.instance.instance_id, essential=True),
    _Column(
        "Region\naccount",
        "left",
        lambda r: f"{r.finding.instance.region}\n{r.finding.instance.account}",
    ),
    _Column(_TYPE, "left", _type),
    _Column(
        "Verdict",
        "left",
        lambda r: Text(
            r.finding.decision.verdict.value, style=VERDICT_STYLE[r.finding.decision.verdict]
        ),
        essential=True,
    ),
    _Column("GPU %\nmean/max", "right", _util, essential=True),
    _Column(
        "Last hour\n(2 min per mark)",
        "left",
        lambda r: sparkline(r.finding.sparkline) if r.finding.sparkline else "",
    ),
    _Column(
        "Idle\nmin",
        "right",
        lambda r: _num(r.finding.decision.idle_minutes, "{:.0f}"),
        essential=True,
    ),
    _Column("$/h", "right", lambda r: _money(r.finding.price.hourly_price, 3), essential=True),
    _Column("CPU\nequivalent", "left", _equivalent),
    _Column("Premium", "right", lambda r: _num(r.finding.price.premium, "{:.1f}×")),
    _Column("Needs", "right", lambda r: _num(r.finding.decision.required_speedup, "{:.1f}×")),
    _Column("Wasted", "right", lambda r: _money(r.finding.decision.wasted_usd), essential=True),
    _Column(_SUGGEST, "left", lambda r: suggestion(r.finding.recommendation)),
    _Column(_ENFORCED, "left", _enforced),
)
# Which optional columns join first as the width grows. What enforce would do comes early (the
# footer only counts it); the suggestion comes last, since the Suggest list under the table
# gives each one whole, with its reason.
_PRIORITY: tuple[str, ...] = (
    _TYPE,
    _ENFORCED,
    "Premium",
    "Needs",
    "Region\naccount",
    "CPU\nequivalent",
    "Last hour\n(2 min per mark)",
    _SUGGEST,
)


def _width(text: str | Text) -> int:
    return max((len(line) for line in str(text).splitlines()), default=0)


def _narrowest(text: str | Text) -> int:
    """The narrowest a cell can be folded to: its longest word."""
    return max((len(word) for word in str(text).split()), default=0)


def _least(column: _Column, row: _Row) -> int:
    """The narrowest a column's cell may be: its longest word, except where folding would
    scatter it over many lines: "If enforced" stays whole, and the type keeps its type and GPU
    lines (only the owner's name may fold)."""
    cell = column.cell(row)
    if column.header == _ENFORCED:
        return _width(cell)
    if column.header == _TYPE:
        return max([_narrowest(cell)] + [len(line) for line in str(cell).splitlines()[:2]])
    return _narrowest(cell)


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


def _available(rows: Sequence[_Row], with_plans: bool) -> list[_Column]:
    """The columns this audit can fill: "If enforced" needs the config; "Suggest" is left out
    when nothing has a recommendation (the Suggest list and the totals say so)."""
    suggest = any(r.finding.recommendation is not None for r in rows)
    return [
        c
        for c in _COLUMNS
        if (c.header != _ENFORCED or with_plans) and (c.header != _SUGGEST or suggest)
    ]


def _choose(
    rows: Sequence[_Row], columns: Sequence[_Column], width: int, wide: bool
) -> tuple[list[_Column], int, int]:
    """The columns that fit ``width`` (every one with ``wide``), the width the instance column
    may take (its id whole, its name shortened to fit) and the table's width. The instance's
    name gets what the other columns leave."""
    natural = {
        c.header: max([_width(c.header)] + [_width(c.cell(r)) for r in rows]) for c in columns
    }
    ids = max([len(_INSTANCE)] + [len(r.finding.instance.instance_id) for r in rows])
    names = max([ids] + [len(r.finding.instance.name or "") for r in rows])
    used = 2 + sum(natural[c.header] + _CELL_SPACE for c in columns if c.essential)
    used += ids - natural[_INSTANCE]
    by_header = {c.header: c for c in columns}
    optional = [
        (
            header,
            natural[header],
            max([_narrowest(header)] + [_narrowest(by_header[header].cell(r)) for r in rows]),
        )
        for header in _PRIORITY
        if header in by_header
    ]
    shown, used = fit_columns(width, used, optional, wide=wide)
    shown |= {c.header for c in columns if c.essential}
    instance_width = names if wide else max(ids, min(names, ids + max(0, width - used)))
    used += instance_width - ids
    return [c for c in columns if c.header in shown], instance_width, used


def _rows(result: CycleResult, config: Config | None) -> list[_Row]:
    plans = enforce_plans(result, config) if config is not None else None
    return [
        _Row(finding, plans[number] if plans is not None else None)
        for number, finding in enumerate(result.findings)
    ]


def audit_table(
    result: CycleResult, config: Config | None = None, width: int = 200, *, wide: bool = False
) -> Table:
    """The findings as a table for ``width`` columns (all columns with ``wide``); with
    ``config``, an "If enforced" column says what mode: enforce would do."""
    rows = _rows(result, config)
    columns = _available(rows, config is not None)
    chosen, instance_width, _ = _choose(rows, columns, width, wide)
    return _table(rows, chosen, instance_width)


def _table(rows: Sequence[_Row], columns: Sequence[_Column], instance_width: int) -> Table:
    table = Table(box=box.SIMPLE_HEAVY, header_style="bold", expand=False)
    for column in columns:
        if column.header == _INSTANCE:
            table.add_column(_INSTANCE, no_wrap=True, width=instance_width)
        elif column.essential:
            table.add_column(column.header, justify=column.justify, no_wrap=True)
        else:
            table.add_column(column.header, justify=column.justify, overflow="fold")
    for row in rows:
        cells: list[str | Text] = []
        for column in columns:
            if column.header == _INSTANCE:
                inst = row.finding.instance
                name = Text(inst.name or "—", overflow="ellipsis", no_wrap=True)
                name.truncate(instance_width, overflow="ellipsis")
                cells.append(Text("\n").join([name, Text(inst.instance_id)]))
            else:
                cells.append(column.cell(row))
        table.add_row(*cells)
    return table


def reasons_lines(
    result: CycleResult,
    *,
    where: bool = False,
    plans: Sequence[Plan | None] | None = None,
) -> list[Text]:
    """Why each instance that is not simply busy got its verdict, one line each; with
    ``where``, each line also names its type, region and owner (when the table does not);
    with ``plans`` (the "If enforced" column is hidden), what enforce would do."""
    lines = []
    for number, finding in enumerate(result.findings):
        decision, price = finding.decision, finding.price
        if decision.verdict is Verdict.BUSY and not price.reason:
            continue
        reasons = finding_reasons(finding)
        inst = finding.instance
        label = inst.name or inst.instance_id
        if where:
            place = [inst.instance_type, inst.region, _owner(inst)]
            label += f" ({', '.join(p for p in place if p)})"
        line = Text(f"{label}: ", style=VERDICT_STYLE[decision.verdict])
        line.append("; ".join(reasons) or decision.verdict.value)
        plan = plans[number] if plans is not None else None
        if plan is not None:
            line.append(f"; if enforced: {plan.label}")
        lines.append(line)
    return lines


def totals_line(result: CycleResult) -> str:
    total = totals(result.findings)
    counts = ", ".join(f"{n} {verdict}" for verdict, n in total.by_verdict.items() if n)
    unpriced = f" ({total.unpriced} unpriced, not in the sums)" if total.unpriced else ""
    line = (
        f"{total.instances} GPU instances{unpriced} · burn {_money(total.hourly_burn_usd)}/h · "
        f"idle burn {_money(total.idle_burn_usd_per_hour)}/h · projected monthly waste "
        f"{_money(total.projected_monthly_waste_usd, 0)} · {counts or 'nothing found'}"
    )
    if total.recommendations:
        line += f" · right-sizing would save {_money(total.rightsizing_saves_usd_month, 0)}/month"
    return line


def suggest_lines(result: CycleResult) -> list[Text]:
    """Each recommendation's reason, largest saving first."""
    sized = [f for f in result.findings if f.recommendation is not None]
    sized.sort(key=lambda f: -(f.recommendation.saves_usd_month if f.recommendation else 0.0))
    lines = []
    for finding in sized:
        assert finding.recommendation is not None
        label = finding.instance.name or finding.instance.instance_id
        line = Text(f"{label}: ", style="bold")
        rec = finding.recommendation
        line.append(suggestion(rec).replace("\n", " "))
        if rec.move_to_cpu:
            cpu = rec.move_to_cpu
            line.append(f" (or CPU {cpu.instance_type} −{_money(cpu.saves_usd_month, 0)}/mo)")
        line.append(" — ")
        line.append(finding.recommendation.reason)
        lines.append(line)
    return lines


def enforce_line(result: CycleResult, config: Config) -> str | None:
    """``If enforced, 12 idle: 3 would be stopped, 9 alert-only: 7 local disk not reported…``"""
    reach = enforce_reach(enforce_plans(result, config))
    return f"If enforced, {reach.sentence()}" if reach.idle else None


def _print_table(
    console: Console, rows: Sequence[_Row], columns: list[_Column], wide: bool
) -> set[str]:
    """The table at the console's width (``wide``: as wide as every column needs, whatever the
    terminal: for a pager or a file); returns the headers shown."""
    chosen, instance_width, used = _choose(rows, columns, console.width, wide)
    width = console.width
    if wide:
        console.width = max(width, used)
    try:
        console.print(_table(rows, chosen, instance_width))
    finally:
        console.width = width
    return {c.header for c in chosen}


def print_audit(
    result: CycleResult, console: Console, config: Config | None = None, *, wide: bool = False
) -> None:
    """The table at the console's width (``wide``: every column, however wide), the totals,
    what enforce would do (with ``config``), the reasons, the suggestions and a note on the
    columns left out."""
    rows = _rows(result, config)
    columns = _available(rows, config is not None)
    hidden: list[_Column] = []
    if rows:
        shown = _print_table(console, rows, columns, wide)
        hidden = [c for c in columns if c.header not in shown]
    console.print(totals_line(result))
    enforced = enforce_line(result, config) if config is not None else None
    if enforced:
        console.print(enforced)
    hidden_headers = {c.header for c in hidden}
    where = bool({"Region\naccount", _TYPE} & hidden_headers)
    plans = [r.plan for r in rows] if _ENFORCED in hidden_headers else None
    lines = reasons_lines(result, where=where, plans=plans)
    if lines:
        console.print()
        console.print("Why", style="bold")
        for line in lines:
            console.print(line)
    suggestions = suggest_lines(result)
    if suggestions:
        console.print()
        console.print("Suggest (advice only: nothing is changed)", style="bold")
        for line in suggestions:
            console.print(line)
    if hidden:
        labels = ", ".join(c.label for c in hidden)
        console.print(f"Not shown at this width: {labels} (--wide shows them).")
    if rows and "Needs" not in hidden_headers:
        console.print(
            "Needs = how many times faster than its CPU equivalent the GPU must be at its "
            "measured utilisation to pay off (rule of thumb: 2–3× premium at full use).",
            style="dim",
        )

"""Rich rendering of an audit for people: the table, the sparkline and the totals line."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guardian.config import Config
from guardian.cycle import CycleResult
from guardian.model import Finding, GpuInstance, Recommendation, Verdict
from guardian.policy import Plan, controller_label
from guardian.report.document import enforce_plans, enforce_reach, finding_reasons, totals

__all__ = ["VERDICT_STYLE", "audit_table", "print_audit", "sparkline", "suggestion"]

VERDICT_STYLE = {
    Verdict.IDLE: "bold red",
    Verdict.UNDERUSED: "yellow",
    Verdict.BUSY: "green",
    Verdict.UNMEASURED: "magenta",
    Verdict.PROTECTED: "cyan",
}
_BARS = "▁▂▃▄▅▆▇█"


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
    """A third line under the type: who owns it, or the reserved capacity it runs in."""
    if inst.managed_by is not None:
        return f"\n{controller_label(inst.managed_by.kind)} {inst.managed_by.name}"
    if inst.reservation is not None:
        return f"\nreserved {inst.reservation}"
    return ""


def _enforce_cell(plan: Plan | None) -> Text:
    if plan is None:
        return Text("")
    if plan.block is None:
        return Text(plan.action, style="bold red")
    return Text(f"alert\n{plan.block.category}", style="yellow")


def _row(finding: Finding) -> list[str | Text]:
    inst, price, decision = finding.instance, finding.price, finding.decision
    gpus = f"{inst.gpu_count}× {inst.gpu_model}" if inst.gpu_model else f"{inst.gpu_count} GPU"
    lifecycle = "" if inst.lifecycle.value == "on-demand" else f" ({inst.lifecycle.value})"
    equivalent = (
        f"{price.cpu_equivalent.instance_type}\n{_money(price.cpu_equivalent.hourly_price, 3)}"
        if price.cpu_equivalent
        else "—"
    )
    util = (
        "—"
        if decision.gpu_util_mean is None
        else f"{decision.gpu_util_mean:.0f}/{decision.gpu_util_max or 0:.0f}"
    )
    return [
        Text(f"{inst.name or '—'}\n{inst.instance_id}"),
        f"{inst.region}\n{inst.account}",
        f"{inst.instance_type}{lifecycle}\n{gpus}{_owner(inst)}",
        Text(decision.verdict.value, style=VERDICT_STYLE[decision.verdict]),
        util,
        sparkline(finding.sparkline) if finding.sparkline else "",
        _num(decision.idle_minutes, "{:.0f}"),
        _money(price.hourly_price, 3),
        equivalent,
        _num(price.premium, "{:.1f}×"),
        _num(decision.required_speedup, "{:.1f}×"),
        _money(decision.wasted_usd),
        suggestion(finding.recommendation),
    ]


def suggestion(recommendation: Recommendation | None) -> str:
    """The Suggest cell: the cheaper type and what it saves a month; — when there is none."""
    if recommendation is None:
        return "—"
    prefix = "CPU " if recommendation.move == "cpu" else ""
    return (
        f"{prefix}{recommendation.instance_type}\n−{_money(recommendation.saves_usd_month, 0)}/mo"
    )


_COLUMNS = (
    ("Instance", "left"),
    ("Region\naccount", "left"),
    ("Type\nGPUs", "left"),
    ("Verdict", "left"),
    ("GPU %\nmean/max", "right"),
    ("Last hour\n(2 min per mark)", "left"),
    ("Idle\nmin", "right"),
    ("$/h", "right"),
    ("CPU\nequivalent", "left"),
    ("Premium", "right"),
    ("Needs", "right"),
    ("Wasted", "right"),
    ("Suggest", "left"),
)


def audit_table(result: CycleResult, config: Config | None = None) -> Table:
    """With ``config``, an "If enforced" column says what mode: enforce would do."""
    table = Table(box=box.SIMPLE_HEAVY, header_style="bold", expand=False)
    for header, justify in _COLUMNS:
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    plans = enforce_plans(result, config) if config is not None else None
    if plans is not None:
        table.add_column("If\nenforced", justify="left", no_wrap=True)
    for number, finding in enumerate(result.findings):
        cells = _row(finding)
        if plans is not None:
            cells.append(_enforce_cell(plans[number]))
        table.add_row(*cells)
    return table


def reasons_lines(result: CycleResult) -> list[Text]:
    """Why each instance that is not simply busy got its verdict, one line each."""
    lines = []
    for finding in result.findings:
        decision, price = finding.decision, finding.price
        if decision.verdict is Verdict.BUSY and not price.reason:
            continue
        reasons = finding_reasons(finding)
        label = finding.instance.name or finding.instance.instance_id
        line = Text(f"{label}: ", style=VERDICT_STYLE[decision.verdict])
        line.append("; ".join(reasons) or decision.verdict.value)
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


def print_audit(result: CycleResult, console: Console, config: Config | None = None) -> None:
    if result.findings:
        console.print(audit_table(result, config))
    console.print(totals_line(result))
    enforced = enforce_line(result, config) if config is not None else None
    if enforced:
        console.print(enforced)
    lines = reasons_lines(result)
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
    console.print(
        "Needs = how many times faster than its CPU equivalent the GPU must be at its measured "
        "utilisation to pay off (rule of thumb: 2–3× premium at full use).",
        style="dim",
    )

"""Alert text: a tiny document model, rendered and escaped for each channel's markup.

Tag values (names, owners, even ids) come from whoever can tag an instance, so every such value
is a ``value`` span: control characters removed, ``<``/``>`` swapped for look-alikes and ``@``
split with a zero-width space, which defeats ``<!here>``, ``<@U123>``, ``@channel``,
``@everyone`` and HTML tags on every channel; then the channel's own escaping applies
(Markdown backslashes, HTML entities; apprise itself entity-escapes Slack's ``& < >``).

Messages are stored in the outbox as JSON (``Message.as_json``) and rendered at delivery, so a
retried message reads exactly like the first attempt.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from guardian.model import Finding, GpuInstance
from guardian.policy import NOTEBOOK_ADVICE, format_keep_until

__all__ = [
    "DigestSummary",
    "Line",
    "Message",
    "Saving",
    "Severity",
    "Span",
    "Style",
    "b",
    "breaker_message",
    "code",
    "digest_message",
    "neutralize",
    "not_stopped_message",
    "reconciled_message",
    "render",
    "resumed_message",
    "stop_failed_message",
    "stopped_message",
    "t",
    "top_savings",
    "v",
    "warning_message",
]

Severity = Literal["info", "success", "warning", "failure"]  # apprise NotifyType values
Style = Literal["text", "markdown", "teams", "slack", "html"]
SpanKind = Literal["plain", "value", "strong", "code"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]+")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_~|\[\](){}<>#!])")
_MAX_VALUE = 200


@dataclass(frozen=True)
class Span:
    text: str
    kind: SpanKind = "plain"


Line = tuple[Span, ...]


def t(text: str) -> Span:
    """Our own template text."""
    return Span(text)


def v(value: object) -> Span:
    """A value from outside (tags, names, ids, error text): always neutralised."""
    return Span(str(value), "value")


def b(text: str) -> Span:
    return Span(text, "strong")


def code(text: str) -> Span:
    """Something to copy (a tag, a command); its parts from outside must already be safe."""
    return Span(text, "code")


def neutralize(value: str) -> str:
    """Make an untrusted string inert in chat and mail: no mentions, no tags, one line."""
    text = _CONTROL.sub(" ", value).strip()
    text = text.replace("<", "‹").replace(">", "›").replace("@", "@\u200b")
    if len(text) > _MAX_VALUE:
        text = text[: _MAX_VALUE - 1] + "…"
    return text


@dataclass(frozen=True)
class Message:
    kind: str  # warning resumed stopped stop_failed not_stopped breaker reconciled digest
    severity: Severity
    title: Line
    lines: tuple[Line, ...]

    def as_json(self) -> dict[str, Any]:
        def spans(line: Line) -> list[list[str]]:
            return [[span.text, span.kind] for span in line]

        return {
            "kind": self.kind,
            "severity": self.severity,
            "title": spans(self.title),
            "lines": [spans(line) for line in self.lines],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Message:
        def line(raw: Iterable[Sequence[str]]) -> Line:
            return tuple(Span(text, kind) for text, kind in raw)  # type: ignore[arg-type]

        return cls(
            kind=str(data["kind"]),
            severity=data["severity"],
            title=line(data["title"]),
            lines=tuple(line(raw) for raw in data["lines"]),
        )

    def plain_title(self) -> str:
        return _render_line(self.title, "text")


def _escape(text: str, style: Style) -> str:
    if style == "html":
        return html.escape(text, quote=False)
    if style in ("markdown", "teams"):
        return _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return text  # text: no markup; slack: apprise entity-escapes & < > itself


def _render_span(span: Span, style: Style) -> str:
    text = neutralize(span.text) if span.kind == "value" else span.text
    if span.kind == "code":
        # Code spans cannot be escaped from inside: strip what would close or break them.
        text = neutralize(text).replace("`", "'")
        if style == "html":
            return f"<code>{html.escape(text, quote=False)}</code>"
        return text if style == "text" else f"`{text}`"
    escaped = _escape(text, style)
    if span.kind == "strong":
        # Emphasis markers must hug the text: "*Cost: *" is not bold in Slack or CommonMark.
        core = escaped.rstrip()
        trail = escaped[len(core) :]
        if style == "html":
            return f"<b>{core}</b>{trail}"
        if style == "slack":
            return f"*{core}*{trail}"
        if style in ("markdown", "teams"):
            return f"**{core}**{trail}"
    return escaped


def _render_line(line: Line, style: Style) -> str:
    return "".join(_render_span(span, style) for span in line)


_JOINERS: dict[Style, str] = {
    "text": "\n",
    "markdown": "\n",
    "teams": "\n\n",  # Teams' Markdown joins single newlines into one paragraph
    "slack": "\n",
    "html": "<br>\n",
}


def render(message: Message, style: Style) -> tuple[str, str]:
    """(title, body) for one channel. Titles are always plain text (mail subjects, headers)."""
    body = _JOINERS[style].join(_render_line(line, style) for line in message.lines)
    return message.plain_title(), body


# -- the messages guardian sends -----------------------------------------------------------------


def _money(amount: float | None, suffix: str = "") -> str:
    return "unknown" if amount is None else f"${amount:,.2f}{suffix}"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _who(instance: GpuInstance) -> Line:
    if instance.name:
        return (v(instance.name), t(" ("), v(instance.instance_id), t(")"))
    return (v(instance.instance_id),)


def _title(prefix: str, instance: GpuInstance, suffix: str = "") -> Line:
    return (t(prefix), *_who(instance), t(suffix))


def _facts(finding: Finding) -> list[Line]:
    inst, price, decision = finding.instance, finding.price, finding.decision
    gpus = f"{inst.gpu_count}× {inst.gpu_model}" if inst.gpu_model else f"{inst.gpu_count} GPU"
    lines: list[Line] = [
        (b("Instance: "), *_who(inst), t(" — "), v(inst.instance_type), t(f", {gpus}")),
        (
            b("Where: "),
            t(f"{inst.provider} account "),
            v(inst.account),
            t(", "),
            v(inst.region),
            t(" ("),
            v(inst.zone),
            t(")"),
        ),
        (b("Owner: "), v(inst.owner) if inst.owner else t("unknown (no owner tag)")),
    ]
    if decision.gpu_util_mean is not None:
        lines.append(
            (
                b("GPU utilisation: "),
                t(
                    f"mean {decision.gpu_util_mean:g}%, max {decision.gpu_util_max or 0:g}% "
                    f"over the lookback; idle for the last {decision.idle_minutes or 0:g} min"
                ),
            )
        )
    lines.append(
        (
            b("Cost: "),
            t(
                f"{_money(price.hourly_price, '/h')}, wasted while idle so far "
                f"{_money(decision.wasted_usd)}"
            ),
        )
    )
    if price.premium is not None and price.cpu_equivalent is not None:
        lines.append(
            (
                b("Premium: "),
                t(f"{price.premium:g}× its CPU equivalent "),
                v(price.cpu_equivalent.instance_type),
                t(f" ({_money(price.cpu_equivalent.hourly_price, '/h')})"),
            )
        )
    if decision.reasons:
        lines.append((b("Why: "), v("; ".join(decision.reasons))))
    return lines


def _gcloud_target(instance: GpuInstance) -> str:
    """``NAME --project P --zone Z``: what every gcloud command needs to find the VM, which a
    user's default project and zone need not be."""
    return (
        f"{neutralize(instance.name or instance.instance_id)} --project "
        f"{neutralize(instance.account)} --zone {neutralize(instance.zone)}"
    )


def _keep_alive(instance: GpuInstance, until: datetime) -> list[Line]:
    """How to keep the machine, in the tag or label spelling of its cloud."""
    if instance.provider == "gcp":
        keep = f"guardian-keep-until={format_keep_until(until, label=True)}"
        command = f"gcloud compute instances add-labels {_gcloud_target(instance)} --labels={keep}"
        protect = "guardian-protect=true"
    else:
        keep = f"guardian:keep-until={format_keep_until(until)}"
        command = (
            f"aws ec2 create-tags --region {neutralize(instance.region)} --resources "
            f"{neutralize(instance.instance_id)} --tags "
            f"Key=guardian:keep-until,Value={format_keep_until(until)}"
        )
        protect = "guardian:protect=true"
    label = "label" if instance.provider == "gcp" else "tag"
    return [
        (
            b("To keep it: "),
            t(f"{label} "),
            code(keep),
            t(" (until then) or "),
            code(protect),
            t(" (always)."),
        ),
        (t("For example: "), code(command)),
    ]


def warning_message(
    finding: Finding,
    *,
    now: datetime,
    deadline: datetime,
    will_stop: bool,
    dry_run: bool,
    alert_only_reason: str | None,
    instance_store_loss: bool,
    standby_group: str | None = None,
) -> Message:
    """The one warning of an idle episode: what it costs, when it stops, how to keep it.

    ``standby_group``: the plain Auto Scaling group it will be put into Standby in first."""
    inst = finding.instance
    minutes = max(0, round((deadline - now).total_seconds() / 60))
    prefix = "[dry run] " if dry_run else ""
    if will_stop and alert_only_reason is None:
        title = _title(
            f"{prefix}Idle GPU instance ", inst, f" will be stopped at {_when(deadline)}"
        )
        verb = "would" if dry_run else "will"
        how: Line = (t(f" — guardian {verb} stop it at "),)
        if standby_group is not None:
            how = (
                t(f" — guardian {verb} put it into Standby in Auto Scaling group "),
                v(standby_group),
                t(" (desired capacity one less, so nothing replaces it) and stop it at "),
            )
        lead: Line = (
            b("Idle GPU instance"),
            *how,
            b(_when(deadline)),
            t(f" (in {minutes} min) unless it gets busy again or is tagged."),
        )
    elif will_stop:
        title = _title(f"{prefix}Idle GPU instance ", inst, ": stop it yourself")
        lead = (
            b("Idle GPU instance"),
            t(" — guardian will not stop it automatically: "),
            t(alert_only_reason or ""),
            t(". Please stop it if it is no longer needed."),
        )
    else:
        title = _title(f"{prefix}Idle GPU instance ", inst, "")
        lead = (
            b("Idle GPU instance"),
            t(" — please stop it if it is no longer needed (guardian only alerts in this mode)."),
        )
    lines = [lead, *_facts(finding)]
    if finding.decision.notebook_idle_minutes is not None:
        lines.append((b("Notebook: "), t(NOTEBOOK_ADVICE)))
    if instance_store_loss:
        lines.append(
            (
                b("Local disks: "),
                t("its instance store (local SSD) is wiped when it stops; "),
                t(_local_disk_note(finding)),
            )
        )
    if dry_run:
        lines.append((t("Dry run: nothing will actually be stopped."),))
    lines.extend(_keep_alive(inst, deadline + timedelta(days=1)))
    return Message("warning", "warning", title, tuple(lines))


def _local_disk_note(finding: Finding) -> str:
    if finding.local_disk_used is None:
        return "enforce.local_disks: stop allows that."
    used_gib = finding.local_disk_used[1] / 1024
    return f"the agent reports {used_gib:.2f} GiB in use there beyond empty filesystems."


def resumed_message(finding: Finding, *, dry_run: bool = False) -> Message:
    inst, decision = finding.instance, finding.decision
    why = "; ".join(decision.reasons) or decision.verdict.value
    prefix = "[dry run] " if dry_run else ""
    return Message(
        "resumed",
        "success",
        _title(f"{prefix}Warning withdrawn: GPU instance ", inst, f" is {decision.verdict.value}"),
        (
            (
                t("No longer idle ("),
                b(decision.verdict.value),
                t("): "),
                v(why),
                t(". It will not be stopped."),
            ),
        ),
    )


def stopped_message(
    finding: Finding, *, action: str, dry_run: bool, standby_group: str | None = None
) -> Message:
    """The stop done; with ``standby_group``, the two commands that bring the member back."""
    inst = finding.instance
    done = {"stop": "Stopped", "hibernate": "Hibernated", "standby+stop": "Stopped (in Standby)"}
    verb = done.get(action, action)
    prefix = f"[dry run] Would have {verb.lower()}" if dry_run else verb
    start = (
        f"gcloud compute instances start {_gcloud_target(inst)}"
        if inst.provider == "gcp"
        else f"aws ec2 start-instances --region {neutralize(inst.region)} --instance-ids "
        f"{neutralize(inst.instance_id)}"
    )
    lines: list[Line] = [*_facts(finding), (t("Start it again when needed: "), code(start))]
    if standby_group is not None:
        back = (
            f"aws autoscaling exit-standby --region {neutralize(inst.region)} "
            f"--auto-scaling-group-name {neutralize(standby_group)} --instance-ids "
            f"{neutralize(inst.instance_id)}"
        )
        lines.insert(
            0,
            (
                t("It was put into Standby in Auto Scaling group "),
                v(standby_group),
                t(" with the desired capacity decremented; nothing was terminated."),
            ),
        )
        lines.append((t("Then return it to the group: "), code(back)))
    return Message(
        "stopped",
        "info" if dry_run else "success",
        _title(f"{prefix} idle GPU instance ", inst),
        tuple(lines),
    )


def stop_failed_message(finding: Finding, error: str, *, retried: bool = True) -> Message:
    """``retried=False``: the cloud refuses this stop for good (stop protection and the like)."""
    then = (
        "guardian retries every cycle while it stays idle."
        if retried
        else "The cloud refuses this stop for good: guardian will not try again while it stays "
        "idle. Please stop it yourself if it is no longer needed."
    )
    return Message(
        "stop_failed",
        "failure",
        _title("Could not stop idle GPU instance ", finding.instance),
        ((b("Error: "), v(error)), (t(then),), *_facts(finding)),
    )


def not_stopped_message(finding: Finding, reason: str, *, dry_run: bool = False) -> Message:
    prefix = "[dry run] " if dry_run else ""
    return Message(
        "not_stopped",
        "warning",
        _title(
            f"{prefix}Idle GPU instance ", finding.instance, " is past its deadline: not stopped"
        ),
        ((b("Not stopped: "), t(reason), t(". Please stop it yourself.")), *_facts(finding)),
    )


def breaker_message(
    unit: str, idle: Sequence[Finding], measured: int, max_fraction: float
) -> Message:
    lines: list[Line] = [
        (
            t(f"{len(idle)} of {measured} measured GPU instances in "),
            v(unit),
            t(
                f" look idle at once (more than {max_fraction:.0%}). That usually means the GPU "
                "metrics pipeline is broken (agent stopped, namespace or metric renamed), so "
                "guardian warns and stops nothing there until it clears."
            ),
        )
    ]
    for finding in idle[:10]:
        lines.append(
            (t("• "), *_who(finding.instance), t(" — "), v(finding.instance.instance_type))
        )
    if len(idle) > 10:
        lines.append((t(f"… and {len(idle) - 10} more"),))
    return Message(
        "breaker",
        "failure",
        (t("Circuit breaker tripped in "), v(unit), t(": stopping nothing there")),
        tuple(lines),
    )


def reconciled_message(instance_label: str, outcome: str, detail: str) -> Message:
    return Message(
        "reconciled",
        "warning" if outcome == "unknown" else "info",
        (t("Stop unconfirmed (restart or lost answer): "), v(instance_label), t(f" — {outcome}")),
        ((v(detail),),),
    )


@dataclass(frozen=True)
class Saving:
    """One recommendation in the digest: which instance, from what to what, per month."""

    instance_id: str
    name: str | None
    instance_type: str
    suggested: str  # the recommended type; "CPU <type>" for a move to CPU
    usd_month: float


def top_savings(findings: Iterable[Finding], limit: int = 5) -> tuple[Saving, ...]:
    """The ``limit`` largest recommendations of a cycle, largest saving first."""
    savings = [
        Saving(
            f.instance.instance_id,
            f.instance.name,
            f.instance.instance_type,
            ("CPU " if f.recommendation.move == "cpu" else "") + f.recommendation.instance_type,
            f.recommendation.saves_usd_month,
        )
        for f in findings
        if f.recommendation is not None
    ]
    savings.sort(key=lambda s: (-s.usd_month, s.instance_id))
    return tuple(savings[:limit])


@dataclass(frozen=True)
class DigestSummary:
    day: str
    instances: int
    hourly_burn_usd: float
    idle_burn_usd_per_hour: float
    spent_usd: float  # over the period, from the observations
    idle_spent_usd: float
    top_wasters: tuple[tuple[str, str | None, str | None, float], ...]  # id, name, owner, $
    actions: Mapping[str, int]
    notification_failures: int
    # The latest cycle's largest right-sizing savings (``top_savings``), largest first.
    top_savings: tuple[Saving, ...] = ()


def digest_message(summary: DigestSummary) -> Message:
    s = summary
    lines: list[Line] = [
        (
            b("Now: "),
            t(
                f"{s.instances} GPU instances burning {_money(s.hourly_burn_usd, '/h')}, "
                f"of which idle {_money(s.idle_burn_usd_per_hour, '/h')}."
            ),
        ),
        (
            b("Last 24 h: "),
            t(f"spent about {_money(s.spent_usd)}, of which idle {_money(s.idle_spent_usd)}."),
        ),
    ]
    if s.top_wasters:
        lines.append((b("Top idle spend:"),))
        for rank, (instance_id, name, owner, usd) in enumerate(s.top_wasters, 1):
            who: Line = (v(name), t(" ("), v(instance_id), t(")")) if name else (v(instance_id),)
            owner_part: Line = (t(", owner "), v(owner)) if owner else ()
            lines.append((t(f"{rank}. "), *who, *owner_part, t(f" — {_money(usd)}")))
    if s.top_savings:
        total = sum(saving.usd_month for saving in s.top_savings)
        lines.append(
            (b("Right-sizing"), t(f" (advice, top {len(s.top_savings)}: {_money(total)}/month):"))
        )
        for rank, saving in enumerate(s.top_savings, 1):
            label: Line = (
                (v(saving.name), t(" ("), v(saving.instance_id), t(")"))
                if saving.name
                else (v(saving.instance_id),)
            )
            lines.append(
                (
                    t(f"{rank}. "),
                    *label,
                    t(" "),
                    v(saving.instance_type),
                    t(" → "),
                    v(saving.suggested),
                    t(f" saves {_money(saving.usd_month)}/month"),
                )
            )
    acted = ", ".join(f"{k} {n}" for k, n in sorted(s.actions.items()) if n) or "none"
    lines.append((b("Actions: "), t(acted)))
    if s.notification_failures:
        lines.append((b("Failed deliveries: "), t(str(s.notification_failures))))
    return Message(
        "digest",
        "info",
        (
            t(
                f"GPU digest {s.day}: {_money(s.hourly_burn_usd, '/h')} burning, "
                f"{_money(s.idle_burn_usd_per_hour, '/h')} idle"
            ),
        ),
        tuple(lines),
    )

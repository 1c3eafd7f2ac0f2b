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
from guardian.policy import format_keep_until

__all__ = [
    "DigestSummary",
    "Line",
    "Message",
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


def _keep_alive(instance: GpuInstance, until: datetime) -> list[Line]:
    """How to keep the machine, in the tag or label spelling of its cloud."""
    if instance.provider == "gcp":
        keep = f"guardian-keep-until={format_keep_until(until, label=True)}"
        command = (
            f"gcloud compute instances add-labels {neutralize(instance.instance_id)} "
            f"--project {neutralize(instance.account)} --zone {neutralize(instance.zone)} "
            f"--labels={keep}"
        )
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
) -> Message:
    """The one warning of an idle episode: what it costs, when it stops, how to keep it."""
    inst = finding.instance
    minutes = max(0, round((deadline - now).total_seconds() / 60))
    prefix = "[dry run] " if dry_run else ""
    if will_stop and alert_only_reason is None:
        title = _title(
            f"{prefix}Idle GPU instance ", inst, f" will be stopped at {_when(deadline)}"
        )
        verb = "would stop" if dry_run else "will stop"
        lead: Line = (
            b("Idle GPU instance"),
            t(f" — guardian {verb} it at "),
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
    if instance_store_loss:
        lines.append(
            (b("Data loss: "), t("its instance-store (local SSD) data is lost when it stops."))
        )
    if dry_run:
        lines.append((t("Dry run: nothing will actually be stopped."),))
    lines.extend(_keep_alive(inst, deadline + timedelta(days=1)))
    return Message("warning", "warning", title, tuple(lines))


def resumed_message(finding: Finding) -> Message:
    inst, decision = finding.instance, finding.decision
    why = "; ".join(decision.reasons) or decision.verdict.value
    return Message(
        "resumed",
        "success",
        _title("Warning withdrawn: GPU instance ", inst, f" is {decision.verdict.value}"),
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


def stopped_message(finding: Finding, *, action: str, dry_run: bool) -> Message:
    inst = finding.instance
    done = {"stop": "Stopped", "hibernate": "Hibernated"}.get(action, action)
    prefix = f"[dry run] Would have {done.lower()}" if dry_run else done
    start = (
        f"gcloud compute instances start {neutralize(inst.instance_id)} --zone "
        f"{neutralize(inst.zone)}"
        if inst.provider == "gcp"
        else f"aws ec2 start-instances --region {neutralize(inst.region)} --instance-ids "
        f"{neutralize(inst.instance_id)}"
    )
    return Message(
        "stopped",
        "info" if dry_run else "success",
        _title(f"{prefix} idle GPU instance ", inst),
        (*_facts(finding), (t("Start it again when needed: "), code(start))),
    )


def stop_failed_message(finding: Finding, error: str) -> Message:
    return Message(
        "stop_failed",
        "failure",
        _title("Could not stop idle GPU instance ", finding.instance),
        (
            (b("Error: "), v(error)),
            (t("guardian retries every cycle while it stays idle."),),
            *_facts(finding),
        ),
    )


def not_stopped_message(finding: Finding, reason: str) -> Message:
    return Message(
        "not_stopped",
        "warning",
        _title("Idle GPU instance ", finding.instance, " is past its deadline: not stopped"),
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

"""Alert texts about guardian itself and about stops confirmed after the fact.

Each health alert opens or closes a condition (``guardian.daemon.health``): sent once when a
problem has lasted ``limits.alert_after_failed_cycles`` cycles, once more when it clears —
never once per cycle or per instance. Values from outside (error texts, ids) are ``v`` spans,
neutralised like every other alert's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from guardian.daemon.messages import Line, Message, b, code, neutralize, t, v
from guardian.daemon.store import InstanceRef

__all__ = [
    "cycles_failing_message",
    "cycles_recovered_message",
    "metrics_missing_message",
    "metrics_restored_message",
    "stop_confirmed_message",
    "unit_restored_message",
    "unit_unreachable_message",
]

_LISTED = 10  # instances named in one alert; the rest are counted


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _who(ref: InstanceRef) -> Line:
    if ref.name:
        return (v(ref.name), t(" ("), v(ref.instance_id), t(")"))
    return (v(ref.instance_id),)


def stop_confirmed_message(ref: InstanceRef, action: str) -> Message:
    """ "Stopped": for a stop whose answer was lost (a timeout, a restart) and which the next
    cycle found done. The same title as a stop confirmed at once, so it reads as one event."""
    done = {"stop": "Stopped", "hibernate": "Hibernated"}.get(action, action)
    start = (
        f"gcloud compute instances start {neutralize(ref.instance_id)} --project "
        f"{neutralize(ref.account)}"
        if ref.provider == "gcp"
        else f"aws ec2 start-instances --region {neutralize(ref.region)} --instance-ids "
        f"{neutralize(ref.instance_id)}"
    )
    return Message(
        "stopped",
        "success",
        (t(f"{done} idle GPU instance "), *_who(ref)),
        (
            (
                t(
                    f"The {action} call's answer was lost (a timeout or a restart); checked "
                    "again, the instance is no longer running, so the stop took effect."
                ),
            ),
            (b("Where: "), t(f"{ref.provider} account "), v(ref.account), t(", "), v(ref.region)),
            (t("Start it again when needed: "), code(start)),
        ),
    )


def cycles_failing_message(failed: int, since: datetime, error: str) -> Message:
    return Message(
        "health",
        "failure",
        (t(f"guardian: the last {failed} cycles failed"),),
        (
            (b("Failing since: "), t(_when(since))),
            (b("Last error: "), v(error)),
            (
                t(
                    "Nothing is warned about or stopped while cycles fail. guardian keeps "
                    "trying every poll interval and says so here once it recovers."
                ),
            ),
        ),
    )


def cycles_recovered_message(failed: int, since: datetime) -> Message:
    return Message(
        "health",
        "success",
        (t(f"guardian: cycles succeed again after {failed} failed"),),
        ((b("Failing since: "), t(_when(since))),),
    )


def unit_unreachable_message(
    provider: str,
    account: str,
    *,
    regions: Sequence[str],
    error: str,
    not_audited: Sequence[InstanceRef],
    cycles: int,
) -> Message:
    where = ", ".join(sorted(regions))
    lines: list[Line] = [
        (b("Where: "), t(f"{provider} account "), v(account), t(", "), v(where)),
        (b("Error: "), v(error)),
        (
            t(
                f"Its GPU instances have not been audited for {cycles} cycles: none of them is "
                "warned about or stopped, and their open warnings stay open until it can be "
                "listed again."
            ),
        ),
    ]
    if not_audited:
        lines.append((b(f"Not audited ({len(not_audited)}):"),))
        for ref in not_audited[:_LISTED]:
            lines.append((t("• "), *_who(ref), t(" — "), v(ref.region)))
        if len(not_audited) > _LISTED:
            lines.append((t(f"… and {len(not_audited) - _LISTED} more"),))
    return Message(
        "health",
        "failure",
        (t(f"guardian cannot audit {provider} account "), v(account)),
        tuple(lines),
    )


def unit_restored_message(provider: str, account: str, since: datetime) -> Message:
    return Message(
        "health",
        "success",
        (t(f"guardian audits {provider} account "), v(account), t(" again")),
        ((b("Unreachable since: "), t(_when(since))),),
    )


def metrics_missing_message(
    provider: str, unmeasured: int, listed: int, error: str, cycles: int
) -> Message:
    return Message(
        "health",
        "failure",
        (t(f"GPU metrics missing in {provider}: nothing is stopped there"),),
        (
            (
                t(
                    f"{unmeasured} of {listed} GPU instances could not be measured for {cycles} "
                    "cycles: the metrics API fails while the instances can still be listed."
                ),
            ),
            (b("Error: "), v(error)),
            (
                t(
                    "They are reported unmeasured: unknown is never idle, so none is warned "
                    "about or stopped until the metrics come back (one more message then)."
                ),
            ),
        ),
    )


def metrics_restored_message(provider: str, since: datetime) -> Message:
    return Message(
        "health",
        "success",
        (t(f"GPU metrics back in {provider}"),),
        ((b("Missing since: "), t(_when(since))),),
    )

"""Idle instances enforcement must leave to someone else: owned by a controller, in reserved
capacity, or with stop protection — one alert per group and idle episode, naming the knob.

These gates are permanent, so the per-instance warn→stop ladder is no use for them: a warning
per instance would say "please stop it" of machines a controller would only replace. Instead
each cycle gathers them by group (the Auto Scaling group, node pool, reservation...) and keeps
two kinds of open conditions in the store:

- ``gated:<reason>:<instance key>`` (detail: its group) while an instance is idle behind the
  gate: recorded in the action log once, when it opens;
- ``group:<group>`` while any of its members is: the one alert, with the group's idle $/h, is
  sent when it opens. The group's next alert comes only after every member was busy again.

Stop protection is learned by one DescribeInstanceAttribute before a warning (``enforce``); its
open ``gated:stop_protection:`` condition is what spares the next cycles that call.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from guardian.config import Config
from guardian.cycle import CycleResult
from guardian.daemon.enforce_stop import Recorder
from guardian.daemon.messages import Line, Message, b, neutralize, t, v
from guardian.daemon.store import EpisodeRow, InstanceRef, Store
from guardian.model import Controller, Finding, GpuInstance, ScalingGroup, Verdict
from guardian.policy import (
    Block,
    controller_label,
    ownership_block,
    reservation_knob,
    saving_knob,
    standby_eligible,
)
from guardian.providers import Provider, ScalingGroups

__all__ = [
    "GATED",
    "GROUP",
    "Gated",
    "Owners",
    "group_key",
    "owned_message",
    "protection_block",
    "scaling_group_block",
]

log = structlog.get_logger(__name__)

GATED = "gated:"
GROUP = "group:"
_LISTED_MEMBERS = 10
_MAX_KEY = 200  # the conditions table's key is 300 characters, "gated:<reason>:" included


@dataclass(frozen=True)
class Gated:
    """An idle instance behind a permanent gate this cycle, and the group it is reported in."""

    finding: Finding
    block: Block
    group: str


def group_key(instance: GpuInstance, reason: str) -> str:
    """Who is told together: a controller's or a reservation's members, else the instance."""
    where = f"{instance.provider}:{instance.account}"
    if reason == "reserved" and instance.reservation is not None:
        key = f"{where}:reservation:{instance.reservation}"
    elif reason == "managed" and instance.managed_by is not None:
        owner = instance.managed_by
        key = f"{where}:{instance.region}:{owner.kind}:{owner.cluster or ''}:{owner.name}"
    else:
        key = f"{reason}:{instance.key}"
    if len(key) > _MAX_KEY:  # names come from tags (up to 255 characters): keep keys bounded
        key = f"{key[: _MAX_KEY - 17]}:{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return key


def protection_block(instance: GpuInstance) -> Block:
    command = (
        f"aws ec2 modify-instance-attribute --region {instance.region} "
        f"--instance-id {instance.instance_id} --no-disable-api-stop"
    )
    return Block(
        "stop_protection",
        "stop protection (DisableApiStop) is set on it",
        permanent=True,
        category="stop protection",
        knob=f"stop it yourself, or turn stop protection off if guardian may stop it ({command})",
    )


def scaling_group_block(instance: GpuInstance, group: ScalingGroup) -> Block:
    """A Standby-mode member whose group is at its minimum: no Standby without a replacement."""
    assert instance.managed_by is not None
    return Block(
        "managed",
        f"Auto Scaling group {group.name} is at its minimum (min {group.min_size} / desired "
        f"{group.desired}): Standby would take it below, so it is not stopped",
        permanent=True,
        category=f"managed by {controller_label(Controller.AUTOSCALING_GROUP)}",
        knob=saving_knob(instance.managed_by, group),
    )


def _safe_knob(instance: GpuInstance, block: Block, group: ScalingGroup | None) -> str:
    """The knob, rebuilt from names made inert: tag values come from whoever can tag."""
    owner = instance.managed_by
    if block.reason == "managed" and owner is not None:
        clean = replace(
            owner,
            name=neutralize(owner.name),
            cluster=neutralize(owner.cluster) if owner.cluster else None,
        )
        safe_group = replace(group, name=clean.name) if group is not None else None
        return saving_knob(clean, safe_group)
    if block.reason == "reserved" and instance.reservation is not None:
        return reservation_knob(neutralize(instance.reservation))
    if block.reason == "stop_protection":
        return neutralize(block.knob or "")
    return block.knob or ""


def _money(amount: float) -> str:
    return f"${amount:,.2f}/h"


def owned_message(members: Sequence[Gated], group: ScalingGroup | None) -> Message:
    """One alert for a group's idle members: why guardian leaves them, and what saves money."""
    first = members[0]
    inst, block = first.finding.instance, first.block
    priced = [m.finding.price.hourly_price for m in members]
    burn = sum(p for p in priced if p is not None)
    unpriced = sum(1 for p in priced if p is None)
    burn_text = _money(burn) + (f" (+{unpriced} unpriced)" if unpriced else "")
    if block.reason == "managed" and inst.managed_by is not None:
        owner = inst.managed_by
        label = controller_label(owner.kind)
        title: Line = (
            t(f"Idle GPU instances kept by {label} "),
            v(owner.name),
            t(f": {burn_text}"),
        )
        why: Line = (
            t(f"guardian does not stop these: {label} "),
            v(owner.name),
            t(
                " owns them and would replace a stopped instance (terminate it, launch a copy), "
                "so a stop would save nothing."
            ),
        )
    elif block.reason == "reserved":
        title = (t("Idle GPU instances in reserved capacity "), v(inst.reservation or ""))
        title += (t(f": {burn_text}"),)
        why = (
            t("guardian does not stop these: reserved capacity is paid whether its instances "),
            t("run or not, so a stop would save nothing."),
        )
    else:
        title = (t("Idle GPU instance with stop protection: "), v(inst.instance_id))
        title += (t(f": {burn_text}"),)
        why = (t(f"guardian does not stop it: {block.detail}."),)
    lines: list[Line] = [
        why,
        (b("What saves the money: "), t(_safe_knob(inst, block, group)), t(".")),
        (b("Idle now: "), t(f"{len(members)} instance{'s' if len(members) > 1 else ''}, "),
         t(f"{burn_text}:")),
    ]  # fmt: skip
    for member in members[:_LISTED_MEMBERS]:
        i, decision = member.finding.instance, member.finding.decision
        who: Line = (
            (v(i.name), t(" ("), v(i.instance_id), t(")")) if i.name else (v(i.instance_id),)
        )
        price = member.finding.price.hourly_price
        lines.append(
            (
                t("• "),
                *who,
                t(" — "),
                v(i.instance_type),
                t(f", {i.region}, idle {decision.idle_minutes or 0:g} min, "),
                t(_money(price) if price is not None else "price unknown"),
            )
        )
    if len(members) > _LISTED_MEMBERS:
        lines.append((t(f"… and {len(members) - _LISTED_MEMBERS} more"),))
    lines.append((t("The next alert for them comes after they have been busy and idle again."),))
    return Message("owned", "warning", title, tuple(lines))


class Owners:
    """The group pass of enforcement, one cycle at a time: which idle instances are left to
    their owner, Auto Scaling groups' capacity and Standby room, the records and the alerts."""

    def __init__(self, config: Config, store: Store, providers: Mapping[str, Provider]) -> None:
        self._config = config
        self._store = store
        self._providers = providers
        self.groups: dict[tuple[str, str, str], dict[str, ScalingGroup]] = {}
        self.gated: dict[str, Gated] = {}  # instance key → idle behind a permanent gate
        self._protected: set[str] = set()  # instance keys known to have stop protection
        self._claims: Counter[str] = Counter()  # Standby-mode stop promises open, by group
        self._taken: Counter[str] = Counter()  # Standbys done this cycle, by group

    # -- the cycle's state -------------------------------------------------------------------
    def begin(self, findings: Sequence[Finding], episodes: Mapping[str, EpisodeRow]) -> None:
        """Read what earlier cycles learned and the groups' capacity this cycle needs."""
        with self._store.reader() as tx:
            protected = tx.open_conditions(f"{GATED}stop_protection:")
            open_groups = tx.open_conditions(GROUP)
        self.gated = {}
        self._protected = {_ref_of(key).instance_key for key in protected}
        self._taken = Counter()
        self._claims = Counter()
        wanted: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for finding in findings:
            inst, episode = finding.instance, episodes.get(finding.instance.key)
            if finding.decision.verdict is not Verdict.IDLE or not _plain_group(inst):
                continue
            assert inst.managed_by is not None
            standby = standby_eligible(inst, self._config)
            # Standby mode needs the room above the minimum; an alert going out now, the numbers.
            if standby or f"{GROUP}{group_key(inst, 'managed')}" not in open_groups:
                wanted[(inst.provider, inst.account, inst.region)].add(inst.managed_by.name)
            # A member already promised a stop holds a place above the minimum until stopped.
            promised = episode is not None and episode.promise != "alert"
            if standby and promised and episode is not None and episode.stop_state is None:
                self._claims[inst.managed_by.name] += 1
        self._load_groups(wanted)

    def _load_groups(self, wanted: Mapping[tuple[str, str, str], set[str]]) -> None:
        """One batched DescribeAutoScalingGroups per account and region that needs it."""
        self.groups = {}
        for (provider_name, account, region), names in sorted(wanted.items()):
            provider = self._providers.get(provider_name)
            if not names or not isinstance(provider, ScalingGroups):
                continue
            try:
                self.groups[(provider_name, account, region)] = provider.scaling_groups(
                    account, region, sorted(names)
                )
            except Exception as exc:  # the alert goes out without the numbers; Standby re-checks
                log.warning("scaling_groups_unread", account=account, region=region, error=str(exc))

    def group_of(self, instance: GpuInstance) -> ScalingGroup | None:
        if not _plain_group(instance):
            return None
        assert instance.managed_by is not None
        unit = (instance.provider, instance.account, instance.region)
        return self.groups.get(unit, {}).get(instance.managed_by.name)

    def standby_group(self, instance: GpuInstance) -> ScalingGroup | None:
        """The group a Standby-mode member is walked down in, when its capacity is known."""
        return self.group_of(instance) if standby_eligible(instance, self._config) else None

    # -- the gates ---------------------------------------------------------------------------
    def block(self, finding: Finding, episode: EpisodeRow | None) -> Block | None:
        """The permanent gate that leaves an idle instance to its owner, if any."""
        inst = finding.instance
        block = ownership_block(inst, self._config)
        if block is not None:
            return block
        group = self.standby_group(inst)
        if group is not None and episode is None:
            claimed = self._claims[group.name]
            if inst.instance_id not in group.standby and group.desired - claimed <= group.min_size:
                return scaling_group_block(inst, group)  # no room above the minimum for it
        if inst.key in self._protected:
            return protection_block(inst)
        return None

    def room_block(self, instance: GpuInstance) -> Block | None:
        """At the stop: the Standbys done this cycle may have used the room up."""
        group = self.standby_group(instance)
        if group is None or instance.instance_id in group.standby:
            return None
        if group.desired - self._taken[group.name] <= group.min_size:
            return scaling_group_block(instance, group)
        return None

    def claim(self, instance: GpuInstance) -> None:
        """A Standby-mode member was just promised a stop."""
        group = self.standby_group(instance)
        if group is not None:
            self._claims[group.name] += 1

    def take(self, instance: GpuInstance) -> None:
        """A Standby-mode member is being put into Standby now."""
        group = self.standby_group(instance)
        if group is not None and instance.instance_id not in group.standby:
            self._taken[group.name] += 1

    def leave(self, finding: Finding, block: Block) -> None:
        """Hand an idle instance to the group pass; stop protection is remembered from here."""
        inst = finding.instance
        if block.reason == "stop_protection":
            self._protected.add(inst.key)
        self.gated[inst.key] = Gated(finding, block, group_key(inst, block.reason))

    # -- records and alerts ------------------------------------------------------------------
    def settle(
        self,
        result: CycleResult,
        unit_failed: Callable[[InstanceRef], bool],
        rec: Recorder,
        mine: Callable[[InstanceRef], bool] = lambda _: True,
    ) -> dict[str, int]:
        """Open what is newly gated (one record each, one alert per new group), close what is
        not any more — of ``mine`` only: another replica's unit is its business. Returns the
        newly recorded gates by reason."""
        recorded: Counter[str] = Counter()
        present = {finding.instance.key: finding for finding in result.findings}
        with self._store.transaction() as tx:
            rec.fence(tx)
            every_gated = tx.condition_details(GATED)
            open_gated = {c: g for c, g in every_gated.items() if mine(_ref_of(c))}
            open_groups = tx.open_conditions(GROUP)
            wanted = {gated_condition(g): g for g in self.gated.values()}
            for condition, item in wanted.items():
                if condition in open_gated:
                    continue
                tx.open_condition(condition, rec.now, item.group)
                open_gated[condition] = every_gated[condition] = item.group
                ref = InstanceRef.of(item.finding.instance)
                rec.record(tx, ref, "block", outcome=item.block.reason, reason=item.block.detail)
                recorded[item.block.reason] += 1
            for condition in sorted(set(open_gated) - set(wanted)):
                ref = _ref_of(condition)
                finding = present.get(ref.instance_key)
                if finding is None and unit_failed(ref):
                    continue  # not listed this cycle: an outage never ends the episode
                tx.close_condition(condition)
                del open_gated[condition], every_gated[condition]
                verdict = finding.decision.verdict.value if finding else "gone"
                log.info("gate_closed", condition=condition, verdict=verdict)
            members: dict[str, list[Gated]] = defaultdict(list)
            for item in self.gated.values():
                members[item.group].append(item)
            for group, items in sorted(members.items()):
                if f"{GROUP}{group}" in open_groups:
                    continue
                tx.open_condition(f"{GROUP}{group}", rec.now, items[0].block.reason)
                instance = items[0].finding.instance
                owners = {item.finding.instance.owner for item in items}
                message = owned_message(items, self.group_of(instance))
                owner_instance = instance if len(owners) == 1 else None
                rec.alert(tx, message, f"{GROUP}{group}:{rec.now.isoformat()}", owner_instance)
            still = set(every_gated.values())  # groups of every unit, not only this one
            for condition in open_groups:
                if condition.removeprefix(GROUP) not in still:
                    tx.close_condition(condition)
        return dict(recorded)


def _plain_group(instance: GpuInstance) -> bool:
    owner = instance.managed_by
    return (
        owner is not None and owner.kind is Controller.AUTOSCALING_GROUP and not instance.reserved
    )


def gated_condition(item: Gated) -> str:
    """``gated:<reason>:<region>:<instance key>``: the region lets a unit find its own."""
    inst = item.finding.instance
    return f"{GATED}{item.block.reason}:{inst.region}:{inst.key}"


def _ref_of(condition: str) -> InstanceRef:
    _, _, region, instance_key = condition.split(":", 3)
    provider, account, instance_id = instance_key.split(":", 2)
    return InstanceRef(instance_key, provider, account, region, instance_id)

"""A daemon under injected faults, cycle by cycle: the harness of the fault scenarios.

``FaultWorld`` runs the real ``guardian.daemon.service.Daemon`` in this process — its
``run_cycle()``, the scheduler's job, one after another — on a simulated clock, with the real
``AwsProvider`` reading a moto server through a ``FaultProxy`` (``AWS_ENDPOINT_URL`` points at
the proxy while the world is open), alerts delivered by apprise to a local webhook receiver and
state in SQLite. The clock advances one ``step`` a cycle and every machine's GPU metrics are
seeded that far ahead, so in seconds instances go idle, are warned, reach their deadline and
are stopped, while the proxy breaks calls on the way.

Used by ``tests/integration/test_faults_*.py`` and by ``bench/faults.py`` (the long run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from guardian.config import Config
from guardian.daemon.service import CycleReport, Daemon
from guardian.daemon.store import ActionRow, OutboxRow
from guardian.simulated.aws import Reading, SimInstance, constant, seed_fleet
from tests.fakes.fault_proxy import FaultProxy

__all__ = ["ACCOUNT", "FaultWorld", "Machine", "busy", "idle_after", "world_config"]

ACCOUNT = "123456789012"  # moto's account for the default credentials
Role = Literal["idle", "busy", "protected", "unmeasured"]
HELD_MIB = 20_000.0


def idle_after(minutes: int, total: int, *, mem_mib: float = HELD_MIB) -> list[Reading]:
    """Working for ``minutes``, then idle (memory held unless ``mem_mib`` says otherwise)."""
    return constant(93.0, HELD_MIB, minutes) + constant(0.0, mem_mib, total - minutes)


def busy(total: int) -> list[Reading]:
    return constant(88.0, HELD_MIB, total)


@dataclass(frozen=True)
class Machine:
    """One instance of the world: what it does (``role``: what guardian may do to it), its
    readings one a minute over history + future (None = no agent), where it runs."""

    name: str
    role: Role
    readings: list[Reading] | None
    tags: Mapping[str, str] = field(default_factory=dict)
    region: str = "us-east-1"
    role_arn: str | None = None  # launched in the account of this role (moto assumes it)
    instance_type: str = "g5g.xlarge"  # EBS only: not alert-only for a local disk


def world_config(workdir: Path, webhook: str, **changes: Any) -> dict[str, Any]:
    """An enforcing daemon on minute-scale settings over a one-hour lookback."""
    data: dict[str, Any] = {
        "mode": "enforce",
        "poll_interval": "1m",
        "state_dir": str(workdir / "state"),
        "metrics": {"listen": ""},
        "cost": {"lookback": "1h"},
        "limits": {"max_idle_fraction": 1.0, "max_stops_per_cycle": 5},
        "idle": {
            "window": "20m",
            "window_released": "10m",
            "min_uptime": "20m",
            "grace": "5m",
            "history_margin": 0,
            "window_bursty": "0s",
        },
        "notify": {"urls": [webhook], "digest": ""},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


class FaultWorld:
    """Machines seeded in moto, a proxy in front of it, a daemon behind the proxy."""

    def __init__(
        self,
        workdir: Path,
        moto_endpoint: str,
        machines: Sequence[Machine],
        config: Mapping[str, Any],
        *,
        history: timedelta,
        future: timedelta,
        step: timedelta = timedelta(minutes=1),
        catalog: Any = None,
        client_config: Any = None,
        start: datetime | None = None,
    ) -> None:
        self.workdir = workdir
        self.moto_endpoint = moto_endpoint
        self.machines = {m.name: m for m in machines}
        self.step = step
        # On a whole minute, as the seeded datapoints are: runs side by side line up exactly.
        self.start = (start or datetime.now(UTC)).replace(second=0, microsecond=0)
        self.now = self.start
        self.end = self.start + future
        self.proxy = FaultProxy(moto_endpoint).start()
        self.ids: dict[str, str] = {}  # name → instance id
        self.reports: list[CycleReport | None] = []
        self.config = Config.model_validate(config)
        self._seed(machines, history, future)
        self._saved_endpoint = os.environ.get("AWS_ENDPOINT_URL")
        os.environ["AWS_ENDPOINT_URL"] = self.proxy.endpoint
        self._catalog = catalog
        self._client_config = client_config
        self.daemon = self.open_daemon()

    # -- the world -------------------------------------------------------------------------------
    def client(self, service: str, region: str = "us-east-1", role_arn: str | None = None) -> Any:
        """A boto3 client straight to moto, never through the proxy."""
        import boto3

        credentials: dict[str, str] = {}
        if role_arn is not None:
            sts = boto3.client("sts", region_name=region, endpoint_url=self.moto_endpoint)
            assumed = sts.assume_role(RoleArn=role_arn, RoleSessionName="seed")["Credentials"]
            credentials = {
                "aws_access_key_id": assumed["AccessKeyId"],
                "aws_secret_access_key": assumed["SecretAccessKey"],
                "aws_session_token": assumed["SessionToken"],
            }
        return boto3.client(  # type: ignore[call-overload]
            service, region_name=region, endpoint_url=self.moto_endpoint, **credentials
        )

    def _seed(self, machines: Sequence[Machine], history: timedelta, future: timedelta) -> None:
        minutes = int((history + future).total_seconds() // 60)
        groups: dict[tuple[str, str | None], list[Machine]] = {}
        for machine in machines:
            if machine.readings is not None and len(machine.readings) != minutes:
                raise ValueError(f"{machine.name}: {len(machine.readings)} readings, not {minutes}")
            groups.setdefault((machine.region, machine.role_arn), []).append(machine)
        for (region, role_arn), members in groups.items():
            specs = [
                SimInstance(
                    m.instance_type, m.readings, tags={"Name": m.name, **m.tags}, age=timedelta(1)
                )
                for m in members
            ]
            launched = seed_fleet(
                self.client("ec2", region, role_arn),
                self.client("cloudwatch", region, role_arn),
                specs,
                self.end,  # the last reading is the end of the future
            )
            for instance_id, spec in launched:
                self.ids[spec.tags["Name"]] = instance_id

    def open_daemon(self) -> Daemon:
        """A daemon over the world's state: a fresh one is a restarted daemon."""
        from guardian.providers.aws.provider import AwsProvider

        def providers(config: Config) -> list[AwsProvider]:
            return [AwsProvider(config, catalog=self._catalog, client_config=self._client_config)]

        return Daemon(self.config, providers=providers, clock=lambda: self.now)

    def cycle(self) -> CycleReport | None:
        """One cycle at the current simulated time, then the clock moves one step."""
        report = self.daemon.run_cycle()
        self.reports.append(report)
        self.now += self.step
        return report

    def run(self, cycles: int) -> None:
        for _ in range(cycles):
            self.cycle()

    def close(self) -> None:
        self.daemon.close()
        self.proxy.stop()
        if self._saved_endpoint is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = self._saved_endpoint

    # -- what happened ---------------------------------------------------------------------------
    def state(self, name: str) -> str:
        machine = self.machines[name]
        ec2 = self.client("ec2", machine.region, machine.role_arn)
        found = ec2.describe_instances(InstanceIds=[self.ids[name]])
        return str(found["Reservations"][0]["Instances"][0]["State"]["Name"])

    def actions(self, name: str | None = None) -> list[ActionRow]:
        with self.daemon.store.reader() as tx:
            rows = tx.actions_since(self.start - timedelta(days=1))
        return [a for a in rows if name is None or a.ref.instance_id == self.ids[name]]

    def notifications(self) -> list[OutboxRow]:
        with self.daemon.store.reader() as tx:
            return tx.notifications_since(self.start - timedelta(days=1))

    def pending_intents(self) -> list[ActionRow]:
        with self.daemon.store.reader() as tx:
            return tx.pending_intents()

    def stopped_at(self, name: str) -> datetime | None:
        """When the stop of ``name`` was confirmed (its ``ok`` outcome), if it was."""
        for action in self.actions(name):
            if action.phase == "outcome" and action.outcome == "ok":
                return action.at
        return None

    def deadline(self, name: str) -> datetime | None:
        """The deadline its (first) warning gave."""
        with self.daemon.store.reader() as tx:
            from guardian.daemon.schema import episodes

            row = tx.conn.execute(
                episodes.select()
                .where(episodes.c.instance_id == self.ids[name])
                .order_by(episodes.c.id)
                .limit(1)
            ).first()
        return None if row is None else row.deadline.replace(tzinfo=UTC)

"""Units on a bounded pool: a hanging account costs its own timeout and nothing else, and a
unit given up can no longer act when its call finally returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from structlog.testing import capture_logs

from guardian.daemon.service import Daemon
from guardian.providers import Discovery, Unit
from tests.fake_provider import CATALOG, FakeProvider, flat_samples, make_instance
from tests.unit.test_daemon import make_config


class HangingAccount(FakeProvider):
    """Account 999999999999 does not answer until ``release`` is set."""

    def __init__(self) -> None:
        launched = datetime.now(UTC) - timedelta(days=1)
        instances = [
            make_instance(f"i-{n}", account=f"{n:012d}", launch_time=launched) for n in range(1, 5)
        ]
        instances.append(make_instance("i-slow", account="999999999999", launch_time=launched))
        super().__init__(instances)
        self.release = threading.Event()
        self.returned = threading.Event()

    def discover(self, units: Sequence[Unit] | None = None) -> Discovery:
        if units and units[0].account == "999999999999":
            self.release.wait(20)
            found = super().discover(units)
            self.returned.set()
            return found
        return super().discover(units)


def test_a_hanging_account_delays_nobody_beyond_its_timeout_and_then_cannot_act(
    tmp_path: Path,
) -> None:
    provider = HangingAccount()

    def clock() -> datetime:
        now = datetime.now(UTC)
        provider.samples = {i.key: flat_samples(0.0, 120, end=now) for i in provider.instances}
        return now

    daemon = Daemon(
        make_config(tmp_path, units={"workers": 2, "timeout": "1s"}, idle={"window": "30m"}),
        providers=lambda _config: [provider],
        catalog=lambda _state_dir: CATALOG,
        clock=clock,
    )
    started = time.monotonic()
    with capture_logs() as logs:
        report = daemon.run_cycle()
    took = time.monotonic() - started
    assert report is not None
    assert took < 5  # the other four units ran on the second worker meanwhile
    assert report.units == 5
    assert report.enforcement.warned == 4
    assert [e["unit"] for e in logs if e["event"] == "unit_timed_out"] == [
        "aws/999999999999/us-east-1"
    ]
    # The hung call returns; its unit was given up, so its idle instance is not warned about.
    with capture_logs() as late:
        provider.release.set()
        assert provider.returned.wait(10)
        time.sleep(0.5)
    assert any(e["event"] == "unit_lease_lost" for e in late)
    with daemon.store.reader() as tx:
        warned = {key.split(":")[1] for key in tx.open_episodes()}
    assert "999999999999" not in warned
    assert len(warned) == 4
    daemon.close()

"""``guardian status`` on the SQLite state a lone daemon keeps: the last cycle, open episodes,
the outbox; the PostgreSQL side (replicas, units) is checked in tests/e2e/test_replicas_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from guardian.cli import app
from tests.unit.test_daemon import Fleet, daemon_for


def test_status_shows_the_last_cycle_open_episodes_and_the_outbox(tmp_path: Path) -> None:
    daemon = daemon_for(tmp_path, Fleet(), notify={"urls": ["json://127.0.0.1:9/unreachable"]})
    report = daemon.run_cycle()
    assert report is not None
    daemon.close()
    config = tmp_path / "guardian.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))

    result = CliRunner().invoke(app, ["status", "--format", "json", "-c", str(config)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["backend"] == "sqlite"
    assert status["replicas"] == []
    assert status["units"] == []
    assert status["last_completed_cycle"]["cycle"] == report.cycle_id
    assert status["last_completed_cycle"]["units"] == 1
    assert [e["instance_id"] for e in status["open_episodes"]] == ["i-idle"]
    assert status["outbox_pending"] == 1  # the warning, to a channel that does not answer
    assert status["lag_s"] >= 0

    table = CliRunner().invoke(app, ["status", "-c", str(config)])
    assert table.exit_code == 0, table.output
    assert "open episodes: 1; outbox pending: 1" in table.stdout
    assert "i-idle (name-i-idle)" in table.stdout


def test_status_without_a_state_database_says_so(tmp_path: Path) -> None:
    config = tmp_path / "guardian.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "nothing")}))
    result = CliRunner().invoke(app, ["status", "-c", str(config)])
    assert result.exit_code != 0
    assert "no state database" in str(result.exception)  # main() prints it in one line

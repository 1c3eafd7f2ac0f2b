"""The audit table fits the terminal: at 80, 120 and 200 columns no essential cell is cut, more
columns join as the width grows, and ``--wide`` shows them all (issue 12) — the owner line, the
"If enforced" column (issue 11) and the "Suggest" column (issue 15) included."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from guardian.config import Config
from guardian.cycle import CycleResult, audit_cycle
from guardian.model import Lifecycle
from guardian.prices import load_catalog
from guardian.report.table import print_audit
from tests.fake_provider import NOW, FakeProvider, flat_samples, make_instance

WIDTHS = (80, 120, 200)
OPTIONAL = ("Region", "Type", "Last hour", "CPU", "Premium", "Needs")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> CycleResult:
    """A fleet with the widest cells an audit shows: long names, GCP's numeric ids, a p4d idle
    for days (four-digit idle minutes, thousands of dollars wasted), every verdict."""
    idle = make_instance(
        "i-0123456789abcdef0",
        name="llm-finetune-7b-with-a-rather-long-experiment-name",
        instance_type="p4d.24xlarge",
        gpu_count=8,
        gpu_model="NVIDIA A100-SXM4-40GB",
        launch_time=NOW - timedelta(days=9),
    )
    gcp = make_instance(
        "4610706727000123456",
        provider="gcp",
        account="acme-ml-research-prod",
        region="us-central1",
        zone="us-central1-a",
        name="render-t4",
        instance_type="n1-standard-4",
        gpu_model="nvidia-tesla-t4",
        lifecycle=Lifecycle.SPOT,
    )
    busy = make_instance("i-0fedcba9876543210", name="bert-pretrain", instance_type="g5.12xlarge")
    notebook = make_instance("i-00000000000000001", name="jupyter-alice")
    kept = make_instance("i-00000000000000002", tags={"guardian:protect": "true"})
    samples = {
        idle.key: flat_samples(95, 600, end=NOW - timedelta(days=3)) + flat_samples(0, 4320),
        busy.key: flat_samples(97, 24 * 60),
        notebook.key: flat_samples(30, 24 * 60),
        kept.key: flat_samples(0, 24 * 60),
    }
    provider = FakeProvider([idle, gcp, busy, notebook, kept], samples)
    config = Config.model_validate({"cost": {"lookback": "7d"}})
    catalog = load_catalog(tmp_path_factory.mktemp("state"))
    return audit_cycle(config, [provider], catalog, NOW)


def render(
    result: CycleResult, width: int, *, wide: bool = False, config: Config | None = None
) -> str:
    console = Console(width=width, record=True, color_system=None)
    print_audit(result, console, config, wide=wide)
    return console.export_text()


def table_parts(text: str) -> tuple[str, list[str]]:
    """The header (its lines joined) and the body rows of the rendered table."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if "━" in line)
    end = next(i for i in range(rule + 1, len(lines)) if not lines[i].strip())
    return " ".join(lines[:rule]), lines[rule + 1 : end]


def flat(text: str) -> str:
    return " ".join(text.split())


def essential_cells(result: CycleResult) -> list[str]:
    cells = []
    for f in result.findings:
        d, p = f.decision, f.price
        cells += [f.instance.instance_id, d.verdict.value]
        cells.append("—" if d.gpu_util_mean is None else f"{d.gpu_util_mean:.0f}/")
        cells.append("—" if d.idle_minutes is None else f"{d.idle_minutes:.0f}")
        cells.append("—" if p.hourly_price is None else f"${p.hourly_price:,.3f}")
        cells.append("—" if d.wasted_usd is None else f"${d.wasted_usd:,.2f}")
    return cells


@pytest.mark.parametrize("width", WIDTHS)
def test_no_essential_cell_is_cut(result: CycleResult, width: int) -> None:
    text = render(result, width)
    _, rows = table_parts(text)
    table = "\n".join(rows)
    assert max(len(line) for line in text.splitlines()) <= width
    for cell in essential_cells(result):
        assert cell in table, f"{cell!r} cut at {width} columns:\n{text}"
    assert "$…" not in table
    # No row wraps over many lines (backtest's did, over 14): name and id, at most.
    assert len(rows) <= 2 * len(result.findings)


def test_more_columns_join_as_the_width_grows(result: CycleResult) -> None:
    shown = {}
    for width in WIDTHS:
        header, _ = table_parts(render(result, width))
        shown[width] = {name for name in OPTIONAL if name in header}
    assert shown[80] == set()
    assert shown[80] < shown[120] < shown[200]
    assert shown[200] == set(OPTIONAL)


def test_hidden_columns_are_named_and_the_why_list_says_where(result: CycleResult) -> None:
    text = flat(render(result, 80))
    assert "Not shown at this width: Region, Type" in text
    assert "--wide shows them" in text
    assert "(p4d.24xlarge, us-east-1)" in text  # type and region move to the Why list
    # At 200 only the suggestion is left out: the Suggest list under the table gives it whole.
    wider = flat(render(result, 200))
    assert "Not shown at this width: Suggest (--wide shows them)" in wider
    assert "bert-pretrain: g5.16xlarge −$1,150/mo" in wider
    assert "Not shown" not in render(result, 230)


def test_wide_shows_every_column_at_any_width(result: CycleResult) -> None:
    text = render(result, 80, wide=True)
    header, _ = table_parts(text)
    assert all(name in header for name in OPTIONAL)
    assert "llm-finetune-7b-with-a-rather-long-experiment-name" in text
    assert "Not shown" not in text


def test_piped_output_uses_columns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from guardian.commands.common import data_console

    monkeypatch.setenv("COLUMNS", "97")
    assert data_console().width == 97
    monkeypatch.delenv("COLUMNS")
    assert data_console().width == 200  # piped with no width known: nothing is cut


@pytest.mark.parametrize("width", WIDTHS)
def test_the_backtest_table_fits_too(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # At 80 columns one row used to wrap over 14 lines.
    from typer.testing import CliRunner

    from guardian.cli import app

    monkeypatch.delenv("GUARDIAN_CONFIG", raising=False)
    trace = (
        Path(__file__).resolve().parents[2] / "bench/traces/philly-2017-job-windows-excerpt.csv.gz"
    )
    args = ["backtest", "--trace", str(trace), "--top", "5"]
    args += ["--set", "poll_interval=1m", "--set", "idle.grace=0s", "--set", "idle.window=5m"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    rule = next(i for i, line in enumerate(lines) if "───" in line)
    rows = lines[rule + 1 : next(i for i in range(rule + 1, len(lines)) if not lines[i].strip())]
    assert len(rows) <= 2 * 5  # an id may fold once; nothing else wraps
    header = " ".join(lines[:rule])
    for essential in ("instance", "hours", "tail h", "after h", "rupted", "saved"):
        assert essential in header
    assert "…" not in "\n".join(rows)


# ---- what the other issues added to the table: owners, "If enforced", "Suggest" --------------


@pytest.fixture(scope="module")
def owned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, CycleResult]:
    """Idle members of an Auto Scaling group and of reserved capacity beside a standalone one,
    and a notebook with a cheaper machine to suggest."""
    from guardian.model import Controller, ManagedBy

    group = ManagedBy(Controller.AUTOSCALING_GROUP, "gpu-pool")
    fleet = [
        make_instance("i-0aaaaaaaaaaaaaaa1", name="pool-worker", managed_by=group),
        make_instance("i-0aaaaaaaaaaaaaaa2", name="reserved-spare", reservation="cr-0abc123"),
        make_instance("i-0aaaaaaaaaaaaaaa3", name="forgotten"),
        make_instance("i-0aaaaaaaaaaaaaaa4", name="jupyter-bob"),
    ]
    samples = {i.key: flat_samples(0, 24 * 60, mem_mib=0) for i in fleet[:3]}
    samples[fleet[3].key] = flat_samples(8, 24 * 60, mem_mib=6000.0)
    config = Config()
    catalog = load_catalog(tmp_path_factory.mktemp("state"))
    return config, audit_cycle(config, [FakeProvider(fleet, samples)], catalog, NOW)


@pytest.mark.parametrize("width", WIDTHS)
def test_owners_enforce_and_suggestions_fit_every_width(
    owned: tuple[Config, CycleResult], width: int
) -> None:
    config, result = owned
    text = render(result, width, config=config)
    _, rows = table_parts(text)
    assert max(len(line) for line in text.splitlines()) <= width
    for cell in essential_cells(result):
        assert cell in "\n".join(rows), f"{cell!r} cut at {width} columns:\n{text}"
    assert len(rows) <= 3 * len(result.findings)  # name and id, or type, GPUs and owner
    assert "…" not in "\n".join(rows).replace("name-", "")  # no cell but a long name is cut
    flat_text = flat(text)
    # Whatever the width, the footers say what enforce would do and what right-sizing saves.
    assert "If enforced, 3 idle: 1 would be stopped, 2 alert-only: " in flat_text
    assert "right-sizing would save $" in flat_text
    assert "jupyter-bob: g6.xlarge −$147/mo (or CPU m6i.xlarge −$594/mo)" in flat_text


def test_hidden_owner_and_enforce_columns_move_to_the_why_list(
    owned: tuple[Config, CycleResult],
) -> None:
    config, result = owned
    narrow = flat(render(result, 80, config=config))
    hidden = narrow.split("Not shown at this width: ")[1].split(" (--wide")[0].split(", ")
    assert {"Region", "Type", "Suggest", "If enforced"} <= set(hidden)
    assert "pool-worker (g5.xlarge, us-east-1, Auto Scaling group gpu-pool): " in narrow
    assert "if enforced: alert (managed by Auto Scaling group)" in narrow
    assert "reserved-spare (g5.xlarge, us-east-1, reserved cr-0abc123): " in narrow
    assert "forgotten (g5.xlarge, us-east-1): " in narrow
    assert "if enforced: stop" in narrow
    # At 120 the type with its owner and what enforce would do are in the table itself.
    header, rows = table_parts(render(result, 120, config=config))
    assert "Type" in header
    assert "enforced" in header
    table = "\n".join(rows)
    assert "Auto Scaling group" in table
    assert "reserved cr-0abc123" in table
    assert "managed by" in table  # the alert's reason under "alert"
    assert "if enforced:" not in flat(render(result, 120, config=config))


def test_wide_shows_owners_enforce_and_suggest(owned: tuple[Config, CycleResult]) -> None:
    config, result = owned
    header, rows = table_parts(render(result, 80, config=config, wide=True))
    for name in (*OPTIONAL, "enforced", "Suggest"):
        assert name in header
    assert "g6.xlarge" in "\n".join(rows)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_rightsize_table_fits_too(owned: tuple[Config, CycleResult], width: int) -> None:
    from guardian.report.rightsize import print_rightsize

    _, result = owned
    console = Console(width=width, record=True, color_system=None)
    print_rightsize(result, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    for instance_id in ("i-0aaaaaaaaaaaaaaa3", "i-0aaaaaaaaaaaaaaa4"):
        assert instance_id in text  # never cut
    # The reason is in the table when there is room, else one line each under it: never
    # wrapped in a narrow cell (at 80 columns one reason took 17 lines).
    assert "jupyter-bob: 0 of 1 GPUs used" in flat(text) or width > 120
    assert "or CPU m6i.xlarge" in text
    _, rows = table_parts(text)
    assert len(rows) <= 4 * 2


@pytest.mark.parametrize("width", WIDTHS)
def test_the_status_tables_fit_too(
    width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from guardian.commands.status import _print

    monkeypatch.setenv("COLUMNS", str(width))
    replica = "guardian-7d9f8c6b5-x2k4q/1234"
    unit = "aws/123456789012/ap-southeast-2"
    _print(
        {
            "backend": "postgresql",
            "lag_s": 42.0,
            "last_completed_cycle": {"cycle": "c-1"},
            "outbox_pending": 0,
            "outbox_oldest_pending": None,
            "replicas": [
                {"id": replica, "version": "0.1.0", "started_at": None, "seen_at": None,
                 "cycle": "c-1", "units_running": 3, "units_done": 17},
            ],
            "units": [
                {"unit": unit, "state": "failed", "owner": replica, "token": 7, "instances": None,
                 "duration_s": 12.3, "error": "AccessDenied: not authorized to perform "
                 "ec2:DescribeInstances on this resource, at all, ever"},
            ],
            "open_episodes": [
                {"instance_id": "i-0123456789abcdef0", "name": "llm-finetune-7b",
                 "account": "123456789012", "region": "us-east-1", "warned_at": None,
                 "deadline": None, "promise": "stop", "stop_state": None, "blocked_reason": None},
            ],
            "plan_errors": [],
        }
    )  # fmt: skip
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= width
    for whole in (replica, unit, "i-0123456789abcdef0 (llm-finetune-7b)", "ec2:DescribeInstances"):
        assert whole in text

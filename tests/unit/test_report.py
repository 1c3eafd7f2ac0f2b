"""The audit's JSON contract, CSV, totals and table, over a FakeProvider fleet."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Console

from guardian.config import Config
from guardian.cycle import CycleResult, audit_cycle
from guardian.model import Verdict
from guardian.report.document import HOURS_PER_MONTH, findings_csv, findings_json
from guardian.report.table import print_audit, sparkline
from tests.fake_provider import CATALOG, NOW, FakeProvider, flat_samples, make_instance

FINDING_KEYS = {
    "provider", "account", "region", "zone", "instance_id", "name", "instance_type", "gpu_count",
    "gpu_model", "launch_time", "lifecycle", "owner", "tags", "gpu_util_mean", "gpu_util_max",
    "gpu_mem_used_max_mib", "idle_minutes", "metric_coverage", "hourly_price", "price_source",
    "cpu_equivalent", "premium", "required_speedup", "verdict", "reasons", "wasted_usd", "action",
    "managed_by", "reserved", "reservation", "local_disk_used_mib", "enforce", "enforce_reason",
    "recommendation", "rightsize_note",
}  # fmt: skip


def fleet() -> FakeProvider:
    idle = make_instance("i-idle")
    busy = make_instance("i-busy")
    dark = make_instance("i-dark")
    unpriced = make_instance("i-odd", instance_type="x9.weird")
    samples = {
        idle.key: flat_samples(90, 600, end=NOW - __import__("datetime").timedelta(hours=2))
        + flat_samples(0, 120, mem_mib=0),
        busy.key: flat_samples(95, 24 * 60),
        unpriced.key: flat_samples(0, 180, mem_mib=0),
    }
    return FakeProvider([idle, busy, dark, unpriced], samples)


def run() -> tuple[Config, object]:
    config = Config()
    return config, audit_cycle(config, [fleet()], CATALOG, NOW)


def test_json_contract() -> None:
    config, result = run()
    document = json.loads(json.dumps(findings_json(result, config)))  # type: ignore[arg-type]
    assert set(document) >= {"generated_at", "config", "findings", "totals"}
    assert document["generated_at"] == f"{NOW.date()}T12:00:00Z"
    for finding in document["findings"]:
        assert set(finding) == FINDING_KEYS
        assert set(finding["cpu_equivalent"]) == {"instance_type", "hourly_price"}
    by_id = {f["instance_id"]: f for f in document["findings"]}
    assert by_id["i-idle"]["verdict"] == "idle"
    assert by_id["i-idle"]["cpu_equivalent"] == {
        "instance_type": "m7i.xlarge",
        "hourly_price": 0.2016,
    }
    assert by_id["i-idle"]["premium"] == round(1.006 / 0.2016, 2)
    assert by_id["i-idle"]["wasted_usd"] == round(2 * 1.006, 2)
    assert by_id["i-busy"]["verdict"] == "busy"
    assert by_id["i-dark"]["verdict"] == "unmeasured"
    assert by_id["i-dark"]["gpu_util_mean"] is None
    odd = by_id["i-odd"]
    assert odd["hourly_price"] is None
    assert odd["premium"] is None
    assert odd["wasted_usd"] is None
    assert sum("no price for x9.weird" in r for r in odd["reasons"]) == 1  # said once
    # sorted by money wasted, most first
    assert document["findings"][0]["instance_id"] == "i-idle"
    totals = document["totals"]
    assert totals["instances"] == 4
    assert totals["hourly_burn_usd"] == round(3 * 1.006, 2)
    assert totals["idle_burn_usd_per_hour"] == 1.01
    assert totals["projected_monthly_waste_usd"] == round(1.01 * HOURS_PER_MONTH, 2)
    assert totals["by_verdict"] == {
        "idle": 2, "underused": 0, "busy": 1, "unmeasured": 1, "protected": 0,
    }  # fmt: skip


def test_csv_has_a_row_per_finding() -> None:
    _config, result = run()
    rows = list(csv.DictReader(io.StringIO(findings_csv(result))))  # type: ignore[arg-type]
    assert len(rows) == 4
    dark = next(r for r in rows if r["instance_id"] == "i-dark")
    assert dark["gpu_util_mean"] == ""
    assert dark["verdict"] == "unmeasured"


def test_table_shows_every_instance_and_totals() -> None:
    _config, result = run()
    console = Console(width=250, record=True)
    print_audit(result, console)  # type: ignore[arg-type]
    text = console.export_text()
    for instance_id in ("i-idle", "i-busy", "i-dark", "i-odd"):
        assert instance_id in text
    assert "4 GPU instances (1 unpriced, not in the sums)" in text
    assert "idle burn $1.01/h" in text


def test_sparkline_never_draws_a_gap_as_zero() -> None:
    assert sparkline([0.0, None, 100.0, 50.0]) == "▁·█▅"


def test_idle_instance_sparkline_covers_last_hour() -> None:
    _config, result = run()
    idle = next(f for f in result.findings if f.instance.instance_id == "i-idle")  # type: ignore[attr-defined]
    assert len(idle.sparkline) == 30
    assert all(v == 0 for v in idle.sparkline)
    assert idle.decision.verdict is Verdict.IDLE


def test_an_unknown_price_is_explained_once() -> None:
    # The policy already quotes the price problem when it cannot judge underuse.
    busy_odd = make_instance("i-busy-odd", instance_type="x9.weird")
    provider = FakeProvider([busy_odd], {busy_odd.key: flat_samples(90, 24 * 60)})
    result = audit_cycle(Config(), [provider], CATALOG, NOW)
    (finding,) = findings_json(result, Config())["findings"]
    assert finding["verdict"] == "busy"
    assert sum("no price for x9.weird" in r for r in finding["reasons"]) == 1


def test_owners_reservations_and_what_enforce_would_do_are_reported() -> None:
    from guardian.model import Controller, ManagedBy

    pool = ManagedBy(Controller.EKS_NODEGROUP, "gpu-ng", "prod")
    fleet_ = [
        make_instance("i-node", managed_by=pool),
        make_instance("i-res", reservation="cr-0abc"),
        make_instance("i-ssd", has_instance_store=True),
        make_instance("i-free"),
    ]
    idle = flat_samples(0, 120, mem_mib=0)
    provider = FakeProvider(fleet_, {i.key: idle for i in fleet_})
    config = Config()
    result = audit_cycle(config, [provider], CATALOG, NOW)
    document = findings_json(result, config)
    by_id = {f["instance_id"]: f for f in document["findings"]}
    assert by_id["i-node"]["managed_by"] == {"kind": "eks-nodegroup", "name": "gpu-ng",
                                             "cluster": "prod"}  # fmt: skip
    assert (by_id["i-res"]["reserved"], by_id["i-res"]["reservation"]) == (True, "cr-0abc")
    assert by_id["i-free"]["managed_by"] is None
    assert {i: f["enforce"] for i, f in by_id.items()} == {
        "i-node": "alert (managed by EKS node group)",
        "i-res": "alert (reserved capacity)",
        "i-ssd": "alert (local disk not reported)",
        "i-free": "stop",
    }
    assert "min" in by_id["i-node"]["enforce_reason"]
    assert document["totals"]["enforce"] == {
        "idle": 4,
        "stop": 1,
        "standby+stop": 0,
        "alert": 3,
        "alert_by_reason": {
            "managed by EKS node group": 1,
            "reserved capacity": 1,
            "local disk not reported": 1,
        },
    }
    rows = {r["instance_id"]: r for r in csv.DictReader(io.StringIO(findings_csv(result, config)))}
    assert rows["i-node"]["managed_by"] == "eks-nodegroup:gpu-ng"
    assert rows["i-res"]["reserved"] == "True"
    assert rows["i-free"]["enforce"] == "stop"
    console = Console(width=300, record=True)
    print_audit(result, console, config)
    text = console.export_text()
    assert "EKS node group gpu-ng" in text  # under the type
    assert "If enforced, 4 idle: 1 would be stopped, 3 alert-only: " in text


# -- right-sizing in every output ------------------------------------------------------------


def rightsized() -> tuple[Config, CycleResult]:
    """A notebook that does not earn its premium (the CPU move), a busy box (nothing cheaper in
    this small catalog) and a protected one (marked, never sized)."""
    notebook = make_instance("i-notebook")
    busy = make_instance("i-busy")
    kept = make_instance("i-kept", tags={"guardian:protect": "true"})
    provider = FakeProvider(
        [notebook, busy, kept],
        {
            notebook.key: flat_samples(8, 24 * 60, mem_mib=6000.0),
            busy.key: flat_samples(95, 24 * 60),
            kept.key: flat_samples(3, 24 * 60),
        },
    )
    config = Config()
    return config, audit_cycle(config, [provider], CATALOG, NOW)


SAVES = round((1.006 - 0.2016) * HOURS_PER_MONTH, 2)  # g5.xlarge → m7i.xlarge: 587.21


def test_the_recommendation_is_in_the_json_csv_and_table() -> None:
    config, result = rightsized()
    document = json.loads(json.dumps(findings_json(result, config)))
    by_id = {f["instance_id"]: f for f in document["findings"]}
    rec = by_id["i-notebook"]["recommendation"]
    assert set(rec) >= {
        "instance_type", "hourly_price", "saves_usd_month", "gpus_used", "peak_gpu_mem_mib",
        "reason",
    }  # fmt: skip
    assert (rec["move"], rec["instance_type"], rec["hourly_price"]) == ("cpu", "m7i.xlarge", 0.2016)
    assert rec["saves_usd_month"] == SAVES
    assert (rec["gpus_used"], rec["peak_gpu_mem_mib"]) == (0, 6000.0)
    assert "does not earn its premium" in rec["reason"]
    assert by_id["i-busy"]["recommendation"] is None
    assert by_id["i-busy"]["rightsize_note"].startswith("no cheaper type in us-east-1")
    assert by_id["i-kept"]["recommendation"] is None
    assert by_id["i-kept"]["rightsize_note"] == "protected: not sized"
    assert document["totals"]["rightsizing_saves_usd_month"] == SAVES
    assert document["config"]["rightsize"] == {
        "gpu_busy_above": 10.0, "headroom": 1.25, "host_metrics": True,
    }  # fmt: skip

    rows = {r["instance_id"]: r for r in csv.DictReader(io.StringIO(findings_csv(result)))}
    assert rows["i-notebook"]["recommendation_instance_type"] == "m7i.xlarge"
    assert rows["i-notebook"]["recommendation_saves_usd_month"] == str(SAVES)
    assert rows["i-busy"]["recommendation_instance_type"] == ""
    assert rows["i-kept"]["rightsize_note"] == "protected: not sized"

    console = Console(width=300, record=True)
    print_audit(result, console)
    text = console.export_text()
    assert "Suggest" in text
    assert "CPU m7i.xlarge" in text
    assert "right-sizing would save $587/month" in text


def test_guardian_rightsize_prints_only_recommendations_largest_first() -> None:
    from guardian.report.rightsize import print_rightsize, rightsize_csv, rightsize_json

    _config, result = rightsized()
    document = rightsize_json(result)
    assert [r["instance_id"] for r in document["recommendations"]] == ["i-notebook"]
    assert document["totals"] == {"recommendations": 1, "saves_usd_month": SAVES}
    marked = {r["instance_id"]: r["note"] for r in document["no_recommendation"]}
    assert marked["i-kept"] == "protected: not sized"
    rows = list(csv.DictReader(io.StringIO(rightsize_csv(result))))
    assert [(r["instance_id"], r["recommendation_move"]) for r in rows] == [("i-notebook", "cpu")]
    console = Console(width=200, record=True)
    print_rightsize(result, console)
    text = console.export_text()
    assert "1 recommendation · right-sizing would save $587/month" in text
    assert "name-i-kept: protected: not sized" in text

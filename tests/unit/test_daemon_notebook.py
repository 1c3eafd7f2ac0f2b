"""The daemon's side of the notebook signal: providers built with it, a cycle deciding on what a
provider delivered, and a warning that tells the owner what to save."""

from __future__ import annotations

from datetime import timedelta

from guardian.config import Config, parse_config
from guardian.cycle import audit_cycle
from guardian.daemon.messages import render, warning_message
from guardian.model import GpuSample, InstanceMetric, Verdict
from guardian.policy import NOTEBOOK_ADVICE
from guardian.providers.factory import aws_instance_series, build_providers, gcp_instance_series
from tests.fake_provider import CATALOG, NOW, FakeProvider, flat_samples, make_instance


def notebook_day(quiet_minutes: int) -> tuple[GpuSample, ...]:
    """Cells of 5 busy minutes between 30-minute think pauses, then ``quiet_minutes``."""
    samples = flat_samples(1.0, quiet_minutes)
    end = NOW - timedelta(minutes=quiet_minutes)
    for _ in range(6):
        samples = flat_samples(90.0, 5, end=end) + samples
        end -= timedelta(minutes=5)
        samples = flat_samples(1.0, 30, end=end) + samples
        end -= timedelta(minutes=30)
    return samples


def test_the_daemon_reads_the_signal_it_is_configured_for() -> None:
    config = parse_config(
        {
            "aws": {"metrics": {"namespace": "Lab"}},
            "gcp": {"enabled": True, "credentials": "anonymous", "projects": ["lab"]},
        }
    )
    (aws,) = [s for s in aws_instance_series(config) if s.key is InstanceMetric.NOTEBOOK_IDLE_S]
    assert (aws.key, aws.namespace, aws.metric, aws.stat, aws.listed) == (
        InstanceMetric.NOTEBOOK_IDLE_S,
        "Lab",
        "guardian_notebook_idle",
        "Minimum",
        True,
    )
    (gcp,) = [s for s in gcp_instance_series(config) if s.key is InstanceMetric.NOTEBOOK_IDLE_S]
    assert gcp.metric_type == "custom.googleapis.com/guardian/notebook/idle_seconds"
    aws_provider, gcp_provider = build_providers(config)
    try:
        # What `guardian run` and `guardian audit` build: the providers carry the specs.
        assert aws in aws_provider._names.instance_series  # type: ignore[attr-defined]
        assert gcp in gcp_provider._instance_series  # type: ignore[attr-defined]
    finally:
        aws_provider.close()
        gcp_provider.close()


def test_a_cycle_stops_the_notebook_machine_and_the_warning_says_what_to_save() -> None:
    left = make_instance("i-left", owner="ada")
    open_tab = make_instance("i-open")
    samples = notebook_day(70)
    provider = FakeProvider(
        [left, open_tab],
        samples={left.key: samples, open_tab.key: samples},
        notebook={left.key: ((samples[-1].at, 70 * 60.0),)},  # only one has no browser
    )
    findings = {
        f.instance.instance_id: f for f in audit_cycle(Config(), [provider], CATALOG, NOW).findings
    }
    decision = findings["i-left"].decision
    assert decision.verdict is Verdict.IDLE
    assert decision.notebook_idle_minutes == 70
    assert findings["i-open"].decision.verdict is not Verdict.IDLE  # today's waits
    message = warning_message(
        findings["i-left"],
        now=NOW,
        deadline=NOW + timedelta(minutes=15),
        will_stop=True,
        dry_run=False,
        alert_only_reason=None,
        instance_store_loss=False,
    )
    _, body = render(message, "text")
    assert f"Notebook: {NOTEBOOK_ADVICE}" in body
    assert "notebook kernel idle for 70 min, no browser connected" in body
    assert "guardian:keep-until=" in body  # and how to keep it
    plain = warning_message(
        findings["i-open"],
        now=NOW,
        deadline=NOW + timedelta(minutes=15),
        will_stop=True,
        dry_run=False,
        alert_only_reason=None,
        instance_store_loss=False,
    )
    assert NOTEBOOK_ADVICE not in render(plain, "text")[1]

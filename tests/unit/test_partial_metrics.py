"""A memory series that could not be read is a failed fetch, not an absent series (GCP side;
AWS: ``test_aws_batching.py``). Read as absent, an instance warned because its job released the
GPU memory would turn busy for a cycle and have its warning withdrawn, then be warned again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from guardian.errors import Unavailable
from guardian.providers.gcp.metrics import ProjectSeries, utilisation_for
from tests.fake_provider import make_instance

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def test_a_failed_memory_query_makes_the_vm_unmeasured_an_absent_one_does_not() -> None:
    vm = make_instance("123", provider="gcp", account="proj-a", region="us-central1")
    util = ProjectSeries({"123": {"0": [(NOW - timedelta(minutes=m), 0.0) for m in range(5)]}})
    absent = utilisation_for(vm, util, ProjectSeries(), "util", 60)
    assert absent.error is None
    assert absent.samples
    failed = utilisation_for(vm, util, Unavailable("503 UNAVAILABLE"), "util", 60)
    assert failed.fetch_failed
    assert failed.error == "Cloud Monitoring memory query failed: 503 UNAVAILABLE"
    assert failed.samples == ()

"""``prices refresh`` for GCP: the real ``google-cloud-billing`` client against the local gRPC
fake of the Cloud Billing Catalog, through the shared ``price_refresh.refresh``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.config import Config
from guardian.errors import AuthError
from guardian.prices.catalog import load_catalog, load_embedded, read_cache
from guardian.prices.refresh_gcp import SOURCE_NAME, GcpCatalogSource, refresh_gcp
from tests.clock import DAY, at
from tests.fakes.gcp_billing import COMPUTE_ENGINE_SERVICE_ID, FakeBillingServer, FakeBillingState

NOW = at(23)  # late in the day: the source is labelled with the fetch's UTC date


@pytest.fixture
def billing() -> Iterator[FakeBillingServer]:
    server = FakeBillingServer(FakeBillingState(page_size=7)).start()
    yield server
    server.stop()


def _config(billing: FakeBillingServer, state_dir: Path) -> Config:
    return Config.model_validate(
        {
            "state_dir": str(state_dir),
            "gcp": {
                "enabled": True,
                "projects": ["p"],
                "credentials": "anonymous",
                "billing_endpoint": billing.endpoint,
            },
        }
    )


def test_refresh_reprices_every_known_shape_from_the_skus(
    billing: FakeBillingServer, tmp_path: Path
) -> None:
    config = _config(billing, tmp_path)
    source = GcpCatalogSource.from_config(config.gcp)
    report = refresh_gcp(config, ["us-central1", "europe-west4"], tmp_path, NOW, source=source)
    source.close()

    assert report.failures == {}
    assert {o.region for o in report.outcomes} == {"us-central1", "europe-west4"}
    # One ListServices walk and one paged ListSkus for both regions.
    calls = billing.state.calls
    skus = [c for c in calls if c.method == "ListSkus"]
    assert skus[0].parent == f"services/{COMPUTE_ENGINE_SERVICE_ID}"
    assert {c.currency_code for c in skus} == {"USD"}
    assert len(skus) == -(-len(billing.state.skus) // 7)  # every page, once
    assert [c.page_token for c in calls if c.method == "ListServices"] == ["", "2"]

    embedded, refreshed = load_embedded(), load_catalog(tmp_path)
    for name in (
        "n1-standard-8",
        "e2-standard-8",
        "n2-standard-8",
        "a2-highgpu-1g",
        "g2-standard-8",
    ):
        old = embedded.lookup("gcp", "us-central1", name)
        new = refreshed.lookup("gcp", "us-central1", name)
        assert old is not None
        assert new is not None
        assert new.hourly_usd == pytest.approx(old.hourly_usd, abs=1e-4), name
        assert refreshed.source_of("gcp", "us-central1", name) == f"{SOURCE_NAME} {DAY.date()}"
    accelerators = refreshed.accelerators["gcp"]["us-central1"]
    assert accelerators["nvidia-tesla-t4"] == pytest.approx(0.35)
    assert accelerators["nvidia-h100-80gb"] == pytest.approx(9.7965)
    assert "nvidia-tesla-t4-virtual-workstation" not in accelerators
    # Europe: N1 and T4 are in the catalogue, A2 is not: priced as far as known, no further.
    assert refreshed.lookup("gcp", "europe-west4", "n1-standard-8") is not None
    assert refreshed.lookup("gcp", "europe-west4", "a2-highgpu-1g") is None
    assert refreshed.accelerators["gcp"]["europe-west4"] == {"nvidia-tesla-t4": 0.35}
    cached = read_cache(tmp_path / "prices-cache.json")
    assert ("gcp", "europe-west4") in cached.regions


def test_a_region_without_skus_fails_alone_and_keeps_its_old_prices(
    billing: FakeBillingServer, tmp_path: Path
) -> None:
    config = _config(billing, tmp_path)
    report = refresh_gcp(
        config,
        ["us-central1", "antarctica-south1"],
        tmp_path,
        NOW,
        source=GcpCatalogSource.from_config(config.gcp),
    )
    assert [o.region for o in report.outcomes] == ["us-central1"]
    assert "antarctica-south1" in report.failures
    assert "no on-demand Compute Engine prices" in report.failures["antarctica-south1"]


def test_permission_denied_stops_the_refresh_before_anything_is_written(
    billing: FakeBillingServer, tmp_path: Path
) -> None:
    billing.state.fail = ("PERMISSION_DENIED", "cloudbilling.skus.list denied")
    config = _config(billing, tmp_path)
    with pytest.raises(AuthError, match="PermissionDenied"):
        refresh_gcp(
            config, ["us-central1"], tmp_path, NOW, source=GcpCatalogSource.from_config(config.gcp)
        )
    assert not (tmp_path / "prices-cache.json").exists()

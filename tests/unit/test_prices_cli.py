"""``guardian prices`` and ``guardian prices refresh`` through typer, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import typer
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber
from typer.testing import CliRunner

from guardian.commands import prices
from guardian.errors import ConfigError, GuardianError, ProviderError
from guardian.logs import configure_logging
from guardian.prices import sources
from guardian.prices.catalog import CACHE_FILENAME, embedded_as_of
from guardian.prices.refresh_aws import AwsPricingSource

AS_OF = embedded_as_of()["aws"].isoformat()


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # as guardian.cli does: logs to stderr, stdout carries data only
        configure_logging("json", "info")

    prices.register(app)
    return app


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file whose state dir is a fresh folder; GUARDIAN_CONFIG points at it."""
    state_dir = tmp_path / "state"
    config = tmp_path / "guardian.yaml"
    config.write_text(f"state_dir: {state_dir}\n")
    monkeypatch.setenv("GUARDIAN_CONFIG", str(config))
    return state_dir


def run(*args: str, columns: int | None = None) -> Any:
    env = {"COLUMNS": str(columns)} if columns else None
    return CliRunner().invoke(make_app(), ["prices", *args], catch_exceptions=True, env=env)


def run_json(*args: str) -> dict[str, Any]:
    result = run("--format", "json", *args)
    assert result.exit_code == 0, (result.output, result.exception)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def row(document: dict[str, Any], region: str, instance_type: str) -> dict[str, Any]:
    (section,) = [s for s in document["regions"] if s["region"] == region]
    (found,) = [r for r in section["gpu_types"] if r["instance_type"] == instance_type]
    return found  # type: ignore[no-any-return]


def test_json_lists_gpu_types_with_equivalent_premium_and_reading(state: Path) -> None:
    document = run_json("--region", "us-east-1")
    assert document["rule_of_thumb"] == [2.0, 3.0]
    assert document["catalog_as_of"]["aws"] == AS_OF
    (section,) = document["regions"]
    assert (section["provider"], section["region"]) == ("aws", "us-east-1")
    assert section["price_sources"] == [f"catalog {AS_OF}"]
    assert all(r["gpu_count"] > 0 for r in section["gpu_types"])
    g5 = row(document, "us-east-1", "g5.xlarge")
    assert g5 == {
        "instance_type": "g5.xlarge",
        "gpu_count": 1,
        "gpu_model": "NVIDIA A10G",
        "gpu_memory_gib": 24.0,
        "vcpus": 4.0,
        "memory_gib": 16.0,
        "hourly_price": 1.006,
        "price_source": f"catalog {AS_OF}",
        "cpu_equivalent": {"instance_type": "m6i.xlarge", "hourly_price": 0.192},
        "premium": 5.24,
        "rule_of_thumb": "above",
        "reason": None,
    }
    assert row(document, "us-east-1", "g4dn.xlarge")["rule_of_thumb"] == "within"
    assert row(document, "us-east-1", "g4dn.2xlarge")["rule_of_thumb"] == "below"


def test_the_table_shows_the_columns_a_person_reads(state: Path) -> None:
    result = run("--region", "us-east-1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("GPU type", "CPU equivalent", "Premium", "2–3× rule", "g5.xlarge",
                 "1 × NVIDIA A10G 24 GiB", "m6i.xlarge", "$1.0060", "$0.1920", "5.24×",
                 "above 3×", "within 2–3×", f"catalog {AS_OF}"):  # fmt: skip
        assert text in out, text
    assert out.index("g5.xlarge") < out.index("g5.48xlarge")  # sizes in order


def test_at_80_columns_the_prices_stay_whole(state: Path) -> None:
    result = run("--region", "us-east-1", columns=80)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    for text in ("GPU type", "CPU equivalent", "Premium", "g5.48xlarge", "$1.0060", "m6i.xlarge",
                 "$0.1920", "5.24×", "Not shown at this width: GPUs"):  # fmt: skip
        assert text in out, text
    assert "…" not in out


def test_an_unknown_region_is_one_line_naming_the_known_ones(state: Path) -> None:
    result = run("--region", "mars-north-1")
    assert isinstance(result.exception, GuardianError)  # cli.main: one line, exit 2
    message = str(result.exception)
    assert "\n" not in message
    assert "mars-north-1" in message
    assert "us-east-1" in message
    assert "us-central1" in message
    gcp_only = run("--provider", "gcp", "--region", "us-east-1")
    assert isinstance(gcp_only.exception, GuardianError)
    assert "us-central1" in str(gcp_only.exception)
    assert "eu-west-1" not in str(gcp_only.exception)


def test_config_decides_regions_rule_of_thumb_and_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = tmp_path / "custom.yaml"
    config.write_text(
        f"state_dir: {state_dir}\n"
        "cost: {rule_of_thumb: [5.0, 6.0]}\n"
        "aws: {regions: [eu-west-1, ap-south-1]}\n"
    )
    document = run_json("--config", str(config))
    assert [(s["provider"], s["region"]) for s in document["regions"]] == [
        ("aws", "eu-west-1"),
        ("aws", "ap-south-1"),
    ]
    assert document["rule_of_thumb"] == [5.0, 6.0]
    g5 = row(document, "eu-west-1", "g5.xlarge")
    assert g5["cpu_equivalent"]["instance_type"] == "m6i.xlarge"
    assert g5["rule_of_thumb"] == "within"  # 5.25× against [5, 6]
    south = document["regions"][1]
    assert south["gpu_types"] == []
    assert "no prices for ap-south-1" in south["note"]


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "nope.yaml"))
    assert isinstance(result.exception, ConfigError)


def test_gcp_shows_bundled_types_and_attachable_gpu_prices(state: Path) -> None:
    document = run_json("--provider", "gcp", "--region", "us-central1,us-east1")
    assert [s["region"] for s in document["regions"]] == ["us-central1", "us-east1"]
    a2 = row(document, "us-central1", "a2-highgpu-1g")
    assert a2["gpu_model"] == "nvidia-tesla-a100"
    assert a2["premium"] is not None
    central = document["regions"][0]
    t4 = [a for a in central["accelerators"] if a["accelerator_type"] == "nvidia-tesla-t4"]
    assert t4 == [{"accelerator_type": "nvidia-tesla-t4", "hourly_price_per_gpu": 0.35}]
    # N1 types are no GPU types on their own: they do not appear as rows.
    assert not [r for r in central["gpu_types"] if r["instance_type"].startswith("n1-")]


def test_an_unreadable_state_dir_falls_back_to_the_embedded_catalog(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tmp_path / "guardian.yaml"
    config.write_text(f"state_dir: {blocker / 'state'}\n")
    result = run("--format", "json", "--region", "us-east-1", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["regions"][0]["price_sources"] == [f"catalog {AS_OF}"]
    assert "price_cache_ignored" in result.stderr


# ---------------------------------------------------------------- refresh


def product(instance_type: str, vcpu: str, memory: str, usd: str, gpu: str | None = None) -> str:
    attributes = {
        "instanceType": instance_type,
        "vcpu": vcpu,
        "memory": memory,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "operation": "RunInstances",
        "regionCode": "us-east-1",
        "servicecode": "AmazonEC2",
    }
    if gpu:
        attributes["gpu"] = gpu
    dimension = {"unit": "Hrs", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": usd}}
    return json.dumps(
        {
            "product": {"productFamily": "Compute Instance", "attributes": attributes},
            "serviceCode": "AmazonEC2",
            "terms": {"OnDemand": {"S.T": {"priceDimensions": {"S.T.D": dimension}}}},
        }
    )


def params(region: str) -> dict[str, Any]:
    fields = [("regionCode", region), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
              ("preInstalledSw", "NA"), ("capacitystatus", "Used")]  # fmt: skip
    return {
        "ServiceCode": "AmazonEC2",
        "Filters": [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in fields],
        "FormatVersion": "aws_v1",
        "MaxResults": 100,
    }


@pytest.fixture
def stubber(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubber]:
    """The real AwsPricingSource on a Stubber-backed client, handed to the command."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = boto3.client(
        "pricing", region_name="us-east-1", config=BotoConfig(retries={"total_max_attempts": 1})
    )
    source = AwsPricingSource(client)
    monkeypatch.setattr(
        sources, "source_for", lambda provider, _config: source if provider == "aws" else None
    )
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


def test_refresh_prints_what_changed_and_prices_then_use_it(state: Path, stubber: Stubber) -> None:
    stubber.add_response(
        "get_products",
        {
            "FormatVersion": "aws_v1",
            "PriceList": [
                product("g5.xlarge", "4", "16 GiB", "1.2072", gpu="1"),  # +20 %
                product("p5en.48xlarge", "192", "2,048 GiB", "63.296", gpu="8"),
                product("m6i.xlarge", "4", "16 GiB", "0.192"),
            ],
        },
        params("us-east-1"),
    )
    result = run("refresh", "--region", "us-east-1")
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert "aws us-east-1: 3 types (1 new, 1 changed, 1 unchanged)" in lines
    assert "biggest moves:" in lines
    assert "  us-east-1 g5.xlarge: $1.0060 → $1.2072 (+20.0%)" in lines
    assert lines[-1] == f"wrote {state / CACHE_FILENAME}"

    document = run_json("--region", "us-east-1")
    g5 = row(document, "us-east-1", "g5.xlarge")
    assert g5["hourly_price"] == 1.2072
    assert g5["price_source"].startswith("aws-pricing-api ")
    assert row(document, "us-east-1", "g6.xlarge")["price_source"] == f"catalog {AS_OF}"
    assert row(document, "us-east-1", "p5en.48xlarge")["gpu_count"] == 8
    assert len(document["regions"][0]["price_sources"]) == 2


def test_refresh_with_a_failed_region_says_so_and_exits_with_an_error(
    state: Path, stubber: Stubber
) -> None:
    stubber.add_response(
        "get_products",
        {
            "FormatVersion": "aws_v1",
            "PriceList": [product("g5.xlarge", "4", "16 GiB", "1.006", "1")],
        },
        params("us-east-1"),
    )
    stubber.add_client_error(
        "get_products",
        service_error_code="ServiceUnavailable",
        service_message="try later",
        http_status_code=503,
        expected_params=params("eu-west-1"),
    )
    result = run("refresh", "--region", "us-east-1", "--region", "eu-west-1")
    assert isinstance(result.exception, ProviderError)
    assert "1 of 2 regions failed" in str(result.exception)
    assert "eu-west-1: not refreshed, old prices kept" in result.stdout
    assert (state / CACHE_FILENAME).exists()


def test_refresh_access_denied_is_one_line(state: Path, stubber: Stubber) -> None:
    stubber.add_client_error(
        "get_products",
        service_error_code="AccessDeniedException",
        service_message="not authorized to perform: pricing:GetProducts",
        http_status_code=400,
        expected_params=params("us-east-1"),
    )
    result = run("refresh", "--region", "us-east-1")
    assert type(result.exception).__name__ == "AuthError"
    assert "\n" not in str(result.exception)
    assert not (state / CACHE_FILENAME).exists()


def test_refresh_gcp_reads_the_billing_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.gcp_billing import FakeBillingServer

    billing = FakeBillingServer().start()
    try:
        state_dir = tmp_path / "state"
        config = tmp_path / "guardian.yaml"
        config.write_text(
            f"state_dir: {state_dir}\n"
            "gcp: {enabled: true, projects: [p], credentials: anonymous, "
            f"billing_endpoint: '{billing.endpoint}'}}\n"
        )
        monkeypatch.setenv("GUARDIAN_CONFIG", str(config))
        result = run("refresh", "--provider", "gcp", "--region", "us-central1")
    finally:
        billing.stop()
    assert result.exit_code == 0, (result.output, result.exception)
    assert (state_dir / CACHE_FILENAME).exists()
    assert any(c.method == "ListSkus" for c in billing.state.calls)


def test_importing_the_command_loads_no_cloud_sdk() -> None:
    code = (
        "import sys, guardian.commands.prices, guardian.prices.catalog, guardian.prices.refresh; "
        "bad = [m for m in ('boto3', 'botocore', 'google.cloud') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_set_overrides_apply_like_in_other_commands(state: Path) -> None:
    document = run_json("--region", "eu-west-1", "--set", "cost.rule_of_thumb=[5.0, 6.0]")
    assert row(document, "eu-west-1", "g5.xlarge")["rule_of_thumb"] == "within"


def test_refresh_takes_the_config_given_before_the_subcommand(
    state: Path, stubber: Stubber, tmp_path: Path
) -> None:
    other_state = tmp_path / "other-state"
    other = tmp_path / "other.yaml"
    other.write_text(f"state_dir: {other_state}\n")
    stubber.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [product("g5.xlarge", "4", "16 GiB", "1.1", "1")]},
        params("us-east-1"),
    )
    result = CliRunner().invoke(
        make_app(), ["prices", "--config", str(other), "refresh", "--region", "us-east-1"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert (other_state / CACHE_FILENAME).exists()
    assert not (state / CACHE_FILENAME).exists()

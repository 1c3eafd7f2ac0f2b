"""``guardian.prices.refresh`` against the real botocore Pricing client, stubbed with Stubber.

moto has no Pricing API, so botocore's Stubber answers: it checks every request's parameters
(the exact filters we send) and returns PriceList documents shaped like the real ones.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber

from guardian.config import parse_config
from guardian.errors import AuthError, GuardianError, ProviderError, Throttled, Unavailable
from guardian.prices import TypePrice
from guardian.prices.catalog import (
    CACHE_FILENAME,
    PriceCache,
    RegionPrices,
    load_catalog,
    load_embedded,
    read_cache,
    write_cache,
)
from guardian.prices.refresh import default_regions, refresh
from guardian.prices.refresh_aws import AwsPricingSource, _map_aws_error, parse_ec2_product
from guardian.prices.sources import source_for
from tests.clock import DAY, at

NOW = at(23, 59)  # a minute before midnight: the source is labelled with this UTC day
EARLIER = DAY - timedelta(days=56)
# The Pricing API's own dates, as it writes them: a reserved term from last year, an on-demand
# price effective this month, an offer file published last week.
RESERVED_EFFECTIVE = f"{NOW - timedelta(days=178):%Y-%m-%d}T00:00:00Z"
ON_DEMAND_EFFECTIVE = f"{NOW - timedelta(days=25):%Y-%m-%d}T00:00:00Z"
PUBLISHED = NOW - timedelta(days=6)


def ec2_product(
    instance_type: str,
    vcpu: str,
    memory: str,
    usd: str,
    *,
    gpu: str | None = None,
    region: str = "us-east-1",
    instance_family: str = "General purpose",
    product_family: str = "Compute Instance",
    operation: str = "RunInstances",
    on_demand: bool = True,
) -> str:
    """One PriceList entry as the API returns it: a JSON string, Reserved terms included."""
    # zlib.crc32, not hash(): string hashes differ per process, and the ids must not
    sku = f"SKU{zlib.crc32(f'{instance_type}|{region}|{operation}'.encode()):010d}"
    attributes = {
        "enhancedNetworkingSupported": "Yes",
        "intelTurboAvailable": "Yes",
        "memory": memory,
        "dedicatedEbsThroughput": "Up to 10 Gbps",
        "vcpu": vcpu,
        "classicnetworkingsupport": "false",
        "capacitystatus": "Used",
        "locationType": "AWS Region",
        "storage": "EBS only",
        "instanceFamily": instance_family,
        "operatingSystem": "Linux",
        "regionCode": region,
        "physicalProcessor": "Intel Xeon 8375C (Ice Lake)",
        "clockSpeed": "3.5 GHz",
        "ecu": "NA",
        "networkPerformance": "Up to 12500 Megabit",
        "servicename": "Amazon Elastic Compute Cloud",
        "vpcnetworkingsupport": "true",
        "instanceType": instance_type,
        "tenancy": "Shared",
        "usagetype": f"BoxUsage:{instance_type}",
        "normalizationSizeFactor": "8",
        "servicecode": "AmazonEC2",
        "licenseModel": "No License required",
        "currentGeneration": "Yes",
        "preInstalledSw": "NA",
        "location": "US East (N. Virginia)",
        "processorArchitecture": "64-bit",
        "marketoption": "OnDemand",
        "operation": operation,
        "availabilityzone": "NA",
    }
    if gpu is not None:
        attributes["gpu"] = gpu
        attributes["gpuMemory"] = "24 GiB"
    terms: dict[str, Any] = {
        "Reserved": {
            f"{sku}.4NA7Y494T4": {
                "priceDimensions": {
                    f"{sku}.4NA7Y494T4.6YS6EN2CT7": {
                        "unit": "Hrs",
                        "endRange": "Inf",
                        "description": "Linux/UNIX (Amazon VPC), Standard 1yr No Upfront",
                        "appliesTo": [],
                        "rateCode": f"{sku}.4NA7Y494T4.6YS6EN2CT7",
                        "beginRange": "0",
                        "pricePerUnit": {"USD": "0.0010000000"},
                    }
                },
                "sku": sku,
                "effectiveDate": RESERVED_EFFECTIVE,
                "offerTermCode": "4NA7Y494T4",
                "termAttributes": {
                    "LeaseContractLength": "1yr",
                    "OfferingClass": "standard",
                    "PurchaseOption": "No Upfront",
                },
            }
        }
    }
    if on_demand:
        terms["OnDemand"] = {
            f"{sku}.JRTCKXETXF": {
                "priceDimensions": {
                    f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                        "unit": "Hrs",
                        "endRange": "Inf",
                        "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                        "appliesTo": [],
                        "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                        "beginRange": "0",
                        "pricePerUnit": {"USD": usd},
                    }
                },
                "sku": sku,
                "effectiveDate": ON_DEMAND_EFFECTIVE,
                "offerTermCode": "JRTCKXETXF",
                "termAttributes": {},
            }
        }
    return json.dumps(
        {
            "product": {"productFamily": product_family, "attributes": attributes, "sku": sku},
            "serviceCode": "AmazonEC2",
            "terms": terms,
            "version": f"{PUBLISHED:%Y%m%d}000000",
            "publicationDate": f"{PUBLISHED:%Y-%m-%d}T00:00:00Z",
        }
    )


def expected_params(region: str, token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "ServiceCode": "AmazonEC2",
        "Filters": [
            {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
            {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
            {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
            {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
            {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
        ],
        "FormatVersion": "aws_v1",
        "MaxResults": 100,
    }
    if token:
        params["NextToken"] = token
    return params


def us_east_1_pages() -> list[list[str]]:
    return [
        [
            ec2_product("g5.xlarge", "4", "16 GiB", "1.0060000000", gpu="1"),
            ec2_product("p5.48xlarge", "192", "2,048 GiB", "55.0400000000", gpu="8"),
            ec2_product("m6i.xlarge", "4", "16 GiB", "0.1920000000"),
            ec2_product("t3.micro", "2", "1 GiB", "0.0104000000"),  # not a family we keep
            ec2_product(  # an accelerator but no GPU: never a CPU equivalent, never kept
                "inf2.xlarge",
                "4",
                "16 GiB",
                "0.7582000000",
                instance_family="Machine Learning ASIC Instances",
            ),
        ],
        [
            ec2_product(  # a new GPU family arrives without a code change
                "p5en.48xlarge", "192", "2,048 GiB", "63.2960000000", gpu="8"
            ),
            ec2_product(  # a fraction of a GPU is still a GPU
                "g6f.large", "2", "8 GiB", "0.2000000000", gpu="0.125"
            ),
            ec2_product(
                "m6i.metal",
                "128",
                "512 GiB",
                "6.1440000000",
                product_family="Compute Instance (bare metal)",
            ),
            ec2_product(  # Linux with SQL Server Web: another price for the same type
                "m6i.xlarge", "4", "16 GiB", "0.2600000000", operation="RunInstances:0200"
            ),
            ec2_product("c7i.large", "2", "4 GiB", "0.0000000000"),  # a zero price is no price
        ],
    ]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


@pytest.fixture
def stubbed(aws_env: None) -> Iterator[tuple[AwsPricingSource, Stubber]]:
    # One attempt: botocore's retries would otherwise consume the next stubbed response.
    client = boto3.client(
        "pricing", region_name="us-east-1", config=BotoConfig(retries={"total_max_attempts": 1})
    )
    with Stubber(client) as stubber:
        yield AwsPricingSource(client), stubber
        stubber.assert_no_pending_responses()


def add_region(stubber: Stubber, region: str, pages: list[list[str]]) -> None:
    token = None
    for number, page in enumerate(pages):
        next_token = f"{region}-page-{number + 1}" if number + 1 < len(pages) else None
        response: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": page}
        if next_token:
            response["NextToken"] = next_token
        stubber.add_response("get_products", response, expected_params(region, token))
        token = next_token


# ---------------------------------------------------------------- parsing one document


def test_parse_reads_shape_gpus_and_on_demand_price() -> None:
    entry = parse_ec2_product(ec2_product("p5.48xlarge", "192", "2,048 GiB", "55.04", gpu="8"))
    assert entry == TypePrice("p5.48xlarge", 192.0, 2048.0, 8, None, 55.04)
    fraction = parse_ec2_product(ec2_product("g6f.large", "2", "8 GiB", "0.2", gpu="0.125"))
    assert fraction is not None
    assert fraction.gpus == 1


@pytest.mark.parametrize(
    "document",
    [
        ec2_product("m6i.xlarge", "4", "16 GiB", "0.26", operation="RunInstances:0200"),
        ec2_product("m6i.xlarge", "4", "16 GiB", "0.0"),
        ec2_product("m6i.xlarge", "4", "NA", "0.192"),
        ec2_product("m6i.xlarge", "4", "16 GiB", "0.192", on_demand=False),
        ec2_product("m6i.xlarge", "4", "16 GiB", "0.192", product_family="Dedicated Host"),
        ec2_product("m6i.xlarge", "4", "16 GiB", "0.192").replace('"Shared"', '"Dedicated"'),
    ],
    ids=["sql-server", "zero-price", "no-memory", "reserved-only", "dedicated-host", "dedicated"],
)
def test_parse_ignores_what_is_not_a_plain_linux_on_demand_hour(document: str) -> None:
    assert parse_ec2_product(document) is None


# ---------------------------------------------------------------- fetching a region


def test_fetch_region_pages_through_and_keeps_gpu_and_cpu_families(
    stubbed: tuple[AwsPricingSource, Stubber],
) -> None:
    source, stubber = stubbed
    add_region(stubber, "us-east-1", us_east_1_pages())
    block = source.fetch_region("us-east-1", NOW)
    assert block.source == "aws-pricing-api"
    assert block.fetched_at == NOW
    assert set(block.types) == {
        "g5.xlarge",
        "p5.48xlarge",
        "m6i.xlarge",
        "p5en.48xlarge",
        "g6f.large",
        "m6i.metal",
    }
    assert block.types["m6i.xlarge"].hourly_usd == 0.192  # not the SQL Server price
    assert block.types["p5en.48xlarge"].gpus == 8
    assert block.types["m6i.metal"].gpus == 0


def test_a_region_without_prices_is_an_error_not_an_empty_region(
    stubbed: tuple[AwsPricingSource, Stubber],
) -> None:
    source, stubber = stubbed
    add_region(stubber, "us-east-9", [[]])
    with pytest.raises(ProviderError, match="no EC2 Linux on-demand prices"):
        source.fetch_region("us-east-9", NOW)


# ---------------------------------------------------------------- refresh end to end


def test_refresh_writes_the_cache_and_reports_what_changed(
    stubbed: tuple[AwsPricingSource, Stubber], tmp_path: Path
) -> None:
    source, stubber = stubbed
    add_region(stubber, "us-east-1", us_east_1_pages())
    report = refresh(source, ["us-east-1"], tmp_path, NOW)
    assert report.failures == {}
    assert report.cache_path == tmp_path / CACHE_FILENAME
    (outcome,) = report.outcomes
    assert (outcome.region, outcome.types) == ("us-east-1", 6)
    assert outcome.new == 2  # p5en.48xlarge and g6f.large were not in the embedded catalog
    # g5.xlarge, p5.48xlarge, m6i.xlarge and m6i.metal are listed at the embedded prices.
    assert (outcome.changed, outcome.unchanged) == (0, 4)
    assert {c.instance_type for c in report.changes} == {"p5en.48xlarge", "g6f.large"}
    embedded = load_embedded()

    catalog = load_catalog(tmp_path)
    assert catalog.source_of("aws", "us-east-1", "p5en.48xlarge") == f"aws-pricing-api {DAY.date()}"
    assert catalog.source_of("aws", "us-east-1", "g6.xlarge") == embedded.source["aws"]
    p5en = catalog.lookup("aws", "us-east-1", "p5en.48xlarge")
    assert p5en is not None
    assert p5en.hourly_usd == 63.296
    g5 = catalog.lookup("aws", "us-east-1", "g5.xlarge")
    assert g5 is not None
    assert g5.gpu_model == "NVIDIA A10G"
    assert not list(tmp_path.glob(".*.tmp"))


def test_refresh_reports_the_biggest_moves(
    stubbed: tuple[AwsPricingSource, Stubber], tmp_path: Path
) -> None:
    source, stubber = stubbed
    add_region(
        stubber,
        "us-east-1",
        [
            [
                ec2_product("g5.xlarge", "4", "16 GiB", "1.1066", gpu="1"),  # +10 %
                ec2_product("p5.48xlarge", "192", "2,048 GiB", "98.32", gpu="8"),  # +78.6 %
                ec2_product("m6i.xlarge", "4", "16 GiB", "0.192"),  # unchanged
            ]
        ],
    )
    report = refresh(source, ["us-east-1"], tmp_path, NOW)
    moves = report.biggest_moves()
    assert [m.instance_type for m in moves] == ["p5.48xlarge", "g5.xlarge"]
    assert moves[0].old_usd == 55.04
    assert moves[0].new_usd == 98.32
    assert moves[0].relative == pytest.approx(98.32 / 55.04 - 1)
    assert report.outcomes[0].unchanged == 1


def test_access_denied_is_one_line_auth_error_and_writes_nothing(
    stubbed: tuple[AwsPricingSource, Stubber], tmp_path: Path
) -> None:
    source, stubber = stubbed
    old = PriceCache(
        {
            ("aws", "eu-west-1"): RegionPrices(
                "aws",
                "eu-west-1",
                "aws-pricing-api",
                EARLIER,
                {"g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, None, 1.2)},
            )
        }
    )
    write_cache(tmp_path / CACHE_FILENAME, old)
    before = (tmp_path / CACHE_FILENAME).read_bytes()
    stubber.add_client_error(
        "get_products",
        service_error_code="AccessDeniedException",
        service_message=(
            "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: "
            "pricing:GetProducts\nwith an explicit deny"
        ),
        http_status_code=400,
        expected_params=expected_params("us-east-1"),
    )
    with pytest.raises(AuthError) as caught:
        refresh(source, ["us-east-1", "eu-west-1"], tmp_path, NOW)  # stops at the first
    message = str(caught.value)
    assert "\n" not in message
    assert "AccessDeniedException" in message
    assert "pricing:GetProducts" in message
    assert (tmp_path / CACHE_FILENAME).read_bytes() == before


def test_a_failed_region_keeps_its_old_prices_while_others_refresh(
    stubbed: tuple[AwsPricingSource, Stubber], tmp_path: Path
) -> None:
    source, stubber = stubbed
    old_eu = RegionPrices(
        "aws",
        "eu-west-1",
        "aws-pricing-api",
        EARLIER,
        {"g5.xlarge": TypePrice("g5.xlarge", 4, 16, 1, None, 1.2)},
    )
    write_cache(tmp_path / CACHE_FILENAME, PriceCache({("aws", "eu-west-1"): old_eu}))
    add_region(stubber, "us-east-1", [[ec2_product("g5.xlarge", "4", "16 GiB", "1.0", gpu="1")]])
    # eu-west-1: the first page arrives, the second fails: none of the region is taken.
    stubber.add_response(
        "get_products",
        {
            "FormatVersion": "aws_v1",
            "PriceList": [ec2_product("g5.xlarge", "4", "16 GiB", "9.99", gpu="1")],
            "NextToken": "eu-2",
        },
        expected_params("eu-west-1"),
    )
    stubber.add_client_error(
        "get_products",
        service_error_code="ThrottlingException",
        service_message="Rate exceeded",
        http_status_code=400,
        expected_params=expected_params("eu-west-1", "eu-2"),
    )
    report = refresh(source, ["us-east-1", "eu-west-1"], tmp_path, NOW)
    assert [o.region for o in report.outcomes] == ["us-east-1"]
    assert set(report.failures) == {"eu-west-1"}
    assert "throttled" in report.failures["eu-west-1"]
    cache = read_cache(tmp_path / CACHE_FILENAME)
    assert cache.regions[("aws", "eu-west-1")] == old_eu
    assert cache.regions[("aws", "us-east-1")].types["g5.xlarge"].hourly_usd == 1.0


def test_an_unreadable_old_cache_is_kept_aside_not_lost(
    stubbed: tuple[AwsPricingSource, Stubber], tmp_path: Path
) -> None:
    source, stubber = stubbed
    (tmp_path / CACHE_FILENAME).write_text("{truncated")
    add_region(stubber, "us-east-1", [[ec2_product("g5.xlarge", "4", "16 GiB", "1.0", gpu="1")]])
    report = refresh(source, ["us-east-1"], tmp_path, NOW)
    assert report.moved_aside is not None
    assert report.moved_aside.read_text() == "{truncated"
    assert read_cache(tmp_path / CACHE_FILENAME).regions[("aws", "us-east-1")]


def test_an_unwritable_state_dir_fails_before_any_api_call(
    stubbed: tuple[AwsPricingSource, Stubber], tmp_path: Path
) -> None:
    source, _ = stubbed  # no responses queued: a call would fail the test
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GuardianError, match="state dir"):
        refresh(source, ["us-east-1"], blocker / "state", NOW)


# ---------------------------------------------------------------- errors, sources, regions


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("AccessDeniedException", AuthError),
        ("UnrecognizedClientException", AuthError),
        ("ExpiredTokenException", AuthError),
        ("ThrottlingException", Throttled),
        ("InternalErrorException", Unavailable),
        ("InvalidParameterException", ProviderError),
        ("NotFoundException", ProviderError),
    ],
)
def test_client_errors_map_to_our_classes(code: str, kind: type[ProviderError]) -> None:
    from botocore.exceptions import ClientError

    error = ClientError({"Error": {"Code": code, "Message": "detail"}}, "GetProducts")
    mapped = _map_aws_error(error, "us-east-1")
    assert type(mapped) is kind
    assert mapped.provider == "aws"
    assert mapped.operation == "pricing:GetProducts"
    assert code in str(mapped) or "throttled" in str(mapped)


def test_transport_errors_map_to_our_classes() -> None:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    assert isinstance(_map_aws_error(NoCredentialsError(), "us-east-1"), AuthError)
    unreachable = EndpointConnectionError(
        endpoint_url="https://api.pricing.us-east-1.amazonaws.com"
    )
    assert isinstance(_map_aws_error(unreachable, "us-east-1"), Unavailable)


def test_no_credentials_is_an_auth_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached
    source = source_for("aws", parse_config({}))
    with pytest.raises(AuthError, match="no AWS credentials"):
        source.fetch_region("us-east-1", NOW)


def test_each_provider_has_its_price_source() -> None:
    from guardian.prices.refresh_gcp import GcpCatalogSource

    gcp = source_for("gcp", parse_config({"gcp": {"credentials": "anonymous"}}))
    assert isinstance(gcp, GcpCatalogSource)
    gcp.close()
    with pytest.raises(GuardianError, match="unknown provider"):
        source_for("azure", parse_config({}))


def test_default_regions_follow_the_config(tmp_path: Path) -> None:
    listed = parse_config({"aws": {"regions": ["eu-west-1", "us-west-2"]}})
    assert default_regions("aws", listed, tmp_path) == ["eu-west-1", "us-west-2"]
    everything = parse_config({"aws": {"regions": "all"}})
    write_cache(
        tmp_path / CACHE_FILENAME,
        PriceCache(
            {
                ("aws", "ap-south-1"): RegionPrices(
                    "aws",
                    "ap-south-1",
                    "aws-pricing-api",
                    EARLIER,
                    {"m6i.large": TypePrice("m6i.large", 2, 8, 0, None, 0.1)},
                )
            }
        ),
    )
    found = default_regions("aws", everything, tmp_path)
    assert {"us-east-1", "eu-west-1", "ap-south-1"} <= set(found)
    assert found == sorted(found)

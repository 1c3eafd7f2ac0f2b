"""The pure parts of the GCP provider: reading Compute objects, the machine-type cache and its
fallback, the Monitoring filters and units, and the Billing SKUs → prices arithmetic.

The objects are the client libraries' own message classes, as the API would return them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from google.cloud import billing_v1, compute_v1

from guardian.model import Lifecycle
from guardian.prices import TypePrice
from guardian.prices.refresh_gcp import accelerator_name, parse_skus, price_types
from guardian.providers.gcp.discovery import (
    AcceleratorSpec,
    MachineTypeAccelerators,
    fallback_accelerators,
    machine_types_filter,
    parse_instance,
)
from guardian.providers.gcp.metrics import memory_state_label, metric_filter
from tests.clock import DAY, at

ZONE_URL = "https://www.googleapis.com/compute/v1/projects/p/zones/us-west1-b"
OWNER_TAGS = ["owner", "Owner", "team", "created-by", "CreatedBy"]
# Compute Engine writes Pacific time with milliseconds; 16:00 UTC is 08:00 at -08:00.
CREATED = at(16, days=-6)
CREATED_PACIFIC = f"{CREATED - timedelta(hours=8):%Y-%m-%dT%H:%M:%S}.000-08:00"


def _instance(**fields: object) -> compute_v1.Instance:
    base: dict[str, object] = {
        "id": 1234567890123,
        "name": "vm",
        "zone": ZONE_URL,
        "machine_type": f"{ZONE_URL}/machineTypes/n1-standard-4",
        "creation_timestamp": CREATED_PACIFIC,
    }
    base.update(fields)
    return compute_v1.Instance(**base)


def test_an_n1_vm_with_attached_gpus_is_read_from_its_own_description() -> None:
    raw = _instance(
        guest_accelerators=[
            compute_v1.AcceleratorConfig(
                accelerator_type=f"{ZONE_URL}/acceleratorTypes/nvidia-tesla-t4",
                accelerator_count=2,
            )
        ],
        labels={"team": "vision", "created-by": "ci"},
        scheduling=compute_v1.Scheduling(provisioning_model="STANDARD", preemptible=True),
        disks=[
            compute_v1.AttachedDisk(type_="PERSISTENT"),
            compute_v1.AttachedDisk(type_="SCRATCH"),
        ],
    )
    vm = parse_instance(raw, "p", {}, OWNER_TAGS)
    assert vm is not None
    assert (vm.instance_id, vm.zone, vm.region) == ("1234567890123", "us-west1-b", "us-west1")
    assert (vm.gpu_count, vm.gpu_model) == (2, "nvidia-tesla-t4")
    assert vm.owner == "vision"  # "team" comes before "created-by" in owner_tags
    assert vm.lifecycle is Lifecycle.PREEMPTIBLE
    assert vm.has_instance_store
    assert vm.launch_time == CREATED  # Pacific → UTC


def test_a_vm_without_accelerators_anywhere_is_not_a_gpu_vm() -> None:
    assert parse_instance(_instance(), "p", {"n1-standard-4": None}, OWNER_TAGS) is None
    zero = _instance(
        guest_accelerators=[compute_v1.AcceleratorConfig(accelerator_type="x", accelerator_count=0)]
    )
    assert parse_instance(zero, "p", {}, OWNER_TAGS) is None


def test_spot_wins_over_the_preemptible_flag_spot_vms_also_carry() -> None:
    raw = _instance(
        machine_type=f"{ZONE_URL}/machineTypes/g2-standard-4",
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT", preemptible=True),
    )
    vm = parse_instance(raw, "p", {"g2-standard-4": AcceleratorSpec("nvidia-l4", 1)}, OWNER_TAGS)
    assert vm is not None
    assert vm.lifecycle is Lifecycle.SPOT


@pytest.mark.parametrize(
    ("machine_type", "expected"),
    [
        ("a2-highgpu-1g", AcceleratorSpec("nvidia-tesla-a100", 1)),
        ("a2-megagpu-16g", AcceleratorSpec("nvidia-tesla-a100", 16)),
        ("a2-ultragpu-4g", AcceleratorSpec("nvidia-a100-80gb", 4)),
        ("a3-highgpu-8g", AcceleratorSpec("nvidia-h100-80gb", 8)),
        ("a3-megagpu-8g", AcceleratorSpec("nvidia-h100-mega-80gb", 8)),
        ("g2-standard-24", AcceleratorSpec("nvidia-l4", 2)),
        ("g2-standard-96", AcceleratorSpec("nvidia-l4", 8)),
        ("g2-standard-7", None),
        ("n1-standard-8", None),
        ("a2-custom", None),
    ],
)
def test_the_family_fallback_knows_the_published_shapes(
    machine_type: str, expected: AcceleratorSpec | None
) -> None:
    assert fallback_accelerators(machine_type) == expected


def test_the_machine_type_lookup_asks_only_for_new_names_and_pauses_after_a_failure() -> None:
    clock = [DAY]
    cache = MachineTypeAccelerators(lambda: clock[0])
    asked: list[Sequence[str]] = []

    def fetch(names: Sequence[str]) -> dict[str, AcceleratorSpec | None]:
        asked.append(list(names))
        return {"g9-x": AcceleratorSpec("nvidia-next", 4), "e2-standard-4": None}

    answers, problem = cache.resolve({"g9-x", "e2-standard-4", "n1-custom-8-30720"}, fetch)
    assert problem is None
    assert answers == {
        "g9-x": AcceleratorSpec("nvidia-next", 4),
        "e2-standard-4": None,
        "n1-custom-8-30720": None,  # not listed: remembered as accelerator-free
    }
    cache.resolve({"g9-x", "e2-standard-4"}, fetch)
    assert asked == [["e2-standard-4", "g9-x", "n1-custom-8-30720"]]
    cache.resolve({"g9-x", "a2-highgpu-1g"}, fetch)
    assert asked[-1] == ["a2-highgpu-1g"]

    def failing(names: Sequence[str]) -> dict[str, AcceleratorSpec | None]:
        asked.append(list(names))
        raise PermissionError("denied")

    answers, problem = cache.resolve({"g2-standard-8"}, failing)
    assert problem is not None
    assert answers == {"g2-standard-8": AcceleratorSpec("nvidia-l4", 1)}  # from the fallback
    calls = len(asked)
    _, problem = cache.resolve({"g2-standard-8"}, failing)
    assert len(asked) == calls  # paused: a missing permission costs one call, not one a cycle
    assert problem == "machineTypes lookup paused after a recent failure"
    clock[0] += timedelta(minutes=11)
    cache.resolve({"g2-standard-8"}, fetch)
    assert len(asked) == calls + 1


def test_the_machine_types_filter_is_one_full_match_expression() -> None:
    assert machine_types_filter(["g2-standard-8", "a2-highgpu-1g", "bad name!"]) == (
        'name eq "(a2-highgpu-1g|g2-standard-8)"'
    )


def test_metric_filters_name_the_type_the_resource_and_used_memory() -> None:
    util = "agent.googleapis.com/gpu/utilization"
    assert (
        metric_filter(util, "util") == f'metric.type = "{util}" AND resource.type = "gce_instance"'
    )
    memory = "agent.googleapis.com/gpu/memory/bytes_used"
    assert metric_filter(memory, "mem").endswith(' AND metric.labels.memory_state = "used"')
    assert memory_state_label("workload.googleapis.com/gpu.dcgm.memory.bytes_used") == "state"


# -- Cloud Billing Catalog SKUs ----------------------------------------------------------------


def _sku(
    description: str,
    usd: float,
    *,
    group: str = "CPU",
    unit: str = "h",
    usage: str = "OnDemand",
    family: str = "Compute",
    regions: tuple[str, ...] = ("us-central1",),
) -> billing_v1.Sku:
    units = int(usd)
    return billing_v1.Sku(
        description=description,
        category=billing_v1.Category(
            resource_family=family, resource_group=group, usage_type=usage
        ),
        service_regions=list(regions),
        pricing_info=[
            billing_v1.PricingInfo(
                pricing_expression=billing_v1.PricingExpression(
                    usage_unit=unit,
                    tiered_rates=[
                        billing_v1.PricingExpression.TierRate(
                            start_usage_amount=0,
                            unit_price={
                                "currency_code": "USD",
                                "units": units,
                                "nanos": round((usd - units) * 1e9),
                            },
                        )
                    ],
                )
            )
        ],
    )


def test_only_on_demand_per_vcpu_per_gib_and_per_gpu_skus_are_kept() -> None:
    rates = parse_skus(
        [
            _sku("N1 Predefined Instance Core running in Americas", 0.031611, group="N1Standard"),
            _sku("N1 Predefined Instance Ram running in Americas", 0.004237, unit="GiBy.h"),
            _sku("N2D AMD Instance Core running in Americas", 0.027502),
            _sku("Nvidia Tesla T4 GPU running in Americas", 0.35, group="GPU"),
            _sku("Nvidia H100 80GB Mega GPU running in Americas", 11.0, group="GPU"),
            _sku(
                "Spot Preemptible N1 Predefined Instance Core running in Americas",
                0.007,
                usage="Preemptible",
            ),
            _sku("N1 Predefined Instance Core running in Americas", 0.02, usage="Commit1Yr"),
            _sku("Custom Instance Core running in Americas", 0.033),
            _sku("Nvidia Tesla T4 Virtual Workstation GPU running in Americas", 0.55, group="GPU"),
            _sku("N2 Instance Ram running in Americas", 4.3, unit="GiBy.mo"),  # wrong unit
            _sku("Licensing Fee for RHEL", 0.06, family="License"),
        ]
    )
    assert rates.vcpu == {"us-central1": {"n1": 0.031611, "n2d": 0.027502}}
    assert rates.memory_gib == {"us-central1": {"n1": 0.004237}}
    assert rates.gpu == {"us-central1": {"nvidia-tesla-t4": 0.35, "nvidia-h100-mega-80gb": 11.0}}
    assert rates.skus_read == 11


@pytest.mark.parametrize(
    ("catalogue", "name"),
    [
        ("Tesla T4", "nvidia-tesla-t4"),
        ("L4", "nvidia-l4"),
        ("Tesla A100 80GB", "nvidia-a100-80gb"),
        ("H100 80GB", "nvidia-h100-80gb"),
        ("Tesla P100", "nvidia-tesla-p100"),
    ],
)
def test_accelerator_names_follow_compute_engines_spelling(catalogue: str, name: str) -> None:
    assert accelerator_name(catalogue) == name


def test_types_are_priced_as_google_bills_them_and_unknown_parts_stay_unknown() -> None:
    rates = parse_skus(
        [
            _sku("A2 Instance Core running in Americas", 0.031611),
            _sku("A2 Instance Ram running in Americas", 0.004237, unit="GiBy.h"),
            _sku("Nvidia Tesla A100 GPU running in Americas", 2.933908, group="GPU"),
            _sku("N1 Predefined Instance Core running in Americas", 0.031611),
            _sku("N1 Predefined Instance Ram running in Americas", 0.004237, unit="GiBy.h"),
        ]
    )
    shapes = {
        "a2-highgpu-1g": TypePrice("a2-highgpu-1g", 12, 85, 1, "nvidia-tesla-a100"),
        "a2-ultragpu-1g": TypePrice("a2-ultragpu-1g", 12, 170, 1, "nvidia-a100-80gb"),
        "n1-standard-8": TypePrice("n1-standard-8", 8, 30),
        "e2-standard-8": TypePrice("e2-standard-8", 8, 32),
    }
    priced = price_types(shapes, rates, "us-central1")
    assert set(priced) == {"a2-highgpu-1g", "n1-standard-8"}  # no 80GB GPU price, no E2 rates
    assert priced["a2-highgpu-1g"].hourly_usd == pytest.approx(3.673385)
    assert priced["n1-standard-8"].hourly_usd == pytest.approx(0.379998)
    assert price_types(shapes, rates, "europe-west4") == {}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"creation_timestamp": ""}, "no lastStartTimestamp or creationTimestamp"),
        ({"creation_timestamp": "not a time"}, "no lastStartTimestamp or creationTimestamp"),
        ({"status": "STOPPING"}, "status 'STOPPING', not RUNNING"),
        ({"status": "SUSPENDED"}, "status 'SUSPENDED', not RUNNING"),
    ],
)
def test_a_gpu_vm_that_cannot_be_judged_is_skipped_with_its_reason(
    fields: dict[str, object], reason: str
) -> None:
    """Without a start time it would pass min_uptime as if up since 1970; not running, it could
    be sent a stop."""
    from structlog.testing import capture_logs

    t4 = {"n1-standard-4": AcceleratorSpec("nvidia-tesla-t4", 1)}
    assert parse_instance(_instance(status="RUNNING"), "p", t4, OWNER_TAGS) is not None
    with capture_logs() as logs:
        assert parse_instance(_instance(**fields), "p", t4, OWNER_TAGS) is None
    assert [(e["event"], e["reason"]) for e in logs] == [("gcp_instance_skipped", reason)]


def test_a_reservation_bound_vm_is_reserved_capacity() -> None:
    """RESERVATION_BOUND (calendar-mode GPU reservations): paid whether it runs or not, so
    alert-only like any reserved capacity, never skipped as an unknown model."""
    t4 = {"n1-standard-4": AcceleratorSpec("nvidia-tesla-t4", 1)}
    bound = compute_v1.Scheduling(provisioning_model="RESERVATION_BOUND")
    vm = parse_instance(_instance(scheduling=bound), "p", t4, OWNER_TAGS)
    assert vm is not None
    assert vm.reservation == "reservation-bound"
    named = _instance(
        scheduling=bound,
        reservation_affinity=compute_v1.ReservationAffinity(
            consume_reservation_type="SPECIFIC_RESERVATION", values=["a3-calendar"]
        ),
    )
    vm = parse_instance(named, "p", t4, OWNER_TAGS)
    assert vm is not None
    assert vm.reservation == "a3-calendar"
    flex = _instance(scheduling=compute_v1.Scheduling(provisioning_model="FLEX_START"))
    assert parse_instance(flex, "p", t4, OWNER_TAGS) is None  # not guessed at

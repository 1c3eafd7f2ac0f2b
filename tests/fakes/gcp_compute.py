"""The plain-HTTP Compute Engine REST fake (see ``guardian.simulated.gcp_compute_fake``)."""

from guardian.simulated.gcp_compute_fake import (
    DEFAULT_MACHINE_TYPES,
    FakeComputeServer,
    FakeComputeState,
    FakeMachineType,
    FakeVm,
    RecordedRequest,
    stable_instance_id,
)

__all__ = [
    "DEFAULT_MACHINE_TYPES",
    "FakeComputeServer",
    "FakeComputeState",
    "FakeMachineType",
    "FakeVm",
    "RecordedRequest",
    "stable_instance_id",
]

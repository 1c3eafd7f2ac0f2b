"""The gRPC Resource Manager fake (``guardian.simulated.gcp_resource_manager_fake``)."""

from guardian.simulated.gcp_resource_manager_fake import (
    FakeProject,
    FakeResourceManagerServer,
    FakeResourceManagerState,
)

__all__ = ["FakeProject", "FakeResourceManagerServer", "FakeResourceManagerState"]

"""``guardian check-config --probe`` for Google Cloud: may these credentials do the job?"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from guardian.config import Config
from guardian.providers.gcp.clients import Api
from guardian.providers.gcp.provider import GcpProvider

__all__ = ["probe_credentials"]


def probe_credentials(config: Config) -> str:
    """That the credentials may list instances and read time series in every project.

    One smallest-possible call of each kind per project; raises ``AuthError`` and friends with
    the project named (``guardian check-config --probe`` prints the line).
    """
    from google.cloud import compute_v1

    from guardian.providers.gcp.discovery import INSTANCE_FILTER
    from guardian.providers.gcp.metrics import build_request

    provider = GcpProvider(config, caller="interactive")
    timeout = provider._call_timeout_s
    clients = provider._clients
    end = datetime.now(UTC)
    start = end - timedelta(minutes=10)
    try:
        for project in provider.projects:
            operation = "instances.aggregatedList"
            try:
                request = compute_v1.AggregatedListInstancesRequest(
                    project=project, filter=INSTANCE_FILTER, max_results=1
                )
                pager = clients.instances().aggregated_list(request=request, timeout=timeout)
                next(iter(pager.pages), None)
                operation = "monitoring.listTimeSeries"
                query = build_request(
                    project, config.gcp.metrics.gpu_util, "util", start=start, end=end, period_s=60
                )
                query.page_size = 1
                next(
                    iter(clients.metrics().list_time_series(request=query, timeout=timeout).pages),
                    None,
                )
            except Exception as exc:
                api: Api = "compute" if operation.startswith("instances") else "monitoring"
                error = provider._unit_failure(exc, operation, api)
                raise type(error)(
                    f"project {project}: {error}", provider="gcp", operation=operation
                ) from exc
        listed = ", ".join(provider.projects)
        return f"{provider.credentials_description}; may list VMs and read GPU metrics in {listed}"
    finally:
        provider.close()

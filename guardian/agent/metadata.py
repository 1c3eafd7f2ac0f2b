"""Which cloud instance is this? The AWS instance metadata service (IMDSv2) and GCP's server.

Stdlib HTTP only (no SDK import), short timeouts, never through a proxy. Off-cloud the answer
is one line (``MetadataUnavailable``), not a traceback after a long hang. Endpoints can be
pointed at a local fake, as the SDKs allow:

- AWS: ``GUARDIAN_IMDS_ENDPOINT``, else the AWS SDK's ``AWS_EC2_METADATA_SERVICE_ENDPOINT``,
  else ``http://169.254.169.254``; ``AWS_EC2_METADATA_DISABLED=true`` skips it.
- GCP: ``GUARDIAN_GCP_METADATA_ENDPOINT``, else google-auth's ``GCE_METADATA_HOST`` (a host),
  else ``http://169.254.169.254`` (the IP, so off-cloud we do not wait on DNS).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from urllib.parse import quote

from guardian.errors import GuardianError
from guardian.model import GpuInstance, Lifecycle

__all__ = [
    "AWS_ENDPOINT_ENV",
    "GCP_ENDPOINT_ENV",
    "CloudIdentity",
    "MetadataUnavailable",
    "aws_endpoint",
    "aws_identity",
    "detect_identity",
    "gcp_endpoint",
    "gcp_identity",
]

AWS_ENDPOINT_ENV = "GUARDIAN_IMDS_ENDPOINT"
GCP_ENDPOINT_ENV = "GUARDIAN_GCP_METADATA_ENDPOINT"
_LINK_LOCAL = "http://169.254.169.254"
_TOKEN_TTL_S = 21600
# No proxy, ever: the metadata service is link-local, and a proxy would answer for the wrong host.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MetadataUnavailable(GuardianError):
    """No instance metadata service answered: not on a cloud instance (or it is blocked)."""


@dataclass(frozen=True)
class CloudIdentity:
    """This machine as its cloud knows it. ``tags`` is None when metadata cannot show them
    (AWS without instance-metadata tags, GCP labels): then the provider API is asked."""

    provider: Literal["aws", "gcp"]
    account: str  # AWS account id, GCP project id
    region: str
    zone: str
    instance_id: str
    instance_type: str
    name: str | None = None
    lifecycle: Lifecycle = Lifecycle.ON_DEMAND
    tags: Mapping[str, str] | None = field(default=None)

    def instance(self, gpu_count: int, gpu_model: str | None, launch_time: datetime) -> GpuInstance:
        """As the policy sees it; ``launch_time`` is the boot time (the last start)."""
        return GpuInstance(
            provider=self.provider,
            account=self.account,
            region=self.region,
            zone=self.zone,
            instance_id=self.instance_id,
            instance_type=self.instance_type,
            launch_time=launch_time,
            gpu_count=gpu_count,
            gpu_model=gpu_model,
            name=self.name or (self.tags or {}).get("Name"),
            lifecycle=self.lifecycle,
            tags=dict(self.tags or {}),
        )


def aws_endpoint() -> str:
    return (
        os.environ.get(AWS_ENDPOINT_ENV)
        or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        or _LINK_LOCAL
    ).rstrip("/")


def gcp_endpoint() -> str:
    explicit = os.environ.get(GCP_ENDPOINT_ENV)
    if explicit:
        return explicit.rstrip("/")
    host = os.environ.get("GCE_METADATA_HOST")
    return f"http://{host}" if host else _LINK_LOCAL


def _request(
    url: str,
    headers: Mapping[str, str],
    timeout_s: float,
    method: str = "GET",
) -> tuple[int, str, Mapping[str, str]]:
    """(status, body, headers); raises OSError subclasses when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers), method=method)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            body = response.read(1_000_000).decode("utf-8", errors="replace")
            return response.status, body, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, "", dict(exc.headers or {})


class _Imds:
    """An IMDSv2 session: one token, then GETs with it."""

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        status, token, _ = _request(
            f"{endpoint}/latest/api/token",
            {"X-aws-ec2-metadata-token-ttl-seconds": str(_TOKEN_TTL_S)},
            timeout_s,
            method="PUT",
        )
        if status != 200 or not token:
            raise MetadataUnavailable(
                f"AWS instance metadata at {endpoint} refused an IMDSv2 token (HTTP {status})"
            )
        self.token = token.strip()

    def get(self, path: str) -> str | None:
        """The value at ``path``, or None when it does not exist (404)."""
        status, body, _ = _request(
            f"{self.endpoint}/{path}", {"X-aws-ec2-metadata-token": self.token}, self.timeout_s
        )
        if status == 404:
            return None
        if status != 200:
            raise MetadataUnavailable(
                f"AWS instance metadata {path}: HTTP {status} from {self.endpoint}"
            )
        return body


def aws_identity(endpoint: str | None = None, timeout_s: float = 1.0) -> CloudIdentity:
    """This EC2 instance from IMDSv2: the identity document, lifecycle, and tags if exposed."""
    where = endpoint or aws_endpoint()
    try:
        imds = _Imds(where, timeout_s)
        document = json.loads(imds.get("latest/dynamic/instance-identity/document") or "{}")
        lifecycle = (imds.get("latest/meta-data/instance-life-cycle") or "").strip()
        tags = _aws_tags(imds)
    except (OSError, ValueError) as exc:
        raise MetadataUnavailable(f"no AWS instance metadata at {where}: {_why(exc)}") from exc
    try:
        return CloudIdentity(
            provider="aws",
            account=str(document["accountId"]),
            region=str(document["region"]),
            zone=str(document.get("availabilityZone", "")),
            instance_id=str(document["instanceId"]),
            instance_type=str(document.get("instanceType", "")),
            lifecycle=Lifecycle.SPOT if lifecycle == "spot" else Lifecycle.ON_DEMAND,
            tags=tags,
        )
    except KeyError as exc:
        raise MetadataUnavailable(
            f"AWS instance identity document from {where} lacks {exc.args[0]}"
        ) from exc


def _aws_tags(imds: _Imds) -> dict[str, str] | None:
    """Instance tags, when "instance metadata tags" is enabled on the instance; else None."""
    listing = imds.get("latest/meta-data/tags/instance")
    if listing is None:
        return None
    tags: dict[str, str] = {}
    for key in filter(None, (line.strip() for line in listing.splitlines())):
        value = imds.get(f"latest/meta-data/tags/instance/{quote(key, safe='')}")
        if value is not None:
            tags[key] = value
    return tags


def gcp_identity(endpoint: str | None = None, timeout_s: float = 1.0) -> CloudIdentity:
    """This Compute Engine VM from the metadata server (``Metadata-Flavor: Google``)."""
    where = endpoint or gcp_endpoint()
    headers = {"Metadata-Flavor": "Google"}
    try:
        status, body, got = _request(
            f"{where}/computeMetadata/v1/instance/?recursive=true", headers, timeout_s
        )
        if status != 200 or got.get("Metadata-Flavor", got.get("metadata-flavor")) != "Google":
            raise MetadataUnavailable(f"no GCP metadata server at {where} (HTTP {status})")
        instance = json.loads(body)
        status, project, _ = _request(
            f"{where}/computeMetadata/v1/project/project-id", headers, timeout_s
        )
        if status != 200:
            raise MetadataUnavailable(f"GCP metadata project-id: HTTP {status} from {where}")
    except (OSError, ValueError) as exc:
        raise MetadataUnavailable(f"no GCP metadata server at {where}: {_why(exc)}") from exc
    try:
        zone = str(instance["zone"]).rsplit("/", 1)[-1]
        scheduling = instance.get("scheduling") or {}
        model = str(scheduling.get("provisioningModel", "")).upper()
        lifecycle = Lifecycle.ON_DEMAND
        if model == "SPOT":
            lifecycle = Lifecycle.SPOT
        elif str(scheduling.get("preemptible", "")).upper() == "TRUE":
            lifecycle = Lifecycle.PREEMPTIBLE
        return CloudIdentity(
            provider="gcp",
            account=project.strip(),
            region=zone.rsplit("-", 1)[0],
            zone=zone,
            instance_id=str(instance["id"]),
            instance_type=str(instance.get("machineType", "")).rsplit("/", 1)[-1],
            name=instance.get("name"),
            lifecycle=lifecycle,
            tags=None,  # labels are not in the metadata server; the Compute API has them
        )
    except (KeyError, AttributeError) as exc:
        raise MetadataUnavailable(f"GCP instance metadata from {where} lacks {exc}") from exc


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc) or type(exc).__name__


def detect_identity(
    cloud: Literal["aws", "gcp"] | None = None, timeout_s: float = 1.0
) -> CloudIdentity:
    """The identity from ``cloud``'s metadata service, or whichever answers (AWS first)."""
    tried: list[str] = []
    # The SDK's switch turns off the default endpoint; an explicit endpoint of ours still counts.
    aws_disabled = os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true" and not (
        os.environ.get(AWS_ENDPOINT_ENV)
    )
    if cloud in (None, "aws") and not aws_disabled:
        try:
            return aws_identity(timeout_s=timeout_s)
        except MetadataUnavailable as exc:
            tried.append(str(exc))
    if cloud in (None, "gcp"):
        try:
            return gcp_identity(timeout_s=timeout_s)
        except MetadataUnavailable as exc:
            tried.append(str(exc))
    detail = "; ".join(tried) or "AWS metadata disabled by AWS_EC2_METADATA_DISABLED"
    raise MetadataUnavailable(
        f"cannot tell which cloud instance this is ({detail}): autostop and publishing need "
        "a cloud instance (on EC2 in a container, raise the IMDS hop limit to 2)"
    )

"""Build the Google API clients from ``gcp.*`` config: endpoints, transports and credentials.

One place decides how we talk to Google, so every client of a provider shares one credential
object and one endpoint rule:

- no endpoint: the library default (Compute over HTTPS REST, Monitoring and Billing over gRPC).
- ``http://host:port``: plaintext, for tests and private endpoints — REST over HTTP for Compute,
  an insecure gRPC channel for Monitoring and Billing.
- anything else (``host:port`` or ``https://host``): a TLS endpoint passed to the library.

Credentials are Application Default Credentials unless ``gcp.credentials: anonymous``.
The Google libraries are imported inside the functions so importing this module is free.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from guardian.config import GcpConfig
from guardian.errors import AuthError, ConfigError
from guardian.providers import Caller, Patience
from guardian.providers.gcp.errors import map_google_error, missing_adc_error

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "PATIENCE",
    "Endpoint",
    "GcpClients",
    "parse_endpoint",
    "resolve_credentials",
]

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
Api = Literal["compute", "monitoring", "billing", "resource_manager"]
DEFAULT_HOSTS: Mapping[Api, str] = MappingProxyType(
    {
        "compute": "compute.googleapis.com",
        "monitoring": "monitoring.googleapis.com",
        "billing": "cloudbilling.googleapis.com",
        "resource_manager": "cloudresourcemanager.googleapis.com",
    }
)

# How long Google API calls wait, per caller: the only place these numbers live (docs/gcp.md).
# Each call (one page) gets connect_s + read_s as its deadline, and the retries of transient
# errors (503, 429, a deadline) stop after ``attempts`` such deadlines.
PATIENCE: Mapping[Caller, Patience] = MappingProxyType(
    {
        # A person waits: a silent endpoint is named in well under a minute, not minutes.
        "interactive": Patience(connect_s=5.0, read_s=15.0, attempts=2),
        # The daemon and the agent may wait out a slow minute; the next cycle comes anyway.
        "daemon": Patience(connect_s=10.0, read_s=30.0, attempts=3),
    }
)


@dataclass(frozen=True)
class Endpoint:
    """A configured API endpoint: where, and whether the connection is plaintext."""

    host: str  # host:port for gRPC; for REST, the URL the library is given
    plaintext: bool


def parse_endpoint(key: str, value: str | None) -> Endpoint | None:
    """``gcp.<key>`` as an Endpoint; None for the library default. Bad values are ConfigErrors."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if "://" not in text:
        return Endpoint(text.rstrip("/"), plaintext=False)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"gcp.{key}: expected http://host:port, https://host or host:port")
    if parts.path not in ("", "/"):
        raise ConfigError(f"gcp.{key}: give the host (and port) only, without a path")
    return Endpoint(parts.netloc, plaintext=parts.scheme == "http")


def resolve_credentials(config: GcpConfig) -> tuple[Any, str | None]:
    """(credentials, ADC's default project). Missing ADC is a one-line AuthError saying how."""
    if config.credentials == "anonymous":
        from google.auth import credentials as auth_credentials

        anonymous: Any = auth_credentials.AnonymousCredentials  # untyped in google-auth
        return anonymous(), None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError

    try:
        credentials, project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except DefaultCredentialsError as exc:
        key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if key_file:
            # The variable is set: what is wrong is the file it names, not a missing setup.
            reason = exc.args[0] if exc.args else str(exc)
            raise AuthError(
                f"GOOGLE_APPLICATION_CREDENTIALS={key_file}: {reason} (a service-account key "
                "file, or unset it to use `gcloud auth application-default login`)",
                provider="gcp",
                operation="credentials",
            ) from exc
        raise missing_adc_error() from exc
    except GoogleAuthError as exc:
        raise map_google_error(exc, "credentials") from exc
    return credentials, project


class GcpClients:
    """The clients of one provider. Built lazily, each once, all with the same credentials."""

    def __init__(self, config: GcpConfig, credentials: Any) -> None:
        self._config = config
        self._credentials = credentials
        self._compute = parse_endpoint("compute_endpoint", config.compute_endpoint)
        self._monitoring = parse_endpoint("monitoring_endpoint", config.monitoring_endpoint)
        self._billing = parse_endpoint("billing_endpoint", config.billing_endpoint)
        self._resource_manager = parse_endpoint(
            "resource_manager_endpoint", config.resource_manager_endpoint
        )
        self._cache: dict[str, Any] = {}
        self._channels: list[Any] = []
        self._lock = threading.Lock()

    # Compute: REST only. Every Compute client gets the same options, which matters for stop:
    # the library's built-in operation poller ignores client_options, so we build our own
    # ZoneOperationsClient from these and never use it.
    def _compute_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"credentials": self._credentials, "transport": "rest"}
        if self._compute is not None:
            scheme = "http" if self._compute.plaintext else "https"
            kwargs["client_options"] = {"api_endpoint": f"{scheme}://{self._compute.host}"}
        return kwargs

    def instances(self) -> Any:
        return self._get(
            "instances", lambda: _compute_v1().InstancesClient(**self._compute_kwargs())
        )

    def machine_types(self) -> Any:
        return self._get(
            "machine_types", lambda: _compute_v1().MachineTypesClient(**self._compute_kwargs())
        )

    def zone_operations(self) -> Any:
        return self._get(
            "zone_operations",
            lambda: _compute_v1().ZoneOperationsClient(**self._compute_kwargs()),
        )

    def metrics(self) -> Any:
        def build() -> Any:
            from google.cloud import monitoring_v3
            from google.cloud.monitoring_v3.services.metric_service.transports import (
                MetricServiceGrpcTransport,
            )

            return self._grpc_client(
                monitoring_v3.MetricServiceClient, MetricServiceGrpcTransport, self._monitoring
            )

        return self._get("metrics", build)

    def catalog(self) -> Any:
        def build() -> Any:
            from google.cloud import billing_v1
            from google.cloud.billing_v1.services.cloud_catalog.transports import (
                CloudCatalogGrpcTransport,
            )

            return self._grpc_client(
                billing_v1.CloudCatalogClient, CloudCatalogGrpcTransport, self._billing
            )

        return self._get("catalog", build)

    def folders(self) -> Any:
        def build() -> Any:
            from google.cloud import resourcemanager_v3
            from google.cloud.resourcemanager_v3.services.folders.transports import (
                FoldersGrpcTransport,
            )

            return self._grpc_client(
                resourcemanager_v3.FoldersClient, FoldersGrpcTransport, self._resource_manager
            )

        return self._get("folders", build)

    def projects(self) -> Any:
        def build() -> Any:
            from google.cloud import resourcemanager_v3
            from google.cloud.resourcemanager_v3.services.projects.transports import (
                ProjectsGrpcTransport,
            )

            return self._grpc_client(
                resourcemanager_v3.ProjectsClient, ProjectsGrpcTransport, self._resource_manager
            )

        return self._get("projects", build)

    def _grpc_client(
        self, client_class: Any, transport_class: Any, endpoint: Endpoint | None
    ) -> Any:
        if endpoint is None:
            return client_class(credentials=self._credentials)
        if endpoint.plaintext:
            import grpc

            # An insecure channel carries no call credentials: plaintext is for emulators and
            # private endpoints that authenticate otherwise.
            channel = grpc.insecure_channel(endpoint.host)
            self._channels.append(channel)
            return client_class(transport=transport_class(channel=channel))
        return client_class(
            credentials=self._credentials, client_options={"api_endpoint": endpoint.host}
        )

    def endpoint(self, api: Api) -> str:
        """Where calls to ``api`` go, for a message that names an endpoint that did not answer."""
        configured = {
            "compute": self._compute,
            "monitoring": self._monitoring,
            "billing": self._billing,
            "resource_manager": self._resource_manager,
        }[api]
        return configured.host if configured is not None else DEFAULT_HOSTS[api]

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        # Projects are served from pool threads; each client is built once and then shared.
        with self._lock:
            client = self._cache.get(name)
            if client is None:
                try:
                    client = build()
                except Exception as exc:  # constructing a client can hit ADC or mTLS setup
                    raise map_google_error(exc, f"create {name} client") from exc
                self._cache[name] = client
            return client

    def close(self) -> None:
        """Close every transport and channel we opened; safe to call twice."""
        for client in self._cache.values():
            transport = getattr(client, "transport", None)
            close = getattr(transport, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # best effort at shutdown
                    close()
        for channel in self._channels:
            channel.close()
        self._cache.clear()
        self._channels.clear()


def _compute_v1() -> Any:
    from google.cloud import compute_v1

    return compute_v1

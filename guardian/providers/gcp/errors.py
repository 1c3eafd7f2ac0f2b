"""Map the Google client libraries' exceptions to ``guardian.errors``, in one place.

Every class of ``google.api_core.exceptions`` and ``google.auth.exceptions`` is named in a table
(a unit test fails when a library upgrade adds one we have not placed). At run time the class's
MRO is walked, so an unknown subclass still lands on its nearest mapped parent. Transport
errors from ``requests`` (the Compute REST transport) and ``grpc`` are mapped too.
"""

from __future__ import annotations

from collections.abc import Mapping

from guardian.errors import AuthError, ProviderError, Throttled, Unavailable

__all__ = ["ADC_HELP", "API_CORE_MAP", "AUTH_MAP", "map_google_error", "missing_adc_error"]

ADC_HELP = (
    "no Google Application Default Credentials: run `gcloud auth application-default login`, "
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on a VM whose "
    "service account has the roles in docs/gcp-role.yaml"
)

ErrorClass = type[ProviderError]

# google.api_core.exceptions class name → what it means for a unit this cycle.
API_CORE_MAP: Mapping[str, ErrorClass] = {
    "GoogleAPIError": ProviderError,
    "GoogleAPICallError": ProviderError,
    "DuplicateCredentialArgs": ProviderError,  # our own misuse of a client: a bug, not an outage
    "AsyncRestUnsupportedParameterError": ProviderError,
    "RetryError": Unavailable,  # the SDK's retries ran out on a transient error
    "Redirection": ProviderError,
    "MovedPermanently": ProviderError,
    "NotModified": ProviderError,
    "TemporaryRedirect": ProviderError,
    "ResumeIncomplete": ProviderError,
    "ClientError": ProviderError,
    "BadRequest": ProviderError,
    "InvalidArgument": ProviderError,
    "FailedPrecondition": ProviderError,
    "OutOfRange": ProviderError,
    "Unauthorized": AuthError,
    "Unauthenticated": AuthError,
    "Forbidden": AuthError,
    "PermissionDenied": AuthError,
    "NotFound": ProviderError,  # e.g. a project id that does not exist, or the API not enabled
    "MethodNotAllowed": ProviderError,
    "Conflict": ProviderError,
    "AlreadyExists": ProviderError,
    "Aborted": Unavailable,  # concurrency conflict on Google's side: try again next cycle
    "LengthRequired": ProviderError,
    "PreconditionFailed": ProviderError,
    "RequestRangeNotSatisfiable": ProviderError,
    "TooManyRequests": Throttled,
    "ResourceExhausted": Throttled,
    "Cancelled": Unavailable,
    "ServerError": Unavailable,
    "InternalServerError": Unavailable,
    "MethodNotImplemented": ProviderError,  # a private endpoint without this API: not transient
    "BadGateway": Unavailable,
    "ServiceUnavailable": Unavailable,
    "GatewayTimeout": Unavailable,
    "DeadlineExceeded": Unavailable,
    "Unknown": Unavailable,
    "DataLoss": Unavailable,
    "ResumableTransferError": Unavailable,
    "MissingStatusHeaderError": Unavailable,
    "TransferStalledError": Unavailable,
    "UnseekableStreamError": ProviderError,
    "UploadCancelledError": Unavailable,
}

# google.auth.exceptions class name → meaning. Any credential problem is an AuthError except a
# network failure while fetching a token, which is an outage.
AUTH_MAP: Mapping[str, ErrorClass] = {
    "GoogleAuthError": AuthError,
    "DefaultCredentialsError": AuthError,
    "InvalidOperation": AuthError,
    "InvalidResource": AuthError,
    "InvalidType": AuthError,
    "InvalidValue": AuthError,
    "MalformedError": AuthError,
    "OSError": AuthError,
    "ClientCertError": AuthError,
    "MutualTLSChannelError": AuthError,
    "OAuthError": AuthError,
    "RefreshError": AuthError,
    "ReauthFailError": AuthError,
    "ReauthSamlChallengeFailError": AuthError,
    "UserAccessTokenError": AuthError,
    "ResponseError": AuthError,
    "TransportError": Unavailable,
    "TimeoutError": Unavailable,
}

_MODULE_MAPS: Mapping[str, Mapping[str, ErrorClass]] = {
    "google.api_core.exceptions": API_CORE_MAP,
    "google.auth.exceptions": AUTH_MAP,
}


def _first_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe(exc: BaseException) -> str:
    """The server's own message where there is one, without the SDK's repr noise."""
    message = getattr(exc, "message", None)
    code = getattr(exc, "code", None)
    text = str(message) if message else str(exc)
    if not text:
        text = type(exc).__name__
    prefix = f"{type(exc).__name__}"
    if isinstance(code, int):
        prefix += f" ({code})"
    return _first_line(f"{prefix}: {text}")


def missing_adc_error(operation: str = "credentials") -> AuthError:
    return AuthError(ADC_HELP, provider="gcp", operation=operation)


def map_google_error(exc: BaseException, operation: str) -> ProviderError:
    """The ``guardian.errors`` class for one exception from a Google client call."""
    if isinstance(exc, ProviderError):
        return exc
    cause = getattr(exc, "cause", None)
    if type(exc).__name__ == "RetryError" and isinstance(cause, BaseException):
        # The retries ran out: what matters is the last error, e.g. a 503 or a throttle.
        last = map_google_error(cause, operation)
        return type(last)(
            f"{operation}: gave up retrying ({getattr(exc, 'message', exc)}); last error: "
            f"{_describe(cause)}",
            provider="gcp",
            operation=operation,
        )
    for klass in type(exc).__mro__:
        table = _MODULE_MAPS.get(klass.__module__)
        if table is not None and klass.__name__ in table:
            target = table[klass.__name__]
            if klass.__module__ == "google.auth.exceptions" and klass.__name__ in (
                "DefaultCredentialsError",
                "OSError",
            ):
                return missing_adc_error(operation)
            return target(f"{operation}: {_describe(exc)}", provider="gcp", operation=operation)
    if _is_transport_error(exc):
        return Unavailable(
            f"{operation}: endpoint unreachable or not answering: {_describe(exc)}",
            provider="gcp",
            operation=operation,
        )
    return ProviderError(f"{operation}: {_describe(exc)}", provider="gcp", operation=operation)


def _is_transport_error(exc: BaseException) -> bool:
    """Connection failures below the SDK: requests (Compute REST), grpc, sockets."""
    modules = {klass.__module__.split(".")[0] for klass in type(exc).__mro__}
    return bool(modules & {"requests", "urllib3", "grpc"}) or isinstance(
        exc, ConnectionError | TimeoutError
    )

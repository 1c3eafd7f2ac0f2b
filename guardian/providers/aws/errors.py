"""Map botocore's exceptions and AWS error codes to ``guardian.errors``, in one place.

Every class in ``botocore.exceptions`` is placed in ``BOTOCORE_MAP`` (by itself or through a
family such as ``ConnectionError``); a unit test fails when a botocore upgrade adds one we have
not placed. ``ClientError`` is mapped by its error code (``*_CODES``), then by HTTP status. At run
time the class's MRO is walked, so an unknown subclass still lands on its nearest mapped parent.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from botocore.exceptions import ClientError

from guardian.errors import AuthError, ProviderError, Throttled, Unavailable

__all__ = [
    "AUTH_CODES",
    "BOTOCORE_MAP",
    "CREDENTIALS_HELP",
    "THROTTLE_CODES",
    "UNAVAILABLE_CODES",
    "error_code",
    "is_expected",
    "map_aws_error",
]

CREDENTIALS_HELP = (
    "no AWS credentials found: set AWS_PROFILE (after `aws configure` or `aws sso login`) or "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an instance or task role is attached"
)

ErrorClass = type[ProviderError]

# Credentials missing, expired, or lacking a permission: fix the IAM side, retrying won't help.
AUTH_CODES: frozenset[str] = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthFailure",
        "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
        "Blocked",  # the account is blocked
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidIdentityToken",
        "InvalidToken",
        "MissingAuthenticationToken",
        "NotAuthorized",
        "OptInRequired",  # the region (or service) is not enabled for this account
        "PendingVerification",
        "RequestExpired",  # the request's signature is too old: usually clock skew
        "SignatureDoesNotMatch",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
    }
)

# The API asked us to slow down and the SDK's own retries have run out.
THROTTLE_CODES: frozenset[str] = frozenset(
    {
        "LimitExceededException",
        "PriorRequestNotComplete",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "Throttled",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)

# A transient outage on AWS's side (any 5xx status counts too).
UNAVAILABLE_CODES: frozenset[str] = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServiceError",
        "InternalServiceFault",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
    }
)

# botocore.exceptions class name → meaning. Looked up along the MRO, so each family is placed once.
BOTOCORE_MAP: Mapping[str, ErrorClass] = {
    "BotoCoreError": ProviderError,
    "ClientError": ProviderError,  # refined by code and status in map_aws_error
    # Credentials and the profiles or SSO sessions that provide them.
    "NoCredentialsError": AuthError,
    "PartialCredentialsError": AuthError,
    "CredentialRetrievalError": AuthError,
    "UnknownCredentialError": AuthError,
    "NoAuthTokenError": AuthError,
    "TokenRetrievalError": AuthError,
    "UnknownTokenProviderError": AuthError,
    "SSOError": AuthError,
    "LoginError": AuthError,
    "RefreshWithMFAUnsupportedError": AuthError,
    "ProfileNotFound": AuthError,
    "MetadataRetrievalError": AuthError,  # the instance role's credentials could not be read
    "InvalidIMDSEndpointError": AuthError,
    "InvalidIMDSEndpointModeError": AuthError,
    # The network between us and the endpoint.
    "ConnectionError": Unavailable,  # EndpointConnectionError, ConnectTimeout, Proxy, SSL
    "HTTPClientError": Unavailable,  # ReadTimeout, ConnectionClosed, ResponseStreaming
    "IncompleteReadError": Unavailable,
    "ChecksumError": Unavailable,  # a response damaged in transit
    "FlexibleChecksumError": Unavailable,
    "AwsChunkedWrapperError": Unavailable,
    "CapacityNotAvailableError": Throttled,  # the SDK's own retry quota is spent
    "ResponseParserError": Unavailable,  # (botocore.parsers) a proxy's or broken endpoint's page
    # Our own misuse of the SDK or a local misconfiguration: not transient, not credentials.
    "ApiVersionNotFoundError": ProviderError,
    "BaseEndpointResolverError": ProviderError,
    "ConfigNotFound": ProviderError,
    "ConfigParseError": ProviderError,
    "DataNotFoundError": ProviderError,
    "EndpointProviderError": ProviderError,
    "InvalidChecksumConfigError": ProviderError,
    "InvalidConfigError": ProviderError,
    "InvalidDNSNameError": ProviderError,
    "InvalidDefaultsMode": ProviderError,
    "InvalidEndpointConfigurationError": ProviderError,
    "InvalidEndpointDiscoveryConfigurationError": ProviderError,
    "InvalidExpressionError": ProviderError,
    "InvalidHostLabelError": ProviderError,
    "InvalidProxiesConfigError": ProviderError,
    "InvalidRetryConfigurationError": ProviderError,
    "InvalidS3AddressingStyleError": ProviderError,
    "InvalidS3UsEast1RegionalEndpointConfigError": ProviderError,
    "InvalidSTSRegionalEndpointsConfigError": ProviderError,
    "MD5UnavailableError": ProviderError,
    "MissingDependencyException": ProviderError,
    "MissingParametersError": ProviderError,
    "MissingServiceIdError": ProviderError,
    "OperationNotPageableError": ProviderError,
    "PaginationError": ProviderError,
    "ParamValidationError": ProviderError,
    "ServiceNotInRegionError": ProviderError,
    "StubResponseError": ProviderError,
    "UndefinedModelAttributeError": ProviderError,
    "UnknownClientMethodError": ProviderError,
    "UnknownRegionError": ProviderError,
    "UnknownServiceStyle": ProviderError,
    "UnknownSignatureVersionError": ProviderError,
    "UnseekableStreamError": ProviderError,
    "UnsupportedOutpostResourceError": ProviderError,
    "UnsupportedS3AccesspointConfigurationError": ProviderError,
    "UnsupportedS3ArnError": ProviderError,
    "UnsupportedS3ConfigurationError": ProviderError,
    "UnsupportedS3ControlArnError": ProviderError,
    "UnsupportedS3ControlConfigurationError": ProviderError,
    "UnsupportedServiceProtocolsError": ProviderError,
    "UnsupportedSignatureVersionError": ProviderError,
    "ValidationError": ProviderError,
    "WaiterConfigError": ProviderError,
    "WaiterError": ProviderError,
}

_CREDENTIAL_CLASSES = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"}
)


# An XML error body (``<ErrorResponse><Errors><Error><Code>…``) that botocore could not parse
# for a protocol that expects CBOR or JSON (CloudWatch behind moto or a proxy): it lands whole
# in the Message, under the HTTP status as the Code. Only these two elements are read from it.
_XML_CODE = re.compile(r"<Code>\s*([A-Za-z0-9.:_-]{1,100})\s*</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{0,2000})</Message>")


def _error_fields(exc: ClientError) -> tuple[str | None, str]:
    """The error's code and message, out of an unparsed XML body if that is what came back.

    The rest of such a body is never quoted: like a cut-short answer (see ``map_aws_error``),
    it may hold what must not reach a log.
    """
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    code = str(error.get("Code") or "") or None
    message = str(error.get("Message") or "")
    if not message.lstrip().startswith("<"):
        return code, message
    found_code, found_message = _XML_CODE.search(message), _XML_MESSAGE.search(message)
    return (
        found_code.group(1) if found_code else code,
        html.unescape(found_message.group(1)) if found_message else "",
    )


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ``ClientError`` (``UnauthorizedOperation``), else None."""
    if isinstance(exc, ClientError):
        return _error_fields(exc)[0]
    return None


def _client_error_class(exc: ClientError) -> ErrorClass:
    code = error_code(exc) or ""
    if code in AUTH_CODES:
        return AuthError
    if code in THROTTLE_CODES:
        return Throttled
    if code in UNAVAILABLE_CODES:
        return Unavailable
    response = getattr(exc, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if status >= 500:
        return Unavailable
    if status == 429:
        return Throttled
    if status in (401, 403):
        return AuthError
    return ProviderError


def _botocore_class(exc: BaseException) -> tuple[ErrorClass, str]:
    for klass in type(exc).__mro__:
        mapped = BOTOCORE_MAP.get(klass.__name__)
        if mapped is not None and klass.__module__.startswith("botocore"):
            return mapped, klass.__name__
    return ProviderError, type(exc).__name__


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the SDK's own failures (mapped above) or already ours: those
    are a one-line warning; anything else is a bug in guardian, logged with its traceback."""
    if isinstance(exc, ProviderError | ClientError):
        return True
    return any(
        klass.__name__ in BOTOCORE_MAP and klass.__module__.startswith("botocore")
        for klass in type(exc).__mro__
    )


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def map_aws_error(
    exc: BaseException, *, operation: str = "", policy: str = "docs/iam-policy.json"
) -> ProviderError:
    """The ``guardian.errors`` exception for a botocore exception, with a one-line message.

    ``operation`` is the IAM-style action (``ec2:DescribeInstances``), named in the message so a
    denied permission can be granted without reading a traceback; ``policy`` is the shipped
    policy file that grants it (the node agent has its own).
    """
    if isinstance(exc, ProviderError):
        return exc
    where = f"{operation}: " if operation else ""
    if isinstance(exc, ClientError):
        klass = _client_error_class(exc)
        found, text = _error_fields(exc)
        code = found or "error"
        detail = _one_line(text)
        message = f"{where}{code}" + (f": {detail}" if detail else "")
        if klass is AuthError and code not in ("ExpiredToken", "ExpiredTokenException"):
            message += f" (see {policy} for the permissions guardian needs)"
        return klass(message, provider="aws", operation=operation)
    klass, name = _botocore_class(exc)
    if name in _CREDENTIAL_CLASSES:
        return AuthError(CREDENTIALS_HELP, provider="aws", operation=operation)
    # Only the first line: botocore's ResponseParserError quotes the raw answer after it, and
    # an answer cut short may be an AssumeRole one, with the role's secret key in it.
    first = str(exc).split("\n", 1)[0]
    detail = _one_line(first).rstrip(":") or name
    if name == "ResponseParserError":
        # A captive portal, a proxy's error page, a wrong AWS_ENDPOINT_URL: say so first.
        detail = _one_line(f"the answer is not an AWS API response (a proxy's page?): {first}")
        detail = detail.rstrip(":")
    return klass(f"{where}{detail}", provider="aws", operation=operation)

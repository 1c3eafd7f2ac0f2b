"""Every botocore exception and every listed AWS error code lands on the intended guardian error."""

from __future__ import annotations

import inspect
from typing import Any

import botocore.exceptions
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
    SSOTokenLoadError,
)
from botocore.parsers import ResponseParserError

from guardian.errors import AuthError, ProviderError, Throttled, Unavailable
from guardian.providers.aws.errors import (
    AUTH_CODES,
    BOTOCORE_MAP,
    CREDENTIALS_HELP,
    THROTTLE_CODES,
    UNAVAILABLE_CODES,
    map_aws_error,
)


def client_error(code: str, status: int = 400, message: str = "it failed") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "DescribeInstances")


# The codes the brief names explicitly; each must map, whatever else the tables hold.
REQUIRED = {
    "AuthFailure": AuthError,
    "UnauthorizedOperation": AuthError,
    "AccessDenied": AuthError,
    "AccessDeniedException": AuthError,
    "ExpiredToken": AuthError,
    "Throttling": Throttled,
    "ThrottlingException": Throttled,
    "RequestLimitExceeded": Throttled,
    "InternalError": Unavailable,
    "ServiceUnavailable": Unavailable,
}


@pytest.mark.parametrize(("code", "expected"), sorted(REQUIRED.items()))
def test_required_codes_are_mapped(code: str, expected: type[ProviderError]) -> None:
    assert type(map_aws_error(client_error(code))) is expected


@pytest.mark.parametrize(
    ("codes", "expected"),
    [(AUTH_CODES, AuthError), (THROTTLE_CODES, Throttled), (UNAVAILABLE_CODES, Unavailable)],
)
def test_every_listed_code_maps_to_its_class(
    codes: frozenset[str], expected: type[ProviderError]
) -> None:
    unmapped = [code for code in codes if type(map_aws_error(client_error(code))) is not expected]
    assert unmapped == []


def test_code_tables_do_not_overlap() -> None:
    assert not AUTH_CODES & THROTTLE_CODES
    assert not AUTH_CODES & UNAVAILABLE_CODES
    assert not THROTTLE_CODES & UNAVAILABLE_CODES


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, Unavailable), (503, Unavailable), (429, Throttled), (403, AuthError), (400, None)],
)
def test_unknown_codes_fall_back_on_the_http_status(
    status: int, expected: type[ProviderError] | None
) -> None:
    error = map_aws_error(client_error("SomethingNew", status))
    assert type(error) is (expected or ProviderError)


def test_every_botocore_exception_class_is_placed() -> None:
    """Fails when a botocore upgrade adds an exception we have not decided about."""
    unplaced = []
    for name, klass in inspect.getmembers(botocore.exceptions, inspect.isclass):
        if not issubclass(klass, Exception) or issubclass(klass, Warning):
            continue
        if klass.__module__ != "botocore.exceptions":
            continue
        families = [k.__name__ for k in klass.__mro__ if k.__name__ in BOTOCORE_MAP]
        # Placed by itself, or through a family more specific than the catch-all base.
        if not families or (families[0] == "BotoCoreError" and name != "BotoCoreError"):
            unplaced.append(name)
    assert unplaced == []


def test_every_class_maps_without_raising() -> None:
    for _, klass in inspect.getmembers(botocore.exceptions, inspect.isclass):
        if issubclass(klass, Exception) and klass.__module__ == "botocore.exceptions":
            instance = klass.__new__(klass)
            Exception.__init__(instance, "boom")
            assert isinstance(map_aws_error(instance), ProviderError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (EndpointConnectionError(endpoint_url="https://ec2.eu-west-1.amazonaws.com"), Unavailable),
        (ConnectTimeoutError(endpoint_url="https://x"), Unavailable),
        (ReadTimeoutError(endpoint_url="https://x"), Unavailable),
        (ResponseParserError("invalid XML received: <html>500</html>"), Unavailable),
        (SSOTokenLoadError(error_msg="expired"), AuthError),
        (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), AuthError),
        (ParamValidationError(report="bad"), ProviderError),
        (KeyError("Reservations"), ProviderError),
    ],
)
def test_sdk_exceptions(exc: BaseException, expected: type[ProviderError]) -> None:
    assert type(map_aws_error(exc, operation="ec2:DescribeInstances")) is expected


def test_missing_credentials_is_one_line_that_says_how_to_configure() -> None:
    error = map_aws_error(NoCredentialsError(), operation="sts:GetCallerIdentity")
    assert isinstance(error, AuthError)
    assert str(error) == CREDENTIALS_HELP
    assert "\n" not in str(error)
    assert "AWS_PROFILE" in str(error)
    assert "aws configure" in str(error)


def test_message_names_operation_code_and_hint_on_one_line() -> None:
    error = map_aws_error(
        client_error("UnauthorizedOperation", 403, "You are not\nauthorized"),
        operation="ec2:DescribeInstances",
    )
    assert str(error) == (
        "ec2:DescribeInstances: UnauthorizedOperation: You are not authorized "
        "(see docs/iam-policy.json for the permissions guardian needs)"
    )
    assert error.provider == "aws"
    assert error.operation == "ec2:DescribeInstances"


def test_long_messages_are_cut() -> None:
    error = map_aws_error(ResponseParserError("x" * 5000))
    assert len(str(error)) <= 300


def test_guardian_errors_pass_through() -> None:
    original = Throttled("slow down", provider="aws")
    assert map_aws_error(original) is original


def test_an_xml_error_body_botocore_could_not_parse_reads_like_any_access_denied() -> None:
    # What moto (and a proxy) answer a CBOR CloudWatch client that may not ListMetrics: the XML
    # body lands whole in the Message, under the HTTP status as the Code.
    body = (
        '<?xml version="1.0" encoding="utf-8"?>\n<ErrorResponse><Errors><Error>'
        "<Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/guardian is not "
        "authorized to perform: cloudwatch:ListMetrics</Message><Type>Sender</Type></Error>"
        "</Errors><Secret>AKIAEXAMPLE wJalrXUtnFEMI</Secret></ErrorResponse>"
    )
    error = map_aws_error(client_error("403", 403, body), operation="cloudwatch:ListMetrics")
    assert isinstance(error, AuthError)
    assert str(error) == (
        "cloudwatch:ListMetrics: AccessDenied: User: arn:aws:iam::123456789012:user/guardian is "
        "not authorized to perform: cloudwatch:ListMetrics "
        "(see docs/iam-policy.json for the permissions guardian needs)"
    )
    # Nothing else of the body is quoted: it may carry what must not reach a log.
    assert "<" not in str(error)
    assert "AKIA" not in str(error)


@pytest.mark.parametrize(
    ("body", "expected", "message"),
    [
        ("<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>", Throttled, ""),
        ("<html><body>Forbidden: token=s3cr3t</body></html>", AuthError, ""),
        ("<Error><Message>a &amp; b</Message></Error>", AuthError, "a & b"),
    ],
)
def test_an_xml_body_gives_only_its_code_and_message(
    body: str, expected: type[ProviderError], message: str
) -> None:
    error = map_aws_error(client_error("403", 403, body), operation="cloudwatch:GetMetricData")
    assert type(error) is expected
    assert "<" not in str(error)
    assert "s3cr3t" not in str(error)
    assert str(error).startswith("cloudwatch:GetMetricData: ")
    if message:
        assert message in str(error)

"""``map_google_error``: every Google exception class is placed, and each lands where it should.

The completeness tests fail when a library upgrade adds an exception class we have not
decided about (or removes one the table still names), as httpx's own exception test does.
"""

from __future__ import annotations

import inspect
from types import ModuleType

import google.api_core.exceptions as api_exceptions
import google.auth.exceptions as auth_exceptions
import grpc
import pytest
import requests

from guardian.errors import AuthError, ProviderError, Throttled, Unavailable
from guardian.providers.gcp.errors import ADC_HELP, API_CORE_MAP, AUTH_MAP, map_google_error


def _exception_classes(module: ModuleType) -> set[str]:
    return {
        name
        for name, klass in inspect.getmembers(module, inspect.isclass)
        if issubclass(klass, BaseException) and klass.__module__ == module.__name__
    }


@pytest.mark.parametrize(
    ("module", "table"),
    [(api_exceptions, API_CORE_MAP), (auth_exceptions, AUTH_MAP)],
    ids=["api_core", "auth"],
)
def test_every_exception_class_is_mapped_and_no_stale_names(
    module: ModuleType, table: dict[str, type[ProviderError]]
) -> None:
    defined = _exception_classes(module)
    assert defined - set(table) == set(), "unmapped: decide what these mean for a unit"
    assert set(table) - defined == set(), "the table names classes the library no longer has"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api_exceptions.PermissionDenied("no compute.instances.list"), AuthError),
        (api_exceptions.Forbidden("403 from REST"), AuthError),
        (api_exceptions.Unauthenticated("expired"), AuthError),
        (api_exceptions.TooManyRequests("slow down"), Throttled),
        (api_exceptions.ResourceExhausted("quota"), Throttled),
        (api_exceptions.ServiceUnavailable("down"), Unavailable),
        (api_exceptions.DeadlineExceeded("slow"), Unavailable),
        (api_exceptions.InternalServerError("oops"), Unavailable),
        (api_exceptions.NotFound("project gone"), ProviderError),
        (api_exceptions.InvalidArgument("bad filter"), ProviderError),
        (auth_exceptions.RefreshError("revoked"), AuthError),
        (auth_exceptions.TransportError("no route to token server"), Unavailable),
        (requests.ConnectionError("refused"), Unavailable),
        (requests.ReadTimeout("read timed out"), Unavailable),
        (ConnectionRefusedError(111, "refused"), Unavailable),
        (ValueError("a bug of ours"), ProviderError),
    ],
)
def test_each_error_means_what_it_says(exc: Exception, expected: type[ProviderError]) -> None:
    mapped = map_google_error(exc, "instances.aggregatedList")
    assert type(mapped) is expected
    assert mapped.provider == "gcp"
    assert mapped.operation == "instances.aggregatedList"
    assert str(mapped).startswith("instances.aggregatedList: ")
    assert "\n" not in str(mapped)


def test_grpc_errors_keep_the_server_message_on_one_line() -> None:
    error = api_exceptions.from_grpc_status(
        grpc.StatusCode.PERMISSION_DENIED, "Permission monitoring.timeSeries.list denied\non it"
    )
    mapped = map_google_error(error, "monitoring.listTimeSeries")
    assert isinstance(mapped, AuthError)
    assert str(mapped) == (
        "monitoring.listTimeSeries: PermissionDenied (403): "
        "Permission monitoring.timeSeries.list denied on it"
    )


def test_a_retry_error_is_judged_by_its_last_error() -> None:
    throttled = api_exceptions.TooManyRequests("rate limit")
    mapped = map_google_error(
        api_exceptions.RetryError("Timeout of 60.0s exceeded", throttled), "op"
    )
    assert isinstance(mapped, Throttled)
    assert "gave up retrying" in str(mapped)
    assert "TooManyRequests (429): rate limit" in str(mapped)
    bare = map_google_error(api_exceptions.RetryError("Timeout", None), "op")
    assert isinstance(bare, Unavailable)


def test_missing_adc_says_how_to_set_them_up() -> None:
    mapped = map_google_error(auth_exceptions.DefaultCredentialsError("not found"), "credentials")
    assert isinstance(mapped, AuthError)
    assert str(mapped) == ADC_HELP
    assert "gcloud auth application-default login" in ADC_HELP


def test_our_own_errors_pass_through_unchanged() -> None:
    original = Throttled("already ours", provider="gcp", operation="x")
    assert map_google_error(original, "y") is original

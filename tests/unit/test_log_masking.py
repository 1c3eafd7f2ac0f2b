"""The log processor masks a notification URL's secrets wherever they sit: credentials, every
path segment, the query (custom headers carry tokens there)."""

from __future__ import annotations

import pytest

from guardian.logs import mask_secrets


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("json://127.0.0.1:9/hooks/T0KEN5ecretPathSegment", "T0KEN5ecretPathSegment"),
        ("jsons://host/hook?+X-Token=HeaderSecret123", "HeaderSecret123"),
        ("failed: json://user:H00kPa55@host:1/a/b/c", "H00kPa55"),
        ("slack://T0001/B0002/abcdefSECRET to #ops", "abcdefSECRET"),
        ("https://hooks.slack.com/services/T1/B2/xyzSECRETxyz", "xyzSECRETxyz"),
        ("mailto://mailer:Smtp5ecret@127.0.0.1:25?from=a@b.c", "Smtp5ecret"),
        ("workflows://tenant.example.com:443/wf/sig5ecret1234", "sig5ecret1234"),
    ],
)
def test_notification_urls_lose_every_secret(text: str, secret: str) -> None:
    event = mask_secrets(None, "info", {"event": "x", "error": text, "targets": [text]})
    assert secret not in str(event)
    assert "***" in event["error"]


def test_what_is_not_a_secret_stays_readable() -> None:
    text = 'endpoint URL: "http://127.0.0.1:39495/" json://127.0.0.1:9 refused'
    event = mask_secrets(None, "info", {"event": "x", "error": text})
    assert event["error"] == text
    assert mask_secrets(None, "info", {"event": "x", "external_id": "abc"})["external_id"] == "***"


def test_an_unparsable_answer_is_not_quoted_in_the_error() -> None:
    from botocore.parsers import ResponseParserError

    from guardian.providers.aws.errors import map_aws_error

    body = "<AssumeRoleResponse><Credentials><SecretAccessKey>s3cr3tKey"
    raised = ResponseParserError(
        "Unable to parse response (no element found: line 1, column 60), invalid XML "
        f"received. Further retries may succeed:\nb'{body}'"
    )
    error = map_aws_error(raised, operation="sts:AssumeRole")
    assert "s3cr3tKey" not in str(error)
    assert str(error).startswith("sts:AssumeRole: the answer is not an AWS API response")
    assert "Unable to parse response (no element found" in str(error)

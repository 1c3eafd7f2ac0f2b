"""Credentials, endpoints and import hygiene of the GCP provider.

No test here reaches a network: Application Default Credentials are pointed at files in a
temporary folder, so google.auth never falls through to the GCE metadata server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guardian.config import Config, GcpConfig
from guardian.errors import AuthError, ConfigError
from guardian.providers.gcp.clients import Endpoint, parse_endpoint, resolve_credentials
from guardian.providers.gcp.errors import ADC_HELP
from guardian.providers.gcp.provider import GcpProvider


@pytest.fixture
def no_adc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with no ADC at all: no key file named, an empty gcloud config, and
    google.auth told not to look for a GCE metadata server."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "was not found"), ("{not json", "is not a valid json file")],
)
def test_a_bad_key_file_is_named_not_the_variable_to_set(
    no_adc: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, reason: str
) -> None:
    key = no_adc / "key.json"
    if content is not None:
        key.write_text(content)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(AuthError) as raised:
        resolve_credentials(GcpConfig(enabled=True, credentials="default"))
    message = str(raised.value)
    assert message.startswith(f"GOOGLE_APPLICATION_CREDENTIALS={key}: ")
    assert reason in message
    assert message != ADC_HELP
    assert "\n" not in message


def _config(**gcp: object) -> Config:
    return Config.model_validate({"aws": {"enabled": False}, "gcp": {"enabled": True, **gcp}})


def test_missing_adc_is_one_line_saying_how_to_set_them_up(no_adc: Path) -> None:
    with pytest.raises(AuthError) as raised:
        GcpProvider(_config(projects=["p"], credentials="default"))
    assert str(raised.value) == ADC_HELP
    assert "\n" not in str(raised.value)


def test_missing_adc_through_the_cli_is_one_line_and_exit_2(no_adc: Path) -> None:
    config = no_adc / "guardian.yaml"
    config.write_text(
        "aws: {enabled: false}\n"
        f"state_dir: {no_adc / 'state'}\n"
        "gcp: {enabled: true, projects: [p], credentials: default}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "from guardian.cli import main; main()", "audit", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"guardian: error: {ADC_HELP}"
    assert "Traceback" not in result.stderr


def test_adc_names_the_project_when_none_is_configured(
    no_adc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = no_adc / "user.json"
    key.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "id.apps.googleusercontent.com",
                "client_secret": "secret",
                "refresh_token": "token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-adc")
    provider = GcpProvider(_config(credentials="default"))  # builds no client, calls nothing
    assert provider.projects == ("from-adc",)
    provider.close()


def test_anonymous_credentials_only_when_asked() -> None:
    from google.auth.credentials import AnonymousCredentials

    credentials, project = resolve_credentials(GcpConfig(credentials="anonymous"))
    assert isinstance(credentials, AnonymousCredentials)
    assert project is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("http://127.0.0.1:8085", Endpoint("127.0.0.1:8085", plaintext=True)),
        ("http://localhost:9000/", Endpoint("localhost:9000", plaintext=True)),
        ("https://compute-private.example.com", Endpoint("compute-private.example.com", False)),
        ("monitoring.googleapis.com:443", Endpoint("monitoring.googleapis.com:443", False)),
    ],
)
def test_endpoints_plaintext_only_for_http(value: str | None, expected: Endpoint | None) -> None:
    assert parse_endpoint("compute_endpoint", value) == expected


@pytest.mark.parametrize("value", ["ftp://host:21", "http://host:1/compute/v1", "http://"])
def test_bad_endpoints_are_config_errors_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^gcp\.monitoring_endpoint: "):
        parse_endpoint("monitoring_endpoint", value)


_IMPORTED_SDKS = (
    "import sys\n"
    "print(sorted({m.split('.')[0] + '.' + m.split('.')[1] if m.startswith('google.') else "
    "m.split('.')[0] for m in sys.modules if m.startswith(('google', 'boto3', 'botocore', "
    "'grpc'))}))\n"
)


def test_guardian_help_imports_no_cloud_sdk() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['guardian', '--help']\n"
        "from guardian.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('---')\n" + _IMPORTED_SDKS
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    help_text, _, imported = result.stdout.rpartition("---\n")
    assert "Usage" in help_text
    assert imported.strip() == "[]"


def test_importing_the_gcp_modules_imports_no_google_library() -> None:
    code = (
        "import guardian.providers.gcp.provider, guardian.prices.refresh_gcp\n"
        "import guardian.simulated.gcp\n" + _IMPORTED_SDKS
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"

"""Config: every key optional, unknown keys and bad values named in one line, lookup order."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from guardian.config import (
    Config,
    Mode,
    apply_overrides,
    find_config_file,
    load_config,
    mask_secret_url,
    masked_dump,
    parse_config,
    parse_size_mib,
)
from guardian.durations import format_duration, parse_duration
from guardian.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "guardian.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "guardian.yaml"
    path.write_text(text)
    return path


def test_defaults_match_design() -> None:
    config = Config()
    assert config.mode is Mode.NOTIFY
    assert config.idle.window == timedelta(minutes=60)
    assert config.idle.window_released == timedelta(minutes=10)
    assert config.idle.gpu_util_below == 5
    assert config.cost.lookback == timedelta(hours=24)
    assert config.aws.metrics.namespace == "CWAgent"
    assert config.aws.regions == ["us-east-1"]
    assert config.effective_state_url == "sqlite:////var/lib/gpu-guardian/state.db"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1.5h", 5400), (45, 45)],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["soon", "-5m", "5 minutes", "", "1y"])
def test_bad_duration(bad: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_format_duration_roundtrip() -> None:
    for text in ("90s", "30m", "2h", "7d"):
        assert format_duration(parse_duration(text)) == text


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "idle:\n  windw: 30m\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "idle.windw: unknown key" in message
    assert "\n" not in message


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "idle:\n  window: soon\n")
    with pytest.raises(ConfigError, match=r"idle\.window: not a duration: 'soon'"):
        load_config(path)


def test_bad_mode_and_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode: "):
        load_config(write(tmp_path, "mode: destroy\n"))
    with pytest.raises(ConfigError, match=r"idle\.gpu_util_below: "):
        load_config(write(tmp_path, "idle: {gpu_util_below: 140}\n"))
    with pytest.raises(ConfigError, match=r"aws\.regions: "):
        load_config(write(tmp_path, "aws: {regions: []}\n"))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line \d"):
        load_config(write(tmp_path, "mode: audit\nidle: [a, b\nother: 1\n"))


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GUARDIAN_CONFIG", raising=False)
    assert find_config_file() is None
    (tmp_path / "config").mkdir()
    local = write(tmp_path / "config", "mode: audit\n")
    assert find_config_file() == Path("config/guardian.yaml")
    from_env = tmp_path / "env.yaml"
    from_env.write_text("mode: enforce\n")
    monkeypatch.setenv("GUARDIAN_CONFIG", str(from_env))
    assert find_config_file() == from_env
    assert find_config_file(local) == local
    assert load_config()[0].mode is Mode.ENFORCE


def test_overrides() -> None:
    data = apply_overrides({"idle": {"window": "60m"}}, ["idle.window=20m", "mode=audit"])
    assert data == {"idle": {"window": "20m"}, "mode": "audit"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["idle.window"])


def test_example_file_documents_every_key() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    config = Config.model_validate(data)
    assert config == Config()  # the example shows the defaults

    def keys(model: type[BaseModel], prefix: str = "") -> set[str]:
        found: set[str] = set()
        for name, field in model.model_fields.items():
            annotation: Any = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found |= keys(annotation, f"{prefix}{name}.")
            else:
                found.add(prefix + name)
        return found

    def present(node: dict[str, Any], prefix: str = "") -> set[str]:
        found: set[str] = set()
        for key, value in node.items():
            if isinstance(value, dict):
                found |= present(value, f"{prefix}{key}.")
            else:
                found.add(prefix + key)
        return found

    assert keys(Config) == present(data)


def test_secrets_are_masked() -> None:
    config = Config.model_validate(
        {
            "notify": {
                "urls": [
                    "slack://T0001/B0002/abcdefSECRET",
                    "mailto://alerts:hunter2@smtp.example.com?to=ops@example.com",
                ]
            },
            "aws": {
                "accounts": [{"role_arn": "arn:aws:iam::111111111111:role/g", "external_id": "xyz"}]
            },
            "state_url": "postgresql+psycopg://guardian:pw@db/guardian",
        }
    )
    dumped = str(masked_dump(config))
    for secret in ("abcdefSECRET", "hunter2", "xyz", "pw@db"):
        assert secret not in dumped
    assert mask_secret_url("json://127.0.0.1:8080/hook") == "json://127.0.0.1:8080/***"


def test_local_disks_and_autoscaling_groups_are_validated_with_a_reason() -> None:
    from guardian.config import parse_config

    config = parse_config({"enforce": {"local_disk_unused_below": "512MiB"}})
    assert config.enforce.local_disk_unused_below == 512.0
    assert config.enforce.local_disks == "stop-if-unused"
    assert config.enforce.autoscaling_groups == "alert"
    assert (
        parse_config({"enforce": {"local_disk_unused_below": "2GB"}}).enforce.model_dump(
            mode="json"
        )["local_disk_unused_below"]
        == f"{2e9 / 2**20:g}MiB"
    )
    for bad, message in (
        ({"local_disk_unused_below": "5"}, "not a size: '5'"),
        ({"local_disk_unused_below": "0GiB"}, "0MiB is not between 1MiB and 1TiB: .*never stop"),
        ({"local_disk_unused_below": "2TiB"}, "2TiB is not between 1MiB and 1TiB"),
        ({"local_disks": "wipe"}, "enforce.local_disks"),
        ({"autoscaling_groups": "terminate"}, "enforce.autoscaling_groups"),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
            parse_config({"enforce": bad})
        assert "\n" not in str(info.value)


def test_allow_instance_store_loss_is_a_deprecated_alias() -> None:
    from structlog.testing import capture_logs

    from guardian.config import parse_config

    with capture_logs() as logs:
        assert parse_config({"enforce": {"allow_instance_store_loss": True}}).enforce.local_disks
        allowed = parse_config({"enforce": {"allow_instance_store_loss": True}})
        refused = parse_config({"enforce": {"allow_instance_store_loss": False}})
    assert (allowed.enforce.local_disks, refused.enforce.local_disks) == ("stop", "alert")
    assert [e["key"] for e in logs if e["event"] == "config_key_deprecated"] == [
        "enforce.allow_instance_store_loss"
    ] * 3
    same = {"allow_instance_store_loss": True, "local_disks": "stop"}
    assert parse_config({"enforce": same}).enforce.local_disks == "stop"
    with pytest.raises(ConfigError, match="contradicts local_disks: alert"):
        parse_config({"enforce": {"allow_instance_store_loss": True, "local_disks": "alert"}})
    with pytest.raises(ConfigError, match="expected true or false"):
        parse_config({"enforce": {"allow_instance_store_loss": "yes"}})
    assert "allow_instance_store_loss" not in Config().model_dump()["enforce"]


# ---- bounds: every number and duration, with a reason (issue 12) ---------------------------


def _leaves(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        annotation: Any = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaves(annotation, f"{prefix}{name}.")
        elif any(getattr(m, "func", None) is parse_size_mib for m in field.metadata):
            yield prefix + name, "size"  # a float parsed from "1GiB" (enforce.*)
        else:
            yield prefix + name, annotation


def _absurd(annotation: Any) -> Any:
    """A value no key of this type should accept: a century, a billion, or a million TiB."""
    if get_origin(annotation) is Annotated:
        return _absurd(get_args(annotation)[0])
    if annotation == "size":
        return "1000000TiB"
    if annotation is timedelta:
        return "36500d"
    if annotation in (int, float):
        return 1_000_000_000
    if get_origin(annotation) is tuple:
        return [_absurd(arg) for arg in get_args(annotation)]
    return None


def test_every_number_and_duration_has_bounds_and_a_reason() -> None:
    # A key added without `within(...)` fails here: copy the pattern of its neighbours.
    checked = []
    for key, annotation in _leaves(Config):
        value = _absurd(annotation)
        if value is None:
            continue
        checked.append(key)
        with pytest.raises(ConfigError) as info:
            parse_config(apply_overrides({}, [f"{key}={value}"]))
        message = str(info.value)
        assert f"config: {key}" in message, message
        assert "is not between" in message, message
        assert message.rsplit(": ", 1)[1].strip(), "the bound gives its reason"
    assert {"poll_interval", "idle.grace", "cost.rule_of_thumb", "agent.interval"} <= set(checked)


def test_poll_interval_has_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARDIAN_POLL_FLOOR", raising=False)
    for value in ("0s", "30s"):
        with pytest.raises(ConfigError, match=f"poll_interval: {value} is below 1m: .* billed"):
            parse_config({"poll_interval": value})
    assert parse_config({"poll_interval": "1m"}).poll_interval == timedelta(minutes=1)
    monkeypatch.setenv("GUARDIAN_POLL_FLOOR", "1s")  # a simulated cloud, as the tests poll
    assert parse_config({"poll_interval": "2s"}).poll_interval == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cost": {"rule_of_thumb": [3, 2]}}, r"cost.rule_of_thumb: \[3, 2\]: give the low"),
        ({"cost": {"rule_of_thumb": [0, 2]}}, r"cost.rule_of_thumb\[0\]: 0 is not between 1"),
        ({"aws": {"regions": ["moon-1"]}}, r"aws.regions\[0\]: 'moon-1' is not an AWS region"),
        ({"aws": {"regions": "us-east-1"}}, r"aws.regions: a list of regions such as \[us-east-1"),
        ({"aws": {"regions": "all"}}, None),
        ({"aws": {"regions": ["us-gov-west-1", "ap-southeast-5"]}}, None),
        (
            {"aws": {"accounts": [{"role_arn": "gpu-guardian"}]}},
            r"aws.accounts\[0\].role_arn: 'gpu-guardian' is",
        ),
        ({"state_url": "notaurl"}, "state_url: not a database URL"),
        ({"state_url": "postgresql+psycopg://u:p@db/g"}, None),
        ({"gcp": {"metrics": {"period": 30}}}, "gcp.metrics.period: 30 is not between 60"),
    ],
)
def test_values_that_would_be_accepted_silently(data: dict[str, Any], message: str | None) -> None:
    if message is None:
        parse_config(data)
        return
    with pytest.raises(ConfigError, match=f"^config: {message}") as info:
        parse_config(data)
    assert "list[" not in str(info.value)  # no validator internals
    assert "literal[" not in str(info.value)


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        ({"digest": "99 * * * *"}, "notify.digest: not a cron expression"),
        ({"urls": ["notaurl"]}, r"notify.urls\[0\]: not a valid apprise URL"),
    ],
)
def test_check_config_refuses_what_the_daemon_would(
    tmp_path: Path, notify: dict[str, Any], message: str
) -> None:
    from guardian.daemon.preflight import check_daemon_config

    with pytest.raises(ConfigError, match=message):
        check_daemon_config(parse_config({"notify": notify, "state_dir": str(tmp_path)}))
    check_daemon_config(parse_config({"state_dir": str(tmp_path)}))  # the defaults pass


def test_the_configuration_page_documents_every_key() -> None:
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", page, flags=re.MULTILINE))
    assert documented == {key for key, _ in _leaves(Config)}

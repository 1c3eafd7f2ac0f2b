"""Config: every key optional, unknown keys and bad values named in one line, lookup order."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

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
            "aws": {"accounts": [{"role_arn": "arn:aws:iam::1:role/g", "external_id": "xyz"}]},
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
        ({"local_disk_unused_below": "0GiB"}, "must be above 0 (to never stop"),
        ({"local_disk_unused_below": "2TiB"}, "at most 1TiB"),
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

"""The configuration file: pydantic models for every key in DESIGN.md, loading and overrides.

Every key is optional; an unknown key or a bad value is a ``ConfigError`` whose message is one
line naming the key path (``idle.window: not a duration: 'soon'``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

from guardian.durations import format_duration, parse_duration
from guardian.errors import ConfigError

__all__ = [
    "DEFAULT_SEARCH_PATHS",
    "Config",
    "Mode",
    "apply_overrides",
    "find_config_file",
    "load_config",
    "mask_secret_url",
    "masked_dump",
]

DEFAULT_SEARCH_PATHS: tuple[Path, ...] = (
    Path("/etc/gpu-guardian/guardian.yaml"),
    Path("config/guardian.yaml"),
)

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


class Mode(StrEnum):
    AUDIT = "audit"
    NOTIFY = "notify"
    ENFORCE = "enforce"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdleConfig(_Section):
    gpu_util_below: float = Field(5.0, ge=0, le=100)
    window: Duration = timedelta(minutes=60)
    window_released: Duration = timedelta(minutes=10)
    released_below_mib: float = Field(256.0, ge=0)
    min_uptime: Duration = timedelta(minutes=20)
    max_staleness: Duration = timedelta(minutes=10)
    grace: Duration = timedelta(minutes=15)
    # Extension: the share of the time since measuring began (the lookback start, the launch or
    # the first sample, whichever is latest) that must have samples before any verdict other
    # than `unmeasured` is given.
    min_coverage: float = Field(0.5, gt=0, le=1)
    # Extension (guardian.policy.history): signals from the instance's own lookback that may
    # only lengthen the wait. Wait this multiple of its longest pause that ended in work (0 = off)
    history_margin: float = Field(2.0, ge=0)
    # ... and at least this long when it works in repeated bursts, a service or notebook (0s = off)
    window_bursty: Duration = timedelta(hours=4)


class CostConfig(_Section):
    lookback: Duration = timedelta(hours=24)
    expected_speedup: float = Field(10.0, gt=0)
    rule_of_thumb: tuple[float, float] = (2.0, 3.0)


class LimitsConfig(_Section):
    max_stops_per_cycle: int = Field(5, ge=0)
    max_idle_fraction: float = Field(0.5, gt=0, le=1)
    # Extension: guardian alerts about itself (failing cycles, an account or region it cannot
    # list, metrics it cannot read) once a problem has lasted this many cycles in a row.
    alert_after_failed_cycles: int = 3

    @field_validator("alert_after_failed_cycles")
    @classmethod
    def _alert_after_in_range(cls, value: int) -> int:
        if not 1 <= value <= 100:
            raise ValueError(
                f"{value} is out of range 1-100: the cycles in a row a problem must last "
                "before guardian alerts about itself (1 = at once; over 100 would hide an "
                "outage for hours)"
            )
        return value


class EnforceConfig(_Section):
    allow_instance_store_loss: bool = False
    hibernate: bool = False


class MetricsConfig(_Section):
    listen: str = "127.0.0.1:9464"


class AwsMetricsConfig(_Section):
    namespace: str = "CWAgent"
    gpu_util: str = "nvidia_smi_utilization_gpu"
    gpu_mem_used: str = "nvidia_smi_memory_used"
    period: int = Field(60, ge=1)


class AwsAccount(_Section):
    role_arn: str
    external_id: str | None = None
    name: str | None = None


class AwsConfig(_Section):
    enabled: bool = True
    regions: list[str] | Literal["all"] = Field(default_factory=lambda: ["us-east-1"])
    accounts: list[AwsAccount] = Field(default_factory=list)
    metrics: AwsMetricsConfig = AwsMetricsConfig()

    @field_validator("regions")
    @classmethod
    def _regions_not_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError('list at least one region, or "all"')
        return value


class GcpMetricsConfig(_Section):
    gpu_util: str = "agent.googleapis.com/gpu/utilization"
    gpu_mem_used: str = "agent.googleapis.com/gpu/memory/bytes_used"
    period: int = Field(60, ge=1)


class GcpConfig(_Section):
    enabled: bool = False
    projects: list[str] = Field(default_factory=list)
    credentials: Literal["default", "anonymous"] = "default"
    metrics: GcpMetricsConfig = GcpMetricsConfig()
    compute_endpoint: str | None = None
    monitoring_endpoint: str | None = None
    billing_endpoint: str | None = None


class NotifyConfig(_Section):
    urls: list[str] = Field(default_factory=list)
    digest: str = "0 9 * * *"
    # Extension: also mail the owner named by the owner tag, through this apprise mailto:// URL
    # (the owner's address is appended as the recipient). Empty = off.
    owner_mailto: str = ""
    owner_email_domain: str = ""


class AgentConfig(_Section):
    interval: Duration = timedelta(seconds=10)
    publish: Literal["none", "cloudwatch", "gcp"] = "none"
    autostop: bool = False
    listen: str = "127.0.0.1:9465"


class PricesConfig(_Section):
    refresh_weekly: bool = False


class Config(_Section):
    mode: Mode = Mode.NOTIFY
    dry_run: bool = False
    poll_interval: Duration = timedelta(minutes=5)
    state_dir: Path = Path("/var/lib/gpu-guardian")
    state_url: str | None = None  # default: SQLite in state_dir
    owner_tags: list[str] = Field(
        default_factory=lambda: ["owner", "Owner", "team", "created-by", "CreatedBy"]
    )
    idle: IdleConfig = IdleConfig()
    cost: CostConfig = CostConfig()
    limits: LimitsConfig = LimitsConfig()
    enforce: EnforceConfig = EnforceConfig()
    metrics: MetricsConfig = MetricsConfig()
    aws: AwsConfig = AwsConfig()
    gcp: GcpConfig = GcpConfig()
    notify: NotifyConfig = NotifyConfig()
    agent: AgentConfig = AgentConfig()
    prices: PricesConfig = PricesConfig()

    @property
    def effective_state_url(self) -> str:
        return self.state_url or f"sqlite:///{self.state_dir / 'state.db'}"


def _describe(error: ValidationError) -> str:
    """The first validation problem as ``key.path: message``."""
    first = error.errors()[0]
    path = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required key is missing"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{path}: {message}{suffix}"


def find_config_file(explicit: Path | None = None) -> Path | None:
    """``--config``, then ``$GUARDIAN_CONFIG``, then the default search paths; None = defaults."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get("GUARDIAN_CONFIG")
    if from_env:
        return Path(from_env)
    for candidate in DEFAULT_SEARCH_PATHS:
        if candidate.is_file():
            return candidate
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not {type(data).__name__}"
        )
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``idle.window=20m`` style overrides (values parsed as YAML scalars) to raw data."""
    result: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, raw_value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. idle.window=20m")
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw_value) if raw_value.strip() else ""
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def parse_config(data: Mapping[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc


def load_config(
    explicit: Path | None = None, overrides: Iterable[str] = ()
) -> tuple[Config, Path | None]:
    """Find, read and validate the config; returns it with the file it came from (or None)."""
    path = find_config_file(explicit)
    data = _read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return parse_config(data, str(path) if path else "config"), path


def mask_secret_url(url: str) -> str:
    """``slack://T1/B2/secret`` → ``slack://T1/***``: keep what identifies the channel only.

    The user name and password, every path segment and the query may carry a token, so only
    the scheme and the host (with its port) survive.
    """
    parts = urlsplit(url)
    if not parts.scheme:
        return "***"
    host = parts.netloc.rsplit("@", 1)[-1]
    hidden = parts.path.strip("/") or parts.query or "@" in parts.netloc
    return f"{parts.scheme}://{host}{'/***' if hidden else ''}"


def masked_dump(config: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret masked, for display and logs."""
    data = config.model_dump(mode="json")
    data["notify"]["urls"] = [mask_secret_url(url) for url in config.notify.urls]
    if config.notify.owner_mailto:
        data["notify"]["owner_mailto"] = mask_secret_url(config.notify.owner_mailto)
    for account in data["aws"]["accounts"]:
        if account.get("external_id"):
            account["external_id"] = "***"
    if config.state_url and "@" in config.state_url:
        data["state_url"] = mask_secret_url(config.state_url)
    return data

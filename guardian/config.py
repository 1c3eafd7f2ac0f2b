"""The configuration file: pydantic models for every key in DESIGN.md, loading and overrides.

Every key is optional; an unknown key or a bad value is a ``ConfigError`` whose message is one
line naming the key path (``idle.window: not a duration: 'soon'``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import structlog
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from guardian.bounds import (
    database_url,
    format_size_mib,
    is_aws_region,
    listen_address,
    parse_size_mib,
    region_list,
    region_name,
    role_arn,
    url_syntax,
    within,
)
from guardian.durations import format_duration, parse_duration
from guardian.errors import ConfigError

__all__ = [
    "DEFAULT_SEARCH_PATHS",
    "AwsAccount",
    "AwsOrganization",
    "Config",
    "GcpProjectsBelow",
    "Mode",
    "apply_overrides",
    "find_config_file",
    "is_aws_region",
    "load_config",
    "mask_secret_url",
    "masked_dump",
    "parse_config",
    "parse_size_mib",
    "within",
]

log = structlog.get_logger(__name__)

DEFAULT_SEARCH_PATHS: tuple[Path, ...] = (
    Path("/etc/gpu-guardian/guardian.yaml"),
    Path("config/guardian.yaml"),
)

Url = Annotated[str, AfterValidator(url_syntax)]
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
# `guardian run` polls at least this far apart, unless GUARDIAN_POLL_FLOOR lowers the floor for a
# simulated cloud (the end-to-end tests poll every 2 s; a real cloud bills every poll).
POLL_FLOOR = "1m"


SizeMiB = Annotated[
    float,
    BeforeValidator(parse_size_mib),
    PlainSerializer(format_size_mib, return_type=str),
]


class Mode(StrEnum):
    AUDIT = "audit"
    NOTIFY = "notify"
    ENFORCE = "enforce"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdleConfig(_Section):
    gpu_util_below: Annotated[
        float, within(0, 50, "percent; a GPU busier than half the time is working, not idle")
    ] = 5.0
    window: Annotated[
        Duration, within("1m", "7d", "at least one metric period; beyond a week nothing is idle")
    ] = timedelta(minutes=60)
    window_released: Annotated[
        Duration, within("0s", "7d", "0s = off; beyond a week nothing is idle")
    ] = timedelta(minutes=10)
    released_below_mib: Annotated[
        float, within(0, 8192, "MiB; a GPU holding more still has a model loaded")
    ] = 256.0
    min_uptime: Annotated[Duration, within("0s", "1d", "a machine up a day is past its setup")] = (
        timedelta(minutes=20)
    )
    max_staleness: Annotated[
        Duration, within("1m", "1d", "at least one metric period; older data is not the present")
    ] = timedelta(minutes=10)
    grace: Annotated[
        Duration, within("0s", "7d", "warning to stop; a week's grace is no enforcement")
    ] = timedelta(minutes=15)
    # Extension: the share of the time since measuring began (the lookback start, the launch or
    # the first sample, whichever is latest) that must have samples before any verdict other
    # than `unmeasured` is given.
    min_coverage: Annotated[
        float, within(0.05, 1, "a share of the time: a verdict needs some samples")
    ] = 0.5
    # Extension (guardian.policy.history): signals from the instance's own lookback that may
    # only lengthen the wait. Wait this multiple of its longest pause that ended in work (0 = off)
    history_margin: Annotated[
        float, within(0, 10, "a multiple of the instance's longest pause; 0 = off")
    ] = 2.0
    # ... and at least this long when it works in repeated bursts, a service or notebook (0s = off)
    window_bursty: Annotated[
        Duration, within("0s", "7d", "0s = off; beyond a week nothing is idle")
    ] = timedelta(hours=4)
    # Extension (docs/notebooks.md): idle this long when the agent reports every GPU-holding
    # process an idle notebook kernel with no browser connected; overrides the waits above.
    window_notebook: Annotated[
        Duration,
        within(
            "10m",
            "7d",
            "a shorter wait would stop a person reading between two cells",
            off="0s",
        ),
    ] = timedelta(minutes=60)


class CostConfig(_Section):
    lookback: Annotated[
        Duration,
        within("10m", "15d", "CloudWatch keeps one-minute data 15 days; an idle window must fit"),
    ] = timedelta(hours=24)
    expected_speedup: Annotated[
        float, within(1, 1000, "times faster than the CPU equivalent at full use")
    ] = 10.0
    rule_of_thumb: tuple[
        Annotated[float, within(1, 100, "a premium: GPU $/h over CPU $/h")],
        Annotated[float, within(1, 100, "a premium: GPU $/h over CPU $/h")],
    ] = (2.0, 3.0)

    @field_validator("rule_of_thumb")
    @classmethod
    def _low_then_high(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"[{value[0]:g}, {value[1]:g}]: give the low premium first")
        return value


class RightsizeConfig(_Section):
    """``guardian.prices.rightsize``: which cheaper machine would do the measured work."""

    # A GPU counts as used when its p95 utilisation over cost.lookback reaches this (percent).
    gpu_busy_above: Annotated[
        float, within(1, 100, "percent of the time a GPU is busy before it counts as used")
    ] = 10.0
    # Multiplier on every measured need: GPU memory, GPU work, host vCPUs and memory.
    headroom: Annotated[
        float,
        within(
            1,
            3,
            "a multiplier on the measured peak: below 1 would size under the peak, above 3 "
            "would hardly ever suggest a smaller machine",
        ),
    ] = 1.25
    # Extension: read host CPU and memory beside the GPUs' (AWS: one more query per instance and
    # metric in the same GetMetricData calls; GCP: one more query per project and metric).
    # Off: right-sizing keeps every host at its current vCPUs and memory.
    host_metrics: bool = True


class LimitsConfig(_Section):
    max_stops_per_cycle: Annotated[
        int, within(0, 1000, "0 = never stop; more a cycle is no cap")
    ] = 5
    max_idle_fraction: Annotated[
        float, within(0.05, 1, "a share of one account and region's GPU instances")
    ] = 0.5
    # Extension: guardian alerts about itself (failing cycles, an account or region it cannot
    # list, metrics it cannot read) once a problem has lasted this many cycles in a row.
    alert_after_failed_cycles: Annotated[
        int,
        within(
            1,
            100,
            "the cycles in a row a problem must last before guardian alerts about itself "
            "(1 = at once; over 100 would hide an outage for hours)",
        ),
    ] = 3


_DEPRECATED_LOCAL_DISKS = "allow_instance_store_loss"


class EnforceConfig(_Section):
    # Instance store / local SSD, wiped by a stop: stop only when the agent reports them unused
    # (stop-if-unused), never (alert), or regardless of what they hold (stop).
    local_disks: Literal["stop-if-unused", "alert", "stop"] = "stop-if-unused"
    # "Unused": less than this beyond empty filesystems (how: docs/enforcement.md)
    local_disk_unused_below: Annotated[
        SizeMiB,
        within(
            "1MiB",
            "1TiB",
            "more in use is data somebody needs (to never stop, set enforce.local_disks: alert)",
        ),
    ] = 1024.0
    # Plain Auto Scaling groups: alert-only, or Standby (desired capacity decremented) then stop.
    autoscaling_groups: Literal["alert", "standby"] = "alert"
    hibernate: bool = False

    @model_validator(mode="before")
    @classmethod
    def _deprecated_alias(cls, data: Any) -> Any:
        """``allow_instance_store_loss`` (before local_disks): true = stop, false = alert."""
        if not isinstance(data, Mapping) or _DEPRECATED_LOCAL_DISKS not in data:
            return data
        data = dict(data)
        allow = data.pop(_DEPRECATED_LOCAL_DISKS)
        if not isinstance(allow, bool):
            raise ValueError(f"{_DEPRECATED_LOCAL_DISKS}: expected true or false, got {allow!r}")
        meant = "stop" if allow else "alert"
        if data.setdefault("local_disks", meant) != meant:
            raise ValueError(
                f"{_DEPRECATED_LOCAL_DISKS} (deprecated) contradicts local_disks: "
                f"{data['local_disks']}; keep only local_disks"
            )
        return data


class MetricsConfig(_Section):
    listen: Annotated[str, AfterValidator(listen_address)] = "127.0.0.1:9464"


class AwsMetricsConfig(_Section):
    namespace: str = "CWAgent"
    gpu_util: str = "nvidia_smi_utilization_gpu"
    gpu_mem_used: str = "nvidia_smi_memory_used"
    period: Annotated[int, within(1, 3600, "seconds; the agent's collection interval")] = 60
    # Published by `guardian agent` (Unit Megabytes, in fact MiB, dimensions exactly InstanceId)
    # in `namespace`: instance store used beyond empty filesystems. "" = not read.
    local_disk_used: str = "guardian_local_disk_used"


class AwsAccount(_Section):
    role_arn: Annotated[str, AfterValidator(role_arn)]
    external_id: str | None = None
    name: str | None = None


class AwsOrganization(_Section):
    """Every active account of the AWS Organization, each through the same role name."""

    # The role created in each member account (deploy/stackset-member-role.yaml).
    role_name: str = "gpu-guardian"
    external_id: str | None = Field(None, min_length=2, max_length=1224)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("role_name")
    @classmethod
    def _role_name(cls, value: str) -> str:
        if not re.fullmatch(r"[\w+=,.@/-]{1,64}", value):
            raise ValueError(f"not an IAM role name: {value!r} (letters, digits, +=,.@_-/)")
        return value

    @field_validator("exclude")
    @classmethod
    def _account_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"\d{12}", str(item)):
                raise ValueError(f"not a 12-digit AWS account id: {item!r}")
        return value


class AwsOrganizationAccounts(_Section):
    organization: AwsOrganization = AwsOrganization()


class AwsConfig(_Section):
    enabled: bool = True
    regions: Annotated[
        list[Annotated[str, AfterValidator(region_name)]] | Literal["all"],
        BeforeValidator(region_list),
    ] = Field(default_factory=lambda: ["us-east-1"])
    # A list of roles, or {organization: {...}}: the Organization's accounts, found each cycle.
    accounts: list[AwsAccount] | AwsOrganizationAccounts = Field(default_factory=list)
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
    period: Annotated[
        int, within(60, 3600, "seconds; Cloud Monitoring aligns series to a minute or more")
    ] = 60
    # Published by `guardian agent` (bytes): local SSD used beyond empty filesystems. "" = off.
    local_disk_used: str = "custom.googleapis.com/guardian/local_disk/used_bytes"


class GcpProjectsBelow(_Section):
    """Every active project below a folder or an organization (Resource Manager)."""

    folder: str | None = Field(None, pattern=r"^(folders/)?\d{1,32}$")
    organization: str | None = Field(None, pattern=r"^(organizations/)?\d{1,32}$")
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exactly_one_parent(self) -> GcpProjectsBelow:
        if (self.folder is None) == (self.organization is None):
            raise ValueError("give exactly one of folder or organization")
        return self

    @property
    def parent(self) -> str:
        """``folders/123`` or ``organizations/456``, as Resource Manager names it."""
        if self.folder is not None:
            return self.folder if self.folder.startswith("folders/") else f"folders/{self.folder}"
        assert self.organization is not None
        org = self.organization
        return org if org.startswith("organizations/") else f"organizations/{org}"


class GcpConfig(_Section):
    enabled: bool = False
    # A list of project ids, or {folder: ...} / {organization: ...}: the projects below it.
    projects: list[str] | GcpProjectsBelow = Field(default_factory=list)
    credentials: Literal["default", "anonymous"] = "default"
    metrics: GcpMetricsConfig = GcpMetricsConfig()
    compute_endpoint: Url | None = None
    monitoring_endpoint: Url | None = None
    billing_endpoint: Url | None = None
    resource_manager_endpoint: Url | None = None


class NotifyConfig(_Section):
    urls: list[Url] = Field(default_factory=list)
    digest: str = "0 9 * * *"
    # Extension: also mail the owner named by the owner tag, through this apprise mailto:// URL
    # (the owner's address is appended as the recipient). Empty = off.
    owner_mailto: Url = ""
    owner_email_domain: str = ""


class JupyterConfig(_Section):
    """Where the agent finds Jupyter servers for the notebook signal (docs/notebooks.md)."""

    enabled: bool = True
    # Servers found by their runtime files (jpserver-*.json) in these directories; empty = every
    # user's ~/.local/share/jupyter/runtime and $JUPYTER_RUNTIME_DIR.
    runtime_dirs: list[Path] = Field(default_factory=list)
    urls: list[Url] = Field(default_factory=list)  # servers that write no runtime file here
    token_file: Path | None = None  # tokens for `urls`: TOKEN, or URL TOKEN, one per line
    timeout: Annotated[Duration, within("1s", "30s", "the agent reads Jupyter on every poll")] = (
        timedelta(seconds=2)
    )

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value


class AgentConfig(_Section):
    interval: Annotated[
        Duration, within("1s", "10m", "one NVML poll; slower misses the end of short jobs")
    ] = timedelta(seconds=10)
    publish: Literal["none", "cloudwatch", "gcp"] = "none"
    autostop: bool = False
    listen: Annotated[str, AfterValidator(listen_address)] = "127.0.0.1:9465"
    jupyter: JupyterConfig = JupyterConfig()


class PricesConfig(_Section):
    refresh_weekly: bool = False


class UnitsConfig(_Section):
    """How ``guardian run`` works through a cycle's units (provider, account or project, region).

    ``workers`` units at once per replica; a unit still going after ``timeout`` is given up (its
    lease revoked, so it can act no more) and the others carry on. With a PostgreSQL
    ``state_url`` each claim of a unit lasts ``lease``, renewed while the unit runs; a replica
    that dies loses its units to the others once the lease runs out.
    """

    workers: Annotated[int, within(1, 64, "units at once per replica, each with its clients")] = 8
    timeout: Annotated[
        Duration, within("1s", "1h", "long enough for a slow region, short enough to retry")
    ] = timedelta(minutes=5)
    lease: Annotated[
        Duration, within("2s", "30m", "renewed every third of it while a unit runs")
    ] = timedelta(minutes=1)


class Config(_Section):
    mode: Mode = Mode.NOTIFY
    dry_run: bool = False
    poll_interval: Annotated[
        Duration, within("0s", "1d", "a day between polls leaves idle machines running")
    ] = timedelta(minutes=5)
    state_dir: Path = Path("/var/lib/gpu-guardian")
    state_url: Annotated[str, AfterValidator(database_url)] | None = (
        None  # default: SQLite in state_dir
    )
    owner_tags: list[str] = Field(
        default_factory=lambda: ["owner", "Owner", "team", "created-by", "CreatedBy"]
    )
    idle: IdleConfig = IdleConfig()
    cost: CostConfig = CostConfig()
    rightsize: RightsizeConfig = RightsizeConfig()
    limits: LimitsConfig = LimitsConfig()
    enforce: EnforceConfig = EnforceConfig()
    metrics: MetricsConfig = MetricsConfig()
    aws: AwsConfig = AwsConfig()
    gcp: GcpConfig = GcpConfig()
    notify: NotifyConfig = NotifyConfig()
    agent: AgentConfig = AgentConfig()
    prices: PricesConfig = PricesConfig()
    units: UnitsConfig = UnitsConfig()

    @field_validator("poll_interval")
    @classmethod
    def _poll_floor(cls, value: timedelta) -> timedelta:
        floor = parse_duration(os.environ.get("GUARDIAN_POLL_FLOOR") or POLL_FLOOR)
        if value < floor:
            raise ValueError(
                f"{format_duration(value)} is below {format_duration(floor)}: GPU metrics arrive "
                "once a minute, so faster polls only add billed API calls"
            )
        return value

    @property
    def effective_state_url(self) -> str:
        return self.state_url or f"sqlite:///{self.state_dir / 'state.db'}"


# Errors that only say the value has another of a union's shapes (a mapping, not a list).
_SHAPE_ERRORS = {"list_type", "model_type", "dict_type", "literal_error", "string_type"}


def _is_union_tag(part: int | str) -> bool:
    """A union member pydantic puts in an error's path (``list[str]``, ``literal['all']``,
    ``GcpProjectsBelow``): not a key a user wrote."""
    return isinstance(part, str) and ("[" in part or part[:1].isupper())


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_name(part: str) -> str:
    """A key as the error shows it: as written when it is a plain name, else quoted and
    escaped, so that a key holding a newline, a dot or nothing still reads as one key."""
    return part if _PLAIN_KEY.fullmatch(part) else repr(part)


def _key_path(loc: tuple[int | str, ...]) -> str:
    """``('aws', 'regions', 'list[...]', 0)`` → ``aws.regions[0]``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_tag(part):
            path += f".{_key_name(part)}" if path else _key_name(part)
    return path or "(top level)"


def _problems(error: ValidationError) -> list[Any]:
    """One problem per key: of a union's members (each reports its own error) the one that got
    furthest into the value (``aws.regions[1]`` for a list, rather than "not 'all'"; the folder
    of ``gcp.projects: {folder: x}`` rather than "not a list"), a shape error last."""
    chosen: dict[tuple[int | str, ...], Any] = {}
    for problem in error.errors():
        loc = problem["loc"]
        cut = next((i for i, part in enumerate(loc) if _is_union_tag(part)), len(loc))
        best = chosen.get(loc[:cut])
        rank = (len(loc), problem["type"] not in _SHAPE_ERRORS)
        if best is None or rank > (len(best["loc"]), best["type"] not in _SHAPE_ERRORS):
            chosen[loc[:cut]] = problem
    return list(chosen.values())


def _describe(error: ValidationError) -> str:
    """The first validation problem as ``key.path: message``."""
    problems = _problems(error)
    first = problems[0]
    path = _key_path(first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required key is missing"
    more = len(problems) - 1
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
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}{_yaml_problem(exc, text)}") from exc
    except RecursionError as exc:  # thousands of nested brackets
        raise ConfigError(f"{path}: nested too deeply to be a config") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not {type(data).__name__}"
        )
    return data


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """`` line N: problem`` for a YAML error, on one line whatever the problem's text."""
    mark = getattr(exc, "problem_mark", None)
    line: int | None = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: PyYAML's own check
        line = text.count("\n", 0, exc.position) + 1
        problem = f"character {exc.character!r} is not allowed in YAML"
    where = f" line {line}" if line is not None else ""
    return f"{where}: {' '.join(str(problem or 'invalid YAML').split())}"


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
        try:
            value = yaml.safe_load(raw_value) if raw_value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {item!r}: {_yaml_problem(exc, raw_value).lstrip(' :')}"
            ) from exc
        node[parts[-1]] = value
    return result


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def parse_config(data: Mapping[str, Any], source: str = "config") -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc
    enforce = data.get("enforce")
    if isinstance(enforce, Mapping) and _DEPRECATED_LOCAL_DISKS in enforce:
        log.warning(
            "config_key_deprecated",
            source=source,
            key=f"enforce.{_DEPRECATED_LOCAL_DISKS}",
            use=f"enforce.local_disks: {config.enforce.local_disks}",
        )
    return config


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
    accounts = data["aws"]["accounts"]
    for account in accounts if isinstance(accounts, list) else [accounts["organization"]]:
        if account.get("external_id"):
            account["external_id"] = "***"
    if config.state_url and "@" in config.state_url:
        data["state_url"] = mask_secret_url(config.state_url)
    return data

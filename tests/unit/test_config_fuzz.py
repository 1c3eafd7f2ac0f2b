"""The config file fuzzed (hypothesis): whatever a file holds, loading it either succeeds or
fails with one ``ConfigError`` line that names the key (or the file and line), never anything
else. The bulk runs in-process through the loader that ``audit``, ``run`` and ``check-config``
share; a handful of cases go through ``guardian check-config`` as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from guardian.config import Config, apply_overrides, load_config, parse_config
from guardian.daemon.preflight import check_daemon_config
from guardian.errors import ConfigError

FUZZ = settings(
    max_examples=60,
    derandomize=True,  # the same examples on every run: CI reproduces what a developer saw
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key path of the config whose value is not itself a section."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield f"{prefix}{name}"
            yield from _sections(annotation, f"{prefix}{name}.")


LEAVES = sorted(_leaf_keys(Config))
SECTIONS = sorted(_sections(Config))

# What a hand-edited or corrupted file puts where a value goes.
HOSTILE_TEXT = [
    "",
    " ",
    "soon",
    "-5m",
    "5 minutes",
    "1e999s",
    "99999999999999999999d",
    "nan",
    ".nan",
    "inf",
    "nanm",
    "1GiB",
    "-1MiB",
    "1e400GiB",
    "0x10",
    "\x00",
    "line\nbreak",
    "☃",
    "http://[::1",
    "slack://",
    "mailto://",
    "postgresql://",
    "sqlite://",
    "* * * *",
    "61 25 * * *",
    "all",
    "us-east-1",
    "127.0.0.1:99999",
    "arn:aws:iam::1:role/x",
]
hostile_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**63, -(2**63), 10**400, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=20),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["a", "window", "urls", "0", "role_arn"]), inner, max_size=3
        ),
    ),
    max_leaves=6,
)
# Key names a user could write, including ones that cannot be shown on one line unescaped.
key_names = st.one_of(
    st.sampled_from(["windw", "Mode", "regions ", "x.y", "line\nbreak", "tab\tkey", "", "1"]),
    st.text(min_size=1, max_size=12),
)


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = data
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "guardian.yaml"
    path.write_bytes(
        content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    )
    return path


def _load(path: Path) -> Config | ConfigError:
    """What ``check-config`` does before it prints: load, then the daemon's own checks. Any
    exception other than a ``ConfigError`` fails the test with its traceback."""
    try:
        config, _ = load_config(path)
    except ConfigError as exc:
        return exc
    try:
        check_daemon_config(config)
    except ConfigError as exc:
        return ConfigError(f"{path}: {exc}")  # as check-config names the file
    return config


def _assert_one_line(error: ConfigError, path: Path) -> str:
    """The message is one printable line that starts with the file; returns the rest."""
    message = str(error)
    assert "\n" not in message, message
    assert "\r" not in message, message
    assert message.isprintable(), message
    assert message.startswith(f"{path}"), message
    assert "Traceback" not in message
    return message[len(str(path)) :].lstrip(": ")


@FUZZ
@given(key=st.sampled_from(LEAVES), value=hostile_values)
@example(key="idle.window", value=float("inf"))
@example(key="idle.window", value=float("nan"))
@example(key="idle.window", value=10**400)
@example(key="idle.window", value="99999999999999999999d")
@example(key="idle.window", value={"a": 1})
@example(key="enforce.local_disk_unused_below", value=float("inf"))
@example(key="idle.gpu_util_below", value=float("nan"))
@example(key="limits.max_stops_per_cycle", value=2**63)
@example(key="notify.urls", value=["http://[::1"])
@example(key="notify.owner_mailto", value="http://[::1")
@example(key="notify.digest", value="61 25 * * *")
@example(key="state_url", value="postgresql://")
@example(key="gcp.compute_endpoint", value="http://[::1")
def test_a_hostile_value_is_one_line_naming_its_key(tmp_path: Path, key: str, value: Any) -> None:
    path = _write(tmp_path, yaml.safe_dump(_with({}, key, value), allow_unicode=True))
    outcome = _load(path)
    if isinstance(outcome, Config):
        return  # the value happened to be a valid one
    rest = _assert_one_line(outcome, path)
    assert rest.startswith(key), f"{key}: {rest}"


@FUZZ
@given(section=st.sampled_from(["", *SECTIONS]), name=key_names, value=hostile_scalars)
def test_an_unknown_key_is_named_at_any_depth(
    tmp_path: Path, section: str, name: str, value: Any
) -> None:
    data: dict[str, Any] = {}
    node = data
    for part in section.split(".") if section else []:
        node = node.setdefault(part, {})
    node[name] = value  # a dotted name is one key, not a path
    path = _write(tmp_path, yaml.safe_dump(data, allow_unicode=True))
    outcome = _load(path)
    assert isinstance(outcome, ConfigError), f"{section}.{name} was accepted"
    rest = _assert_one_line(outcome, path)
    if section:
        assert rest.startswith(section), rest
    assert "unknown key" in rest or "section" in rest or "dictionary" in rest, rest


@FUZZ
@given(section=st.sampled_from(SECTIONS), value=hostile_scalars.filter(lambda v: v is not None))
def test_a_section_that_is_not_a_mapping_is_named(tmp_path: Path, section: str, value: Any) -> None:
    path = _write(tmp_path, yaml.safe_dump(_with({}, section, value), allow_unicode=True))
    outcome = _load(path)
    assert isinstance(outcome, ConfigError)
    assert _assert_one_line(outcome, path).startswith(section)


broken_yaml = st.one_of(
    st.sampled_from(
        [
            "mode: [enforce\n",
            "idle:\n  window: 5m\n window: 6m\n",
            "idle: {window: 5m\n",
            "a: b: c\n",
            "- a\n- b\n",
            "just a sentence\n",
            "42\n",
            "'unclosed\n",
            "key: \t\x07bell\n",
            "&a [*a]\n",
            "? [a, b]\n: c\n",
            "mode: !!python/object:os.system echo\n",
            "idle:\n  window: *missing\n",
            "%YAML 9.9\n---\nmode: audit\n",
            "mode: audit\n" + "\x00" * 4,
            "[" * 200 + "]" * 200 + "\n",
        ]
    ),
    st.text(max_size=60),
)


@FUZZ
@given(text=broken_yaml)
def test_broken_yaml_names_the_file_and_line(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    outcome = _load(path)
    if isinstance(outcome, Config):
        return  # some text is a valid (empty or comment-only) config
    rest = _assert_one_line(outcome, path)
    assert rest, outcome


@FUZZ
@given(junk=st.binary(min_size=1, max_size=200))
@example(junk=b"\xff\xfe\x00m\x00o\x00d\x00e")
@example(junk=b"mode: audit\n\xc3\x28\n")
@example(junk=b"\x89PNG\r\n\x1a\n\x00\x00")
def test_binary_junk_names_the_file(tmp_path: Path, junk: bytes) -> None:
    path = _write(tmp_path, junk)
    outcome = _load(path)
    if isinstance(outcome, ConfigError):
        _assert_one_line(outcome, path)


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    outcome = _load(_write(tmp_path, b""))
    assert outcome == Config()


@pytest.mark.parametrize("content", ["- a\n- b\n", "42\n", "just text\n", "true\n"])
def test_a_list_or_scalar_file_says_a_mapping_is_expected(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path, content)
    outcome = _load(path)
    assert isinstance(outcome, ConfigError)
    assert "must be a mapping" in _assert_one_line(outcome, path)


def test_a_directory_or_a_missing_file_is_named(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "absent.yaml"):
        outcome = _load(path)
        assert isinstance(outcome, ConfigError)
        assert str(outcome).startswith(f"cannot read config file {path}: "), outcome


@FUZZ
@given(
    key=st.one_of(st.sampled_from(LEAVES), st.text(max_size=12)),
    raw=st.one_of(st.sampled_from(["[", "{a", "'x", "*a", "!!binary x", ": :", "- ["]), st.text()),
)
def test_a_set_override_is_a_config_error(key: str, raw: str) -> None:
    """``--set KEY=VALUE`` (audit, run, check-config): the same promise on the command line."""
    problem = ""
    try:
        parse_config(apply_overrides({}, [f"{key}={raw}"]), "--set")
    except ConfigError as exc:
        problem = str(exc)
    assert "\n" not in problem, problem


# -- the real command line: exit 2 and one line on stderr -------------------------------------

CLI_CASES: dict[str, str | bytes] = {
    "wrong_type": "idle:\n  window: [5m]\n",
    "unknown_nested": "aws:\n  metrics:\n    periodd: 60\n",
    "infinite": "idle:\n  gpu_util_below: .inf\n",
    "huge_duration": "idle:\n  grace: 99999999999999999999d\n",
    "yaml_syntax": "mode: enforce\nidle: {window: 5m\n",
    "list": "- mode\n- audit\n",
    "binary": b"\x89PNG\r\n\x1a\n\x00\xff",
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_check_config_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    content = CLI_CASES[case]
    path = _write(tmp_path, content)
    result = subprocess.run(
        [sys.executable, "-m", "guardian", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GUARDIAN_CONFIG": ""},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"guardian: error: {path}"), lines[0]
    assert "Traceback" not in result.stderr


def test_check_config_on_a_directory_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guardian", "check-config", "--config", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"guardian: error: cannot read config file {tmp_path}: Is a directory"
    )

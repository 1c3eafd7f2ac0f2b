"""``guardian check-config``: validate, show the effective config (secrets masked), probe."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
import yaml

from guardian.commands.common import ConfigOption, SetOption
from guardian.config import load_config, masked_dump
from guardian.errors import ConfigError, GuardianError

__all__ = ["register"]


def check_config(
    config: ConfigOption = None,
    overrides: SetOption = None,
    probe: Annotated[
        bool, typer.Option("--probe", help="Also check that the cloud credentials work.")
    ] = False,
) -> None:
    """Validate the config and print the effective settings with secrets masked."""
    from guardian.daemon.preflight import check_daemon_config

    cfg, path = load_config(config, overrides or ())
    try:
        check_daemon_config(cfg)  # what `guardian run` would refuse at start, refused here too
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from exc
    typer.echo(f"# config OK: {path if path else 'built-in defaults (no config file found)'}")
    typer.echo(yaml.safe_dump(masked_dump(cfg), sort_keys=False).rstrip())
    if not probe:
        return
    failures = 0
    for name, enabled in (("aws", cfg.aws.enabled), ("gcp", cfg.gcp.enabled)):
        if not enabled:
            continue
        # Each provider module imports its SDK: only the enabled ones are loaded.
        module = importlib.import_module(f"guardian.providers.{name}.provider")
        probe_credentials = module.probe_credentials
        try:
            typer.echo(f"# {name}: credentials OK: {probe_credentials(cfg)}")
        except GuardianError as exc:
            typer.echo(f"# {name}: credentials FAILED: {exc}", err=True)
            failures += 1
    if failures:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("check-config")(check_config)

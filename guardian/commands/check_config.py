"""``guardian check-config``: validate, show the effective config (secrets masked), probe."""

from __future__ import annotations

from typing import Annotated

import typer
import yaml

from guardian.commands.common import ConfigOption, SetOption
from guardian.config import load_config, masked_dump
from guardian.errors import GuardianError

__all__ = ["register"]


def check_config(
    config: ConfigOption = None,
    overrides: SetOption = None,
    probe: Annotated[
        bool, typer.Option("--probe", help="Also check that the cloud credentials work.")
    ] = False,
) -> None:
    """Validate the config and print the effective settings with secrets masked."""
    cfg, path = load_config(config, overrides or ())
    typer.echo(f"# config OK: {path if path else 'built-in defaults (no config file found)'}")
    typer.echo(yaml.safe_dump(masked_dump(cfg), sort_keys=False).rstrip())
    if not probe:
        return
    failures = 0
    if cfg.aws.enabled:
        from guardian.providers.aws import probe_credentials

        try:
            typer.echo(f"# aws: credentials OK: {probe_credentials(cfg)}")
        except GuardianError as exc:
            typer.echo(f"# aws: credentials FAILED: {exc}", err=True)
            failures += 1
    if cfg.gcp.enabled:
        from guardian.providers.gcp import probe_credentials as probe_gcp

        try:
            typer.echo(f"# gcp: credentials OK: {probe_gcp(cfg)}")
        except GuardianError as exc:
            typer.echo(f"# gcp: credentials FAILED: {exc}", err=True)
            failures += 1
    if failures:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("check-config")(check_config)

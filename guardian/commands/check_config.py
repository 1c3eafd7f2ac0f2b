"""``guardian check-config``: validate, show the effective config (secrets masked), probe."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
import yaml

from guardian.commands.common import ConfigOption, SetOption
from guardian.config import Config, load_config, masked_dump
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
        module = _PROBES[name]
        probe_credentials = importlib.import_module(module).probe_credentials
        try:
            typer.echo(f"# {name}: credentials OK: {probe_credentials(cfg)}")
        except GuardianError as exc:
            typer.echo(f"# {name}: credentials FAILED: {exc}", err=True)
            failures += 1
    if failures:
        raise typer.Exit(2)
    _enforce_reach(cfg)


_PROBES = {"aws": "guardian.providers.aws.provider", "gcp": "guardian.providers.gcp.probe"}


def _enforce_reach(cfg: Config) -> None:
    """How much of the visible fleet ``mode: enforce`` could stop once idle: a warning when it
    is nothing (local disks not reported, everything in Auto Scaling groups...)."""
    from guardian.commands.audit import run_audit
    from guardian.cycle import CycleResult
    from guardian.policy import enforce_plan
    from guardian.report.document import enforce_reach

    try:
        result: CycleResult = run_audit(cfg)
    except GuardianError as exc:
        typer.echo(f"# enforce: could not look at the fleet: {exc}", err=True)
        return
    now = result.generated_at
    plans = [enforce_plan(f, cfg, now, assume_idle=True) for f in result.findings]
    reach = enforce_reach(plans)
    if not reach.idle:
        typer.echo("# enforce: no unprotected GPU instance is running now; nothing to judge")
        return
    sentence = reach.sentence("GPU instances seen, if idle")
    if reach.stop + reach.standby_stop == 0:
        typer.echo(f"# warning: mode: enforce would stop none of them: {sentence}", err=True)
    else:
        typer.echo(f"# enforce: {sentence}")


def register(app: typer.Typer) -> None:
    app.command("check-config")(check_config)

"""``guardian demo``: audit a simulated AWS + GCP fleet with the real code, no credentials."""

from __future__ import annotations

import importlib.util
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from guardian.commands.audit import FormatOption, OutputFormat, WideOption, emit, run_audit
from guardian.config import Config
from guardian.errors import GuardianError

__all__ = ["register"]


def demo(
    output: FormatOption = OutputFormat.TABLE,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Keep the simulated cloud running after the audit and print how to point "
            "other guardian commands at it (Ctrl-C ends it).",
        ),
    ] = False,
    wide: WideOption = False,
) -> None:
    """Seed a simulated cloud with a believable GPU fleet and audit it."""
    if importlib.util.find_spec("moto") is None:
        # A production install leaves the simulated cloud's server stack out.
        raise GuardianError(
            "guardian demo needs the simulated cloud: pip install 'gpu-guardian[demo]'"
        )
    from guardian.simulated.demo_fleet import simulated_cloud

    # SIGTERM (systemd, `kill`, a CI runner) ends the demo like Ctrl-C: the simulated cloud
    # stops and its temporary state directory is removed, instead of being left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    note = Console(stderr=True)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="guardian-demo-") as state,
        simulated_cloud(Path(state), datetime.now(UTC)) as cloud,
    ):
        note.print(
            "[dim]simulated cloud: moto (AWS us-east-1, eu-west-1) and a local GCP project; "
            f"lookback {int(cloud.config.cost.lookback.total_seconds() // 3600)} h[/]"
        )
        # The simulated cloud answers from this process: on a slow laptop a large page can take
        # longer than a person's timeout for a real endpoint, and that is no dead endpoint.
        result = run_audit(cloud.config, caller="daemon")
        emit(result, cloud.config, output, wide=wide)
        note.print(f"[dim]demo finished in {time.monotonic() - started:.1f} s[/]")
        if serve:
            sys.stdout.flush()  # the audit is complete before the wait, even through a pipe
            _serve(cloud.config, cloud.environment, Path(state), note)


def _serve(config: Config, environment: dict[str, str], state: Path, note: Console) -> None:
    """Keep the simulated cloud up and say how to reach it, until Ctrl-C or SIGTERM."""
    import yaml

    config_path = state / "guardian.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    note.print("# the simulated cloud is up; in another shell:", highlight=False)
    for key, value in environment.items():
        note.print(f"export {key}={value}", highlight=False)
    commands = ("audit", "rightsize", "run --once", "history", "status", "check-config --probe")
    for command in commands:
        note.print(f"guardian {command} --config {config_path}", highlight=False)
    note.print("# Ctrl-C here ends it and removes its state.", highlight=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

"""``guardian demo``: audit a simulated AWS + GCP fleet with the real code, no credentials."""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from guardian.commands.audit import OutputFormat, WideOption, emit, run_audit

__all__ = ["register"]


def demo(
    output: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json or csv.")
    ] = OutputFormat.TABLE,
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
    from guardian.simulated.demo_fleet import simulated_cloud

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
        result = run_audit(cloud.config)
        emit(result, cloud.config, output, wide=wide)
        note.print(f"[dim]demo finished in {time.monotonic() - started:.1f} s[/]")
        if serve:
            config_path = Path(state) / "guardian.yaml"
            import yaml

            config_path.write_text(yaml.safe_dump(cloud.config.model_dump(mode="json")))
            for key, value in cloud.environment.items():
                note.print(f"export {key}={value}", highlight=False)
            note.print(f"# then: guardian audit --config {config_path}   (Ctrl-C here to end)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

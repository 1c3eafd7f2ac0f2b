"""``guardian run``: the daemon (see ``guardian.daemon.service``); ``--once`` for a single cycle."""

from __future__ import annotations

from typing import Annotated

import typer

from guardian.commands.common import ConfigOption, SetOption
from guardian.config import load_config
from guardian.errors import GuardianError
from guardian.model import Verdict

__all__ = ["register"]


def run(
    config: ConfigOption = None,
    overrides: SetOption = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Run one cycle, deliver its alerts, and exit (for cron)."),
    ] = False,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="With --once: exit 1 when any instance is idle.")
    ] = False,
) -> None:
    """Audit every poll_interval; alert on idle GPU instances and, in enforce mode, stop them.

    SIGTERM/SIGINT finish the current cycle and exit 0; SIGHUP reloads the config. Under
    systemd (Type=notify) it reports readiness, watchdog pings and a status line. With --once
    the exit status is guardian audit's: 2 when nothing could be audited, 1 with --exit-code
    when something is idle, else 0.
    """
    from guardian.daemon.service import Daemon

    if exit_code and not once:
        raise GuardianError("--exit-code goes with --once: the daemon only exits on a signal")
    cfg, path = load_config(config, overrides or ())
    daemon = Daemon(cfg, config_path=path, overrides=overrides or ())
    if once:
        try:
            report = daemon.run_cycle()
        finally:
            daemon.close()
        if report is None:
            raise GuardianError("the cycle failed; the log above says why")
        typer.echo(report.status_line(), err=True)
        if report.result.nothing_audited:
            raise GuardianError(report.result.failure_line())
        if exit_code and any(f.decision.verdict is Verdict.IDLE for f in report.result.findings):
            raise typer.Exit(1)
        return
    raise typer.Exit(daemon.run())


def register(app: typer.Typer) -> None:
    app.command("run")(run)

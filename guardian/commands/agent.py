"""``guardian agent``: measure this machine's GPUs with NVML, publish, and optionally autostop.

``guardian agent`` runs the agent (the systemd unit's ExecStart); ``guardian agent status``
shows the GPUs, their processes, the verdict and any pending stop; ``guardian agent keep 2h``
postpones an autostop. Cloud SDKs are imported only when publishing or autostop needs them.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from guardian.commands.common import ConfigOption, SetOption
from guardian.config import Config, load_config
from guardian.durations import format_duration, parse_duration
from guardian.errors import GuardianError

if TYPE_CHECKING:
    from guardian.agent.local_disks import LocalDiskProbe
    from guardian.agent.loop import Agent, Clock
    from guardian.agent.status import RunDir
    from guardian.providers import Provider

__all__ = ["agent_app", "build_agent", "own_provider", "register", "render_status"]

RunDirOption = Annotated[
    Path | None,
    typer.Option(
        "--run-dir",
        help="Where the agent keeps its status and keep-until files "
        "(else $GUARDIAN_RUN_DIR, else /run/gpu-guardian).",
        file_okay=False,
    ),
]
SimulateOption = Annotated[
    str | None,
    typer.Option(
        "--simulate",
        metavar="SCENARIO",
        help="Use the scripted fake NVML instead of the driver: a built-in scenario "
        "(training-then-idle, paused-job, lost-gpu, idle, busy-8gpu, no-driver) or a JSON "
        "file. Same as GUARDIAN_NVML_BACKEND=fake:SCENARIO.",
    ),
]

agent_app = typer.Typer(
    help="Measure this machine's GPUs (NVML), publish them, stop the machine when idle.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _backend_spec(simulate: str | None) -> str | None:
    return f"fake:{simulate}" if simulate else None


def build_agent(
    config: Config,
    *,
    backend: str | None,
    run_dir: RunDir,
    clock: Clock,
    metadata_timeout_s: float = 1.0,
    wall: tuple[str, ...] | None = None,
    launch_time: datetime | None = None,
    provider_options: Mapping[str, Any] | None = None,
    proc_root: Path = Path("/proc"),
    local_disks: LocalDiskProbe | None = None,
) -> tuple[Agent, list[Provider]]:
    """Every part of a running agent, from config. One-line GuardianErrors for what is missing:
    NVML (``NVML not available: …``), the run directory, the cloud metadata service.

    ``provider_options`` go to the provider's constructor (tests share a warmed-up catalog);
    ``proc_root`` is where GPU-holding processes are classified (tests build fake trees).
    ``local_disks`` replaces the probe of this machine's /sys and /proc (tests: a fake tree).
    """
    from guardian.agent.autostop import Alerter, Autostop, CloudTarget, default_wall_command
    from guardian.agent.gpu.nvml import BACKEND_ENV, Nvml, load_backend
    from guardian.agent.local_disks import LocalDiskProbe
    from guardian.agent.loop import Agent, SampleWindow, agent_horizon, boot_time, local_instance
    from guardian.agent.notebook import build_notebook_watch

    SampleWindow(agent_horizon(config), config.agent.interval)  # validates the interval early
    notebooks = build_notebook_watch(config, proc_root)  # the token file, before NVML starts
    spec = backend or os.environ.get(BACKEND_ENV) or "nvml"
    nvml = Nvml.open(load_backend(spec, clock=clock.monotonic))
    providers: list[Provider] = []
    sinks: list[Any] = []
    try:
        run_dir.ensure_writable()
        first = nvml.sample(clock.now())
        model = next((g.name for g in first.gpus if g.name), None)
        launched = launch_time or boot_time()
        publish, autostop_on = config.agent.publish, config.agent.autostop
        if publish != "none" or autostop_on:
            from guardian.agent.metadata import detect_identity

            cloud = {"cloudwatch": "aws", "gcp": "gcp"}.get(publish)
            identity = detect_identity(
                "aws" if cloud == "aws" else "gcp" if cloud == "gcp" else None,
                timeout_s=metadata_timeout_s,
            )
            instance = identity.instance(nvml.expected_gpus, model, launched)
        else:
            identity = None
            instance = local_instance(nvml.expected_gpus, model, launched)
        if config.agent.listen.strip():
            from guardian.agent.publish import PrometheusSink

            sinks.append(PrometheusSink(config.agent.listen))
        if identity is not None and publish == "cloudwatch":
            from guardian.agent.publish import CloudWatchSink

            sinks.append(CloudWatchSink(config, identity.instance_id, identity.region))
        elif identity is not None and publish == "gcp":
            from guardian.agent.publish import GcpMonitoringSink

            sinks.append(
                GcpMonitoringSink(config, identity.account, identity.instance_id, identity.zone)
            )
        autostop = None
        if identity is not None and autostop_on:
            own = own_provider(
                config,
                identity.provider,
                identity.region,
                identity.account,
                **(provider_options or {}),
            )
            providers.append(own)
            autostop = Autostop(
                config,
                CloudTarget(own, identity.instance_id),
                Alerter(config.notify.urls, wall if wall is not None else default_wall_command()),
            )
    except BaseException:
        for sink in sinks:
            sink.close()
        nvml.close()
        raise
    agent = Agent(
        config,
        nvml,
        instance,
        clock=clock,
        sinks=sinks,
        autostop=autostop,
        run_dir=run_dir,
        backend=spec,
        notebooks=notebooks,
        # What a stop would wipe: published with the GPU metrics, and autostop's own gate.
        local_disks=(local_disks or LocalDiskProbe()) if identity is not None else None,
    )
    return agent, providers


def own_provider(config: Config, cloud: str, region: str, account: str, **options: Any) -> Provider:
    """The provider scoped to this one machine's region or project, with its own credentials
    (the instance role / service account), not the daemon's list of accounts. Autostop only
    describes and stops its own instance: it reads no metrics."""
    from guardian.providers.factory import build_provider

    options.setdefault("instance_series", ())
    options.setdefault("caller", "daemon")  # a service: it may wait out a slow minute
    if cloud == "aws":
        aws = config.aws.model_copy(update={"enabled": True, "regions": [region], "accounts": []})
        return build_provider(config.model_copy(update={"aws": aws}), "aws", **options)
    gcp = config.gcp.model_copy(update={"enabled": True, "projects": [account]})
    return build_provider(config.model_copy(update={"gcp": gcp}), "gcp", **options)


def run_agent(config: Config, *, backend: str | None, run_dir: RunDir, polls: int | None) -> None:
    """Run until SIGTERM/SIGINT (or ``polls`` polls), telling systemd how it goes."""
    import structlog

    from guardian.agent.loop import SystemClock
    from guardian.daemon.sdnotify import notify

    log = structlog.get_logger("guardian.agent.loop")
    clock = SystemClock()
    agent, providers = build_agent(config, backend=backend, run_dir=run_dir, clock=clock)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        clock.wake()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "agent_started",
        instance_id=agent.instance.instance_id,
        provider=agent.instance.provider,
        gpus=agent.nvml.expected_gpus,
        interval_s=config.agent.interval.total_seconds(),
        publish=config.agent.publish,
        autostop=config.agent.autostop,
        backend=agent.backend,
    )
    notify("READY=1", f"STATUS=watching {agent.nvml.expected_gpus} GPUs")

    def after_poll() -> None:
        last = agent.last
        if last is not None:
            notify("WATCHDOG=1", f"STATUS={last.decision.verdict}")

    try:
        agent.run(max_polls=polls, should_stop=lambda: bool(stopping), on_poll=after_poll)
    finally:
        notify("STOPPING=1")
        agent.close()
        for provider in providers:
            provider.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("agent_exited", polls=agent.polls)


@agent_app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    *,
    config: ConfigOption = None,
    overrides: SetOption = None,
    simulate: SimulateOption = None,
    run_dir: RunDirOption = None,
    polls: Annotated[
        int | None, typer.Option("--polls", min=1, help="Exit after this many polls.")
    ] = None,
) -> None:
    """Run the agent: poll every agent.interval, publish, and autostop if enabled."""
    if ctx.invoked_subcommand is not None:
        return
    from guardian.agent.status import RunDir

    cfg, _ = load_config(config, overrides or ())
    run_agent(cfg, backend=_backend_spec(simulate), run_dir=RunDir(run_dir), polls=polls)


@agent_app.command("keep")
def keep(
    duration: Annotated[
        str, typer.Argument(help="How long to keep this machine running, e.g. 2h; 0s cancels.")
    ],
    run_dir: RunDirOption = None,
) -> None:
    """Postpone the agent's autostop of this machine (at most 7 days)."""
    from guardian.agent.status import MAX_KEEP, RunDir

    try:
        delta = parse_duration(duration)
    except ValueError as exc:
        raise GuardianError(str(exc)) from exc
    if delta > MAX_KEEP:
        raise GuardianError(
            f"keep at most {format_duration(MAX_KEEP)}; for longer, tag the instance "
            "guardian:keep-until=<time> (or guardian:protect=true)"
        )
    where = RunDir(run_dir)
    try:
        if delta <= timedelta(0):
            cleared = where.clear_keep()
            typer.echo("keep cancelled" if cleared else "no keep was set")
            return
        until = datetime.now(UTC) + delta
        where.write_keep(until)
    except OSError as exc:
        raise GuardianError(f"cannot write {where.keep_path}: {exc.strerror or exc}") from exc
    when = f"{until:%Y-%m-%d %H:%M} UTC ({format_duration(delta)})"
    status = where.read_status() or {}
    autostop = (status.get("agent") or {}).get("autostop")
    if autostop:
        typer.echo(f"autostop postponed until {when}")
    elif autostop is None:
        typer.echo(f"kept until {when}; no agent is running here now (it applies when one starts)")
    else:
        # Nothing was about to stop this machine: say so rather than claim a postponement.
        typer.echo(f"kept until {when}; this agent's autostop is off, so it only reports")


@agent_app.command("status")
def status(
    run_dir: RunDirOption = None,
    simulate: SimulateOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show the GPUs, their processes, the verdict and any pending stop."""
    from guardian.agent.status import RunDir

    where = RunDir(run_dir)
    document = _running_status(where)
    if document is None:
        document = _sample_now(_backend_spec(simulate), where)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        for line in render_status(document):
            typer.echo(line)


def _running_status(where: RunDir) -> dict[str, Any] | None:
    """The running agent's status file, if it is fresh and its process alive."""
    document = where.read_status()
    if document is None:
        return None
    meta = document.get("agent", {})
    try:
        updated = datetime.fromisoformat(str(meta["updated_at"]).replace("Z", "+00:00"))
        pid, interval_s = int(meta["pid"]), float(meta["interval_s"])
    except (KeyError, TypeError, ValueError):
        return None
    if datetime.now(UTC) - updated > timedelta(seconds=max(3 * interval_s, 30)):
        return None  # a status left behind by an agent that died
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user (the service's)
    return document


def _sample_now(backend: str | None, where: RunDir) -> dict[str, Any]:
    """No agent running: one direct NVML sample, without a verdict (one sample proves nothing)."""
    from guardian.agent.gpu.nvml import Nvml, load_backend
    from guardian.agent.notebook import build_notebook_watch
    from guardian.agent.status import sample_document
    from guardian.config import Config

    nvml = Nvml.open(load_backend(backend))
    try:
        now = datetime.now(UTC)
        snapshot = nvml.sample(now)
    finally:
        nvml.close()
    notebook = build_notebook_watch(Config()).observe(snapshot, now)
    return sample_document(snapshot, where.keep_until(now), notebook)


def _num(value: Any, unit: str = "") -> str:
    return "?" if value is None else f"{value:g}{unit}"


def render_status(doc: dict[str, Any]) -> list[str]:
    """The status as lines a person reads at a terminal."""
    meta = doc.get("agent", {})
    lines: list[str] = []
    if meta.get("running"):
        lines.append(
            f"agent: running (pid {meta.get('pid')}, every {_num(meta.get('interval_s'), 's')}, "
            f"backend {meta.get('backend')}, autostop {'on' if meta.get('autostop') else 'off'}"
            f"{', dry run' if meta.get('dry_run') else ''})"
        )
        inst = doc.get("instance", {})
        lines.append(
            f"instance: {inst.get('provider')} {inst.get('instance_id')} "
            f"{inst.get('instance_type') or ''} {inst.get('zone') or ''}".rstrip()
        )
    else:
        lines.append("agent: not running (one sample taken now)")
    verdict = doc.get("verdict")
    reasons = "; ".join(doc.get("reasons") or [])
    lines.append(f"verdict: {verdict or '-'}{f' ({reasons})' if reasons else ''}")
    pending = doc.get("pending_stop")
    if pending:
        lines.append(f"pending stop: at {pending['deadline']} (warned {pending['warned_at']})")
    stop = doc.get("stop") or {}
    if stop.get("message"):
        lines.append(f"autostop: {stop['message']}")
    if doc.get("keep_until"):
        lines.append(f"kept until: {doc['keep_until']} (guardian agent keep)")
    notebook = doc.get("notebook")
    if notebook:
        idle_s = notebook.get("idle_s")
        shown = "signal" if idle_s is not None else "no signal"
        lines.append(f"notebook: {shown}: {notebook.get('why')}")
        for kernel in notebook.get("kernels") or []:
            lines.append(
                f"    kernel {kernel['id']} ({kernel.get('name') or '?'}): "
                f"{kernel.get('execution_state')}, {_num(kernel.get('connections'))} "
                f"connection(s), last activity {kernel.get('last_activity') or '?'}"
            )
        for server in notebook.get("unread_servers") or []:
            lines.append(f"    unreadable Jupyter server: {server} (counts as a browser connected)")
    disks = doc.get("local_disks")
    if disks:
        mounted = ", ".join(disks.get("mounts") or []) or "nothing mounted"
        lines.append(
            f"local disks: {', '.join(disks.get('devices') or [])} ({mounted}); "
            f"{_num(disks.get('used_mib'), ' MiB')} in use beyond empty filesystems"
        )
    lines.append(f"driver: {doc.get('driver_version') or '?'}")
    for problem in doc.get("problems") or []:
        lines.append(f"problem: {problem}")
    for gpu in doc.get("gpus", []):
        lines.append(
            f"GPU {gpu['index']}: {gpu.get('name') or '?'} {gpu.get('uuid') or ''}  "
            f"util {_num(gpu.get('gpu_util_pct'), '%')}  "
            f"memory {_num(gpu.get('mem_used_mib'))}/{_num(gpu.get('mem_total_mib'))} MiB"
        )
        procs = gpu.get("processes")
        if procs is None:
            lines.append("    processes: unknown")
        for proc in procs or []:
            kind = f"  {proc['kind']}: {proc.get('why')}" if proc.get("kind") else ""
            lines.append(
                f"    pid {proc['pid']} {proc.get('name') or '?'} "
                f"{_num(proc.get('gpu_mem_used_mib'), ' MiB')}{kind}"
            )
        for problem in gpu.get("problems") or []:
            lines.append(f"    problem: {problem}")
    return lines


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")

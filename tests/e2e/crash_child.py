"""A daemon process to kill: ``Daemon.run_cycle()`` on a simulated clock, in a process of its own.

``test_crash_points.py`` starts one per kill point through a multiprocessing *forkserver* that
has imported this module (guardian, boto3, apprise, moto's instance-type catalog) once, so a
start costs a ``fork``, not a Python start-up and an import of the cloud SDKs. The child
points boto3 at the given endpoint, sets ``GUARDIAN_TEST_CRASH_AT`` (or clears it), writes its
JSON log to a file and runs its cycles over the state directory it is given: the SQLite file
and the moto server are all that survive it, as after a real ``kill -9``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import alembic.command  # noqa: F401  (imported here once, in the forkserver, for every child)
import apprise
import boto3
from moto.ec2.models.instance_types import INSTANCE_TYPES

from guardian.config import Config, load_config
from guardian.daemon.crashpoints import CRASH_ENV
from guardian.daemon.service import Daemon
from guardian.logs import configure_logging
from guardian.providers.aws.discovery import GpuTypeCatalog
from guardian.providers.aws.provider import AwsProvider
from guardian.simulated.aws import fake_aws_env

__all__ = ["run"]

_CATALOG = GpuTypeCatalog()
_CATALOG.prime(INSTANCE_TYPES.values())  # moto's own copy of the types: no 3-second listing
# Loaded once here and inherited by every child: botocore's service models (a session caches
# them; no client or connection is shared) and apprise's plugin registry.
_SESSION = boto3.Session()
for _service in ("ec2", "cloudwatch", "sts"):
    _SESSION.client(_service, region_name="us-east-1", endpoint_url="http://127.0.0.1:9")  # type: ignore[call-overload]
apprise.Apprise.instantiate("json://127.0.0.1:9/")


def run(
    config_path: str, endpoint: str, start: datetime, cycles: int, crash_at: str | None
) -> None:
    """Run ``cycles`` cycles a minute apart from ``start``; die at ``crash_at`` if reached."""
    os.environ.update(fake_aws_env(endpoint))
    os.environ.pop(CRASH_ENV, None)
    if crash_at is not None:
        os.environ[CRASH_ENV] = crash_at
    log = Path(config_path).with_name("daemon.log").open("ab")
    os.dup2(log.fileno(), 2)  # the JSON log lines, for the test to read
    configure_logging("json", "info")
    config, _ = load_config(Path(config_path))
    now = [start]

    def providers(cfg: Config) -> list[AwsProvider]:
        return [AwsProvider(cfg, session=_SESSION, catalog=_CATALOG)]

    daemon = Daemon(config, providers=providers, clock=lambda: now[0])
    try:
        for _ in range(cycles):
            daemon.run_cycle()
            now[0] += timedelta(minutes=1)
    finally:
        daemon.close()

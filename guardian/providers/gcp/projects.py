"""The projects below a folder or an organization, from Resource Manager v3.

``ListProjects`` answers a parent's direct children only, so the folder tree is walked
breadth-first: ``ListFolders`` and ``ListProjects`` per folder, every page (active ones only:
the API leaves out projects pending deletion unless asked). A folder that cannot be listed is
reported and its subtree skipped; the rest is audited. Whether Compute is enabled in a project is
learned from its first Compute call (``provider``), which saves a Service Usage call per project.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from guardian.config import GcpConfig, GcpProjectsBelow
from guardian.errors import ConfigError
from guardian.providers import UnitError
from guardian.providers.gcp.clients import GcpClients
from guardian.providers.gcp.errors import map_google_error

__all__ = ["ProjectDirectory", "ProjectTree", "compute_disabled", "list_projects_below"]

log = structlog.get_logger(__name__)

MAX_FOLDERS = 10_000  # a guard against a cycle in a broken or fake hierarchy


def compute_disabled(exc: BaseException) -> bool:
    """Whether a Compute call failed because the API is not enabled in the project (HTTP 403,
    reason ``accessNotConfigured`` / ``SERVICE_DISABLED``): nothing to audit there, no error.
    Looks through guardian's own error to the SDK's exception it was mapped from."""
    while exc.__cause__ is not None and not hasattr(exc, "errors"):
        exc = exc.__cause__
    if getattr(exc, "code", None) != 403:
        return False
    details = getattr(exc, "errors", None) or []
    reasons = {str(e.get("reason", "")) for e in details if isinstance(e, dict)}
    reasons.add(str(getattr(exc, "reason", "") or ""))
    if reasons & {"accessNotConfigured", "SERVICE_DISABLED"}:
        return True
    return "has not been used in project" in str(exc) and "disabled" in str(exc)


@dataclass(frozen=True)
class ProjectTree:
    projects: tuple[str, ...]
    errors: tuple[UnitError, ...] = ()
    api_calls: dict[str, int] = field(default_factory=dict)


def list_projects_below(
    parent: str,
    *,
    folders: Any,
    projects: Any,
    exclude: Sequence[str] = (),
    retry: Any = None,
    timeout_s: float = 30.0,
) -> ProjectTree:
    """Active project ids anywhere below ``parent`` (``folders/N`` or ``organizations/N``)."""
    from google.cloud import resourcemanager_v3 as rm

    calls: Counter[str] = Counter()
    found: list[str] = []
    errors: list[UnitError] = []
    queue, seen = [parent], {parent}
    while queue and len(seen) <= MAX_FOLDERS:
        node = queue.pop(0)
        operation = "resourcemanager.folders.list"
        try:
            pager = folders.list_folders(
                request=rm.ListFoldersRequest(parent=node), retry=retry, timeout=timeout_s
            )
            for page in pager.pages:
                calls[operation] += 1
                for folder in page.folders:
                    if folder.state == rm.Folder.State.ACTIVE and folder.name not in seen:
                        seen.add(folder.name)
                        queue.append(folder.name)
            operation = "resourcemanager.projects.list"
            pager = projects.list_projects(
                request=rm.ListProjectsRequest(parent=node), retry=retry, timeout=timeout_s
            )
            for page in pager.pages:
                calls[operation] += 1
                found.extend(
                    p.project_id for p in page.projects if p.state == rm.Project.State.ACTIVE
                )
        except Exception as exc:  # one folder's failure skips its subtree, not the others
            calls[operation] += 1
            error = map_google_error(exc, operation)
            errors.append(UnitError("gcp", node, "*", error.operation or operation, str(error)))
    skip = set(exclude)
    ids = tuple(sorted({p for p in found if p not in skip}))
    return ProjectTree(ids, tuple(errors), dict(calls))


class ProjectDirectory:
    """The projects to audit: ``gcp.projects`` as listed, or those below a folder or an
    organization, listed again at most every ``TREE_TTL_S`` (one walk per hour, not per
    cycle). Thread-safe."""

    TREE_TTL_S = 3600.0

    def __init__(
        self,
        config: GcpConfig,
        clients: GcpClients,
        adc_project: str | None,
        *,
        retry: Callable[[], Any],
        timeout_s: float,
    ) -> None:
        self._below = config.projects if isinstance(config.projects, GcpProjectsBelow) else None
        listed = list(dict.fromkeys(config.projects)) if isinstance(config.projects, list) else []
        if self._below is None and not listed and adc_project:
            listed = [adc_project]
        if self._below is None and not listed:
            raise ConfigError(
                "gcp.projects: list at least one project id (the credentials name no default)"
            )
        self.static: tuple[str, ...] = tuple(listed)
        self._clients = clients
        self._retry = retry
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._tree: tuple[float, ProjectTree] | None = None

    def resolve(self) -> ProjectTree:
        if self._below is None:
            return ProjectTree(self.static)
        with self._lock:
            cached = self._tree
            if cached is not None and time.monotonic() - cached[0] < self.TREE_TTL_S:
                return ProjectTree(cached[1].projects, cached[1].errors)
            tree = list_projects_below(
                self._below.parent,
                folders=self._clients.folders(),
                projects=self._clients.projects(),
                exclude=self._below.exclude,
                retry=self._retry(),
                timeout_s=self._timeout_s,
            )
            log.info(
                "gcp_projects_listed",
                parent=self._below.parent,
                projects=len(tree.projects),
                failed_folders=len(tree.errors),
                api_calls=sum(tree.api_calls.values()),
            )
            if not tree.errors:  # a partial walk is tried again next cycle
                self._tree = (time.monotonic(), tree)
            return tree

"""A gRPC fake of Resource Manager v3: ``Folders.ListFolders`` and ``Projects.ListProjects``.

It speaks the real protocol to the real ``google-cloud-resource-manager`` client and implements
what guardian relies on: the direct children of a parent (``folders/N`` or
``organizations/N``), active ones only unless ``show_deleted``, pages of ``page_size`` (capped
by the server's own ``page_size``) with ``next_page_token``, and faults per parent
(``fail_parents``: a folder the caller may not list). Every request is recorded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from guardian.simulated.gcp_grpc import FakeGrpcServer, unary

__all__ = ["FakeProject", "FakeResourceManagerServer", "FakeResourceManagerState"]


@dataclass(frozen=True)
class FakeProject:
    project_id: str
    parent: str  # folders/N or organizations/N
    number: int
    active: bool = True


@dataclass
class FakeResourceManagerState:
    folders: dict[str, str] = field(default_factory=dict)  # folders/N → its parent
    projects: list[FakeProject] = field(default_factory=list)
    page_size: int = 50
    fail_parents: dict[str, tuple[str, str]] = field(default_factory=dict)  # → (code, message)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, parent, token)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_folder(self, folder: str, parent: str) -> str:
        self.folders[folder] = parent
        return folder

    def add_project(self, project_id: str, parent: str, *, active: bool = True) -> FakeProject:
        project = FakeProject(project_id, parent, 100_000 + len(self.projects), active)
        self.projects.append(project)
        return project


class _Abort(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Service:
    def __init__(self, state: FakeResourceManagerState) -> None:
        self.state = state

    def _page(self, method: str, request: Any, items: list[Any]) -> tuple[list[Any], str]:
        state = self.state
        with state.lock:
            state.requests.append((method, request.parent, request.page_token))
            failure = state.fail_parents.get(request.parent)
        if failure is not None:
            raise _Abort(*failure)
        if not request.parent.startswith(("folders/", "organizations/")):
            raise _Abort(
                "INVALID_ARGUMENT",
                f"parent must be folders/N or organizations/N: {request.parent!r}",
            )
        size = min(state.page_size, request.page_size or state.page_size)
        offset = int(request.page_token or 0)
        token = str(offset + size) if offset + size < len(items) else ""
        return items[offset : offset + size], token

    def list_folders(self, request: Any, context: Any) -> Any:
        from google.cloud import resourcemanager_v3 as rm

        return self._guard(context, lambda: self._folders(request, rm))

    def _folders(self, request: Any, rm: Any) -> Any:
        with self.state.lock:
            children = sorted(
                f for f, parent in self.state.folders.items() if parent == request.parent
            )
        page, token = self._page("ListFolders", request, children)
        folders = [
            rm.Folder(name=f, parent=request.parent, state=rm.Folder.State.ACTIVE) for f in page
        ]
        return rm.ListFoldersResponse(folders=folders, next_page_token=token)

    def list_projects(self, request: Any, context: Any) -> Any:
        from google.cloud import resourcemanager_v3 as rm

        return self._guard(context, lambda: self._projects(request, rm))

    def _projects(self, request: Any, rm: Any) -> Any:
        with self.state.lock:
            children = [
                p
                for p in self.state.projects
                if p.parent == request.parent and (p.active or request.show_deleted)
            ]
        page, token = self._page("ListProjects", request, children)
        projects = [
            rm.Project(
                name=f"projects/{p.number}",
                project_id=p.project_id,
                parent=p.parent,
                state=rm.Project.State.ACTIVE if p.active else rm.Project.State.DELETE_REQUESTED,
            )
            for p in page
        ]
        return rm.ListProjectsResponse(projects=projects, next_page_token=token)

    @staticmethod
    def _guard(context: Any, call: Any) -> Any:
        import grpc

        try:
            return call()
        except _Abort as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)  # raises
            raise


class FakeResourceManagerServer(FakeGrpcServer):
    """Folders and Projects on one free local port (both services, one server)."""

    def __init__(self, state: FakeResourceManagerState | None = None) -> None:
        import grpc
        from google.cloud import resourcemanager_v3 as rm

        self.state = state or FakeResourceManagerState()
        service = _Service(self.state)
        super().__init__(
            "google.cloud.resourcemanager.v3.Projects",
            {
                "ListProjects": unary(
                    service.list_projects, rm.ListProjectsRequest, rm.ListProjectsResponse
                )
            },
        )
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "google.cloud.resourcemanager.v3.Folders",
                    {
                        "ListFolders": unary(
                            service.list_folders, rm.ListFoldersRequest, rm.ListFoldersResponse
                        )
                    },
                ),
            )
        )

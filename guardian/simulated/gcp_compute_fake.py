"""A plain-HTTP fake of the Compute Engine REST paths guardian calls.

Served to the real ``google-cloud-compute`` client (``transport="rest"``, ``api_endpoint``
``http://127.0.0.1:PORT``):

- ``GET  /compute/v1/projects/{p}/aggregated/instances`` — filter, maxResults/pageToken paging,
  a ``warning`` scope for every zone with nothing on the page, unreachable zones;
- ``GET  /compute/v1/projects/{p}/aggregated/machineTypes`` — with ``accelerators``;
- ``POST /compute/v1/projects/{p}/zones/{z}/instances/{name}/stop`` — refuses a VM with local SSD
  unless ``discardLocalSsd`` is given, as Compute Engine does;
- ``GET|POST /compute/v1/projects/{p}/zones/{z}/operations/{op}[/wait]``.

The state it serves is ``gcp_compute_model.FakeComputeState``; every request is recorded
there (``requests``) so tests assert what was sent.
Faults are injected per project (``fail_projects``) or per zone (``unreachable_zones``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from guardian.simulated.gcp_compute_model import (
    COMPUTE_API,
    DEFAULT_MACHINE_TYPES,
    FakeComputeState,
    FakeMachineType,
    FakeVm,
    Operation,
    RecordedRequest,
    finish_operation,
    operation_json,
    stable_instance_id,
)

__all__ = [
    "DEFAULT_MACHINE_TYPES",
    "FakeComputeServer",
    "FakeComputeState",
    "FakeMachineType",
    "FakeVm",
    "RecordedRequest",
    "stable_instance_id",
]


class _HttpError(Exception):
    def __init__(self, code: int, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


_STATUS_TEXT = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_FILTER = re.compile(r'^\(?\s*(\w+)\s*(=|!=|eq|ne)\s*(?:"([^"]*)"|([^\s"]+?))\s*\)?$')
_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/aggregated/instances$")),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/aggregated/machineTypes$")),
    ("POST", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)/stop$")),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)$")),
    ("POST", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)/wait$")),
    ("GET", re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$")),
)


def _matches_filter(fields: Mapping[str, str], expression: str) -> bool:
    """The subset of Compute's filter language guardian uses: one ``field = value`` (exact) or
    ``field eq "regex"`` (RE2, full match) expression."""
    if not expression:
        return True
    match = _FILTER.match(expression.strip())
    if not match:
        raise _HttpError(400, f"Invalid value for field 'filter': '{expression}'.")
    key, op, quoted, bare = match.groups()
    value = quoted if quoted is not None else bare
    if key not in fields:
        raise _HttpError(400, f"Invalid field name '{key}' in filter.")
    if op in ("=", "!="):
        equal = fields[key] == value
    else:
        equal = re.fullmatch(value, fields[key]) is not None
    return equal if op in ("=", "eq") else not equal


def _page(items: list[Any], query: Mapping[str, str], cap: int) -> tuple[list[Any], str | None]:
    size = min(int(query.get("maxResults") or 500), cap)
    start = int(query.get("pageToken") or 0)
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeCompute/1"
    state: FakeComputeState  # set on the subclass per server

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep test output quiet

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.state.lock:
            self.state.requests.append(RecordedRequest(method, parts.path, query))
            try:
                body = self._route(method, parts.path, query)
            except _HttpError as exc:
                self._send(exc.code, _error_body(exc))
                return
        self._send(200, body)

    def _route(self, method: str, path: str, query: Mapping[str, str]) -> dict[str, Any]:
        for index, (verb, pattern) in enumerate(_ROUTES):
            match = pattern.match(path)
            if match and verb == method:
                handler = (
                    self._instances,
                    self._machine_types,
                    self._stop,
                    self._operation,
                    self._operation,
                    self._get_instance,
                )[index]
                return handler(query, *match.groups())
        raise _HttpError(404, f"The requested URL {path} was not found on this server.", "notFound")

    def _fail_for(self, project: str) -> None:
        if project in self.state.compute_disabled:
            raise _HttpError(
                403,
                f"Compute Engine API has not been used in project {project} before or it is "
                "disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
                f"compute.googleapis.com/overview?project={project} then retry.",
                "accessNotConfigured",
            )
        failure = self.state.fail_projects.get(project)
        if failure is not None:
            code, message = failure
            raise _HttpError(code, message, "forbidden" if code == 403 else "backendError")

    def _instances(self, query: Mapping[str, str], project: str) -> dict[str, Any]:
        self._fail_for(project)
        state = self.state
        wanted = [
            vm
            for vm in sorted(state.projects.get(project, []), key=lambda v: (v.zone, v.name))
            if _matches_filter(
                {"status": vm.status, "name": vm.name, "zone": vm.zone}, query.get("filter", "")
            )
            and vm.zone not in state.unreachable_zones
        ]
        page, token = _page(wanted, query, state.page_size)
        zones = sorted({vm.zone for vm in state.projects.get(project, [])} | set(state.extra_zones))
        items: dict[str, Any] = {}
        for zone in zones:
            scope = f"zones/{zone}"
            on_page = [vm.to_json(project) for vm in page if vm.zone == zone]
            if zone in state.unreachable_zones:
                items[scope] = _warning("UNREACHABLE", f"Scope '{scope}' is unreachable.", scope)
            elif on_page:
                items[scope] = {"instances": on_page}
            else:
                items[scope] = _warning(
                    "NO_RESULTS_ON_PAGE",
                    f"There are no results for scope '{scope}' on this page.",
                    scope,
                )
        body: dict[str, Any] = {
            "kind": "compute#instanceAggregatedList",
            "id": f"projects/{project}/aggregated/instances",
            "items": items,
            "selfLink": f"{COMPUTE_API}/projects/{project}/aggregated/instances",
        }
        if token:
            body["nextPageToken"] = token
        return body

    def _machine_types(self, query: Mapping[str, str], project: str) -> dict[str, Any]:
        self._fail_for(project)
        if self.state.fail_machine_types is not None:
            code, message = self.state.fail_machine_types
            raise _HttpError(code, message, "forbidden")
        zones = sorted({vm.zone for vms in self.state.projects.values() for vm in vms}) or [
            "us-central1-a"
        ]
        expression = query.get("filter", "")
        entries = [
            (zone, mt)
            for zone in zones
            for mt in self.state.machine_types
            if _matches_filter({"name": mt.name, "zone": zone}, expression)
        ]
        page, token = _page(entries, query, self.state.page_size)
        items: dict[str, Any] = {}
        for zone, mt in page:
            body: dict[str, Any] = {
                "kind": "compute#machineType",
                "name": mt.name,
                "zone": zone,
                "guestCpus": mt.guest_cpus,
                "memoryMb": mt.memory_mb,
            }
            if mt.accelerators:
                body["accelerators"] = [
                    {"guestAcceleratorType": kind, "guestAcceleratorCount": n}
                    for kind, n in mt.accelerators
                ]
            items.setdefault(f"zones/{zone}", {"machineTypes": []})["machineTypes"].append(body)
        result: dict[str, Any] = {"kind": "compute#machineTypeAggregatedList", "items": items}
        if token:
            result["nextPageToken"] = token
        return result

    def _vm(self, project: str, zone: str, name: str) -> FakeVm:
        self._fail_for(project)
        try:
            vm = self.state.vm(project, name)
        except KeyError:
            vm = None
        if vm is None or vm.zone != zone:
            raise _HttpError(
                404,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
                "notFound",
            )
        return vm

    def _get_instance(
        self, query: Mapping[str, str], project: str, zone: str, name: str
    ) -> dict[str, Any]:
        return self._vm(project, zone, name).to_json(project)

    def _stop(self, query: Mapping[str, str], project: str, zone: str, name: str) -> dict[str, Any]:
        vm = self._vm(project, zone, name)
        if vm.local_ssd and "discardLocalSsd" not in query:
            raise _HttpError(
                400,
                "VM has a Local SSD attached but an undefined value for `discard-local-ssd`. "
                "If using gcloud, please add `--discard-local-ssd=false` or "
                "`--discard-local-ssd=true`",
            )
        operation = Operation(
            name=f"operation-stop-{next(self.state.operation_ids)}",
            project=project,
            zone=zone,
            vm=vm,
            polls_left=self.state.operation_polls,
        )
        vm.status = "STOPPING"
        if operation.polls_left <= 0:
            finish_operation(operation)
        self.state.operations[operation.name] = operation
        return operation_json(operation)

    def _operation(
        self, query: Mapping[str, str], project: str, zone: str, name: str
    ) -> dict[str, Any]:
        operation = self.state.operations.get(name)
        if operation is None or operation.project != project or operation.zone != zone:
            raise _HttpError(
                404,
                f"The resource 'projects/{project}/zones/{zone}/operations/{name}' was not found",
                "notFound",
            )
        if operation.status != "DONE":
            operation.polls_left -= 1
            if operation.polls_left <= 0:
                finish_operation(operation)
        return operation_json(operation)

    def _send(self, code: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _warning(code: str, message: str, scope: str) -> dict[str, Any]:
    return {
        "warning": {"code": code, "message": message, "data": [{"key": "scope", "value": scope}]}
    }


def _error_body(exc: _HttpError) -> dict[str, Any]:
    return {
        "error": {
            "code": exc.code,
            "message": exc.message,
            "errors": [{"message": exc.message, "domain": "global", "reason": exc.reason}],
            "status": _STATUS_TEXT.get(exc.code, "UNKNOWN"),
        }
    }


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its own timeout) closes the socket mid-answer; not our error.
        return


class FakeComputeServer:
    """The fake on 127.0.0.1 at a free port, served from a daemon thread."""

    def __init__(self, state: FakeComputeState | None = None) -> None:
        self.state = state or FakeComputeState()
        handler = type("BoundHandler", (_Handler,), {"state": self.state})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            # A short poll interval: shutdown() waits up to one interval.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-compute",
            daemon=True,
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeComputeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeComputeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Faults on the wire: an HTTP proxy between the real clients and the local servers.

``FaultProxy`` sits between boto3 and the moto server (point ``AWS_ENDPOINT_URL`` at its
``endpoint``) or between google-cloud-compute and the Compute fake (``gcp.compute_endpoint``). For
each request it names the operation (``ec2:DescribeInstances``, ``monitoring:GetMetricData``,
``compute:GET /projects/p/aggregated/instances``), asks a ``FaultPlan`` whether to break it, and
either forwards it or answers as the real service would when it is in trouble:

- ``throttle``: the service's own throttling error in its own wire format (EC2's
  ``RequestLimitExceeded`` XML, query-protocol ``Throttling`` XML, CloudWatch's CBOR
  ``Throttling``, JSON-protocol ``ThrottlingException``, Google's JSON 429
  ``RESOURCE_EXHAUSTED``), so the client's retry logic sees what it would see in production;
- ``http500`` / ``http503``: a server error with the service's error body;
- ``latency``: forwarded after ``delay_s``;
- ``truncate``: the upstream answer, cut in half after a full ``Content-Length`` header;
- ``drop``: the connection closed without an answer;
- ``forward_then_drop``: forwarded (the upstream acts on it) but the answer never arrives, as
  when a stop call times out although the stop happened;
- ``error``: any error the service can send, by ``status`` and ``code`` (``ExpiredToken``,
  ``AccessDenied``...), in the service's own format.

Besides the ``FaultPlan`` (by operation and call number), an ``intercept`` function may pick a
fault from the whole request (``Request``: operation, signing region, access key, body): a
region that cannot be reached, one account's credentials expired.

A ``rewrite`` hook may change any forwarded answer's body (missing fields, wrong types, unknown
enum values). gRPC services (Monitoring, Billing) cannot be proxied at the HTTP level; for
them ``grpc_fault_interceptor`` breaks calls inside the fake server with ``UNAVAILABLE`` or
``RESOURCE_EXHAUSTED``. Usable from ``bench/`` too: nothing here depends on pytest.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "FaultPlan",
    "FaultProxy",
    "NoFaults",
    "RandomFaults",
    "Request",
    "ScheduledFaults",
    "grpc_fault_interceptor",
    "operation_of",
]

FaultKind = Literal[
    "throttle", "http500", "http503", "latency", "truncate", "drop", "forward_then_drop", "error"
]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "throttle",
    "http500",
    "http503",
    "latency",
    "truncate",
    "drop",
)
Rewrite = Callable[[str, bytes, Mapping[str, str]], bytes]

_SCOPE = re.compile(r"Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_CBOR_OPERATION = re.compile(r"/service/[^/]+/operation/([A-Za-z]+)")
_GCP_ID = re.compile(r"/(instances|operations|zones|regions|machineTypes)/[^/?]+")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    delay_s: float = 0.0  # for latency
    status: int = 400  # for error
    code: str = ""  # for error


@dataclass(frozen=True)
class Request:
    """What ``FaultProxy.intercept`` sees of a request. ``region`` and ``access_key`` come from
    an AWS signature (empty for Google's APIs)."""

    operation: str
    region: str
    access_key: str
    body: bytes


Intercept = Callable[[Request], "Fault | None"]


class FaultPlan(Protocol):
    def fault_for(self, operation: str, call_number: int) -> Fault | None:
        """The fault for the ``call_number``-th call (1-based) of ``operation``, or None."""
        ...


class NoFaults:
    def fault_for(self, operation: str, call_number: int) -> Fault | None:
        return None


@dataclass
class RandomFaults:
    """Each call breaks with probability ``rate``, with a kind drawn from ``kinds``; seeded,
    so a failing run can be replayed. ``operations`` (prefixes) limits it; empty = all."""

    rate: float
    kinds: Sequence[FaultKind] = FAULT_KINDS
    seed: int = 0
    operations: Sequence[str] = ()
    delay_s: float = 0.2
    _random: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def fault_for(self, operation: str, call_number: int) -> Fault | None:
        if self.operations and not operation.startswith(tuple(self.operations)):
            return None
        with self._lock:
            if self._random.random() >= self.rate:
                return None
            kind = self._random.choice(list(self.kinds))
        return Fault(kind, self.delay_s if kind == "latency" else 0.0)


@dataclass
class ScheduledFaults:
    """operation → the faults of its 1st, 2nd, ... call (None = answered normally); calls
    past the end of the list are answered normally, or with ``always`` when it is set."""

    schedule: Mapping[str, Sequence[Fault | None]] = field(default_factory=dict)
    always: Mapping[str, Fault] = field(default_factory=dict)

    def fault_for(self, operation: str, call_number: int) -> Fault | None:
        if operation in self.always:
            return self.always[operation]
        faults = self.schedule.get(operation, ())
        return faults[call_number - 1] if call_number <= len(faults) else None


def operation_of(method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
    """``service:Operation`` for AWS (query, EC2, JSON and CBOR protocols); ``compute:METHOD
    /path`` for Google's REST APIs, with ids kept and the query string dropped."""
    scope = _SCOPE.search(headers.get("authorization", ""))
    if scope is not None:
        service = scope.group(3)
        target = headers.get("x-amz-target")
        if target:
            return f"{service}:{target.rsplit('.', 1)[-1]}"
        cbor = _CBOR_OPERATION.search(path)
        if cbor is not None:
            return f"{service}:{cbor.group(1)}"
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        return f"{service}:{action or method}"
    return f"compute:{method} {urlsplit(path).path}"


def _protocol(headers: Mapping[str, str], path: str) -> str:
    if _SCOPE.search(headers.get("authorization", "")) is None:
        return "google"
    if headers.get("x-amz-target"):
        return "json"
    if _CBOR_OPERATION.search(path):
        return "cbor"
    return "query"


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 24:
        return bytes([0x60 | len(raw)]) + raw
    if len(raw) < 256:
        return bytes([0x78, len(raw)]) + raw
    return bytes([0x79]) + len(raw).to_bytes(2, "big") + raw


def _cbor_error(code: str, message: str) -> bytes:
    """A CBOR map {"__type": code, "message": message}: smithy-rpc-v2-cbor's error shape."""
    return (
        b"\xa2"
        + _cbor_text("__type")
        + _cbor_text(code)
        + _cbor_text("message")
        + (_cbor_text(message))
    )


def error_response(
    operation: str, protocol: str, status: int, code: str, message: str, *, query_mode: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of ``code`` as the service would send it. ``query_mode``: a
    former query-protocol service (CloudWatch) speaking JSON or CBOR, which names its errors by
    their query codes in ``x-amzn-query-error``."""
    service = operation.split(":", 1)[0]
    compat = {"x-amzn-query-error": f"{code};Sender"} if query_mode else {}
    if protocol == "google":
        state = {
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE",
        }.get(status, "INTERNAL")
        body = (
            f'{{"error": {{"code": {status}, "message": "{message}", "status": "{state}"}}}}'
        ).encode()
        return status, {"Content-Type": "application/json"}, body
    if protocol == "cbor":
        return (
            status,
            {"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor", **compat},
            _cbor_error(code, message),
        )
    if protocol == "json":
        body = f'{{"__type": "{code}", "message": "{message}"}}'.encode()
        return status, {"Content-Type": "application/x-amz-json-1.1", **compat}, body
    if service == "ec2":
        xml = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
            "</Error></Errors><RequestID>fault-proxy</RequestID></Response>"
        )
    else:
        xml = (
            f"<ErrorResponse><Error><Type>Receiver</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>fault-proxy</RequestId>"
            "</ErrorResponse>"
        )
    return status, {"Content-Type": "text/xml"}, xml.encode()


def _throttle(operation: str, protocol: str) -> tuple[int, str]:
    service = operation.split(":", 1)[0]
    if protocol == "google":
        return 429, "RESOURCE_EXHAUSTED"
    if service == "ec2":
        return 503, "RequestLimitExceeded"
    if service == "organizations":
        return 400, "TooManyRequestsException"
    return 400, "Throttling"  # CloudWatch (any protocol), STS, Auto Scaling


@dataclass
class _Upstream:
    host: str
    port: int


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` (``http://host:port``) on 127.0.0.1."""

    def __init__(
        self,
        upstream: str,
        plan: FaultPlan | None = None,
        *,
        rewrite: Rewrite | None = None,
        intercept: Intercept | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = _Upstream(parts.hostname or "127.0.0.1", parts.port or 80)
        self.plan: FaultPlan = plan or NoFaults()
        self.rewrite = rewrite
        self.intercept = intercept  # consulted first; its fault wins over the plan's
        self.calls: Counter[str] = Counter()  # operation → calls seen
        self.injected: Counter[tuple[str, str]] = Counter()  # (operation, fault kind) → count
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: tests read the counters instead

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def injected_total(self, operations: Iterable[str] | None = None) -> int:
        wanted = set(operations) if operations is not None else None
        return sum(n for (op, _), n in self.injected.items() if wanted is None or op in wanted)

    # -- one request ---------------------------------------------------------------------------

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in request.headers.items()}
        operation = operation_of(request.command, request.path, headers, body)
        with self._lock:
            self.calls[operation] += 1
            number = self.calls[operation]
        fault = None
        if self.intercept is not None:
            scope = _SCOPE.search(headers.get("authorization", ""))
            key, region = (scope.group(1), scope.group(2)) if scope else ("", "")
            fault = self.intercept(Request(operation, region, key, body))
        if fault is None:
            fault = self.plan.fault_for(operation, number)
        if fault is not None:
            with self._lock:
                self.injected[(operation, fault.kind)] += 1
        if fault is not None and fault.kind == "drop":
            request.close_connection = True
            request.connection.close()
            return
        protocol = _protocol(headers, request.path)
        if fault is not None and fault.kind in {"throttle", "http500", "http503", "error"}:
            if fault.kind == "throttle":
                status, code = _throttle(operation, protocol)
            elif fault.kind == "error":
                status, code = fault.status, fault.code
            else:
                status = 500 if fault.kind == "http500" else 503
                code = "InternalError" if status == 500 else "ServiceUnavailable"
            query_mode = headers.get("x-amzn-query-mode") == "true" or protocol == "cbor"
            error = error_response(
                operation, protocol, status, code, "injected", query_mode=query_mode
            )
            self._answer(request, *error)
            return
        if fault is not None and fault.kind == "latency":
            time.sleep(fault.delay_s)
        status, answer_headers, answer = self._forward(request, headers, body)
        if fault is not None and fault.kind == "forward_then_drop":
            request.close_connection = True
            request.connection.close()
            return
        if self.rewrite is not None:
            answer = self.rewrite(operation, answer, answer_headers)
        if fault is not None and fault.kind == "truncate":
            self._answer(request, status, answer_headers, answer, cut=len(answer) // 2)
            return
        self._answer(request, status, answer_headers, answer)

    def _forward(
        self, request: BaseHTTPRequestHandler, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.upstream.host, self.upstream.port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k not in {"connection", "keep-alive"}}
            connection.request(request.command, request.path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            kept = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in {"content-length", "transfer-encoding", "connection"}
            }
            return response.status, kept, data
        finally:
            connection.close()

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        cut: int | None = None,
    ) -> None:
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        if cut is not None:
            request.send_header("Connection", "close")
        request.end_headers()
        request.wfile.write(body if cut is None else body[:cut])
        request.wfile.flush()
        if cut is not None:
            request.close_connection = True


def grpc_fault_interceptor(plan: FaultPlan) -> Any:
    """A ``grpc.ServerInterceptor`` for the fake gRPC servers: a ``throttle`` fault aborts the
    call with ``RESOURCE_EXHAUSTED``, any other fault kind with ``UNAVAILABLE``; ``latency``
    delays it. Operations are named ``grpc:/google.monitoring.v3.MetricService/ListTimeSeries``.
    """
    import grpc

    counts: Counter[str] = Counter()
    lock = threading.Lock()

    class Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            operation = f"grpc:{details.method}"
            with lock:
                counts[operation] += 1
                number = counts[operation]
            fault = plan.fault_for(operation, number)
            handler = continuation(details)
            if fault is None or handler is None:
                return handler
            if fault.kind == "latency":
                inner = handler.unary_unary

                def slow(request: Any, context: Any) -> Any:
                    time.sleep(fault.delay_s)
                    return inner(request, context)

                return handler._replace(unary_unary=slow)
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if fault.kind == "throttle"
                else grpc.StatusCode.UNAVAILABLE
            )

            def abort(request: Any, context: Any) -> Any:
                context.abort(code, f"injected {fault.kind}")

            return handler._replace(unary_unary=abort)

    return Interceptor()

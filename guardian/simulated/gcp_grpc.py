"""A local insecure gRPC server for the fakes of Google's gRPC APIs (Monitoring, Billing).

Handlers are registered with ``grpc.method_handlers_generic_handler`` and proto-plus message
classes, so no generated service stubs are needed: the wire format is the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

__all__ = ["FakeGrpcServer", "unary"]

Handler = Callable[[Any, Any], Any]


def unary(handler: Handler, request_class: Any, response_class: Any) -> Any:
    """A unary-unary method handler that (de)serialises proto-plus messages."""
    import grpc

    return grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=request_class.deserialize,
        response_serializer=response_class.serialize,
    )


class FakeGrpcServer:
    """One gRPC service on 127.0.0.1 at a free port; ``endpoint`` is ``http://127.0.0.1:PORT``
    (the ``http://`` tells guardian's client builder to use an insecure channel)."""

    def __init__(
        self,
        service: str,
        methods: Mapping[str, Any],
        workers: int = 4,
        interceptors: Sequence[Any] = (),
    ) -> None:
        import grpc

        # Interceptors let tests break calls on the wire (tests/fakes/fault_proxy.py).
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=workers), interceptors=list(interceptors)
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, dict(methods)),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

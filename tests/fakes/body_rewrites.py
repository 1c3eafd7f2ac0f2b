"""Hostile answers for ``FaultProxy.rewrite``: one instance's part of a real answer broken.

Each function returns a ``Rewrite`` (``(operation, body, headers) -> body``) that changes only
the answers of one operation, and there only what belongs to one instance, so a test can check
that the rest of the answer is still used as before:

- ``ec2_instance_rewrite``: the ``<item>`` of one instance in EC2's DescribeInstances XML,
  through edits of its elements (``drop("instanceType")``,
  ``set_text("instanceState/name", "hibernating-soon")``).
- ``compute_instance_rewrite``: one VM's object in Compute's ``instances.aggregatedList`` JSON,
  through a function that edits it in place (``lambda vm: vm.pop("zone")``).
- ``grpc_answer_interceptor``: a ``grpc.ServerInterceptor`` for the gRPC fakes (Monitoring)
  that hands each answer of one method to an edit before it is sent (points in the future,
  values of an unknown type: what the fake's own data cannot say).

CloudWatch's GetMetricData travels as CBOR (smithy-rpc-v2-cbor) in this botocore, which the
standard library cannot rewrite; NaN and negative datapoints are covered where every provider
reduces them (``guardian.series``).

Usable from ``bench/`` too: nothing here depends on pytest.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any

from tests.fakes.fault_proxy import Rewrite

__all__ = [
    "compute_instance_rewrite",
    "drop",
    "ec2_instance_rewrite",
    "grpc_answer_interceptor",
    "set_text",
]

ElementEdit = Callable[[ET.Element], None]


def _local(tag: str) -> str:
    """An element's name without its namespace (moto's EC2 XML may or may not have one)."""
    return tag.rsplit("}", 1)[-1]


def _find_all(element: ET.Element, path: str) -> list[tuple[ET.Element, ET.Element]]:
    """(parent, child) for every element at ``path`` (``a/b``, names without namespace)."""
    *parents, last = path.split("/")
    holders = [element]
    for part in parents:
        holders = [child for holder in holders for child in holder if _local(child.tag) == part]
    return [(holder, child) for holder in holders for child in holder if _local(child.tag) == last]


def drop(path: str) -> ElementEdit:
    """Remove every element at ``path`` (relative to the instance's ``<item>``)."""

    def edit(item: ET.Element) -> None:
        for parent, child in _find_all(item, path):
            parent.remove(child)

    return edit


def set_text(path: str, text: str) -> ElementEdit:
    """Give every element at ``path`` this text, adding it where the answer has none (a string
    where a number goes, an unknown enum value...)."""

    def edit(item: ET.Element) -> None:
        found = _find_all(item, path)
        if not found and "/" not in path:
            namespace = item.tag[: -len(_local(item.tag))]
            found = [(item, ET.SubElement(item, f"{namespace}{path}"))]
        for _, element in found:
            element.text = text

    return edit


def ec2_instance_rewrite(instance_id: str, *edits: ElementEdit) -> Rewrite:
    def rewrite(operation: str, body: bytes, _headers: Mapping[str, str]) -> bytes:
        if operation != "ec2:DescribeInstances":
            return body
        root = ET.fromstring(body)
        if root.tag.startswith("{"):
            ET.register_namespace("", root.tag[1:].split("}", 1)[0])
        for item in root.iter():
            if _local(item.tag) != "item":
                continue
            # The instance's own <item>: its id is a direct child (an attachment's is deeper).
            if [child.text for _, child in _find_all(item, "instanceId")] == [instance_id]:
                for edit in edits:
                    edit(item)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    return rewrite


JsonEdit = Callable[[dict[str, Any]], object]


def compute_instance_rewrite(name: str, edit: JsonEdit) -> Rewrite:
    """Edit the VM called ``name`` wherever an ``instances.aggregatedList`` answer lists it."""

    def rewrite(operation: str, body: bytes, _headers: Mapping[str, str]) -> bytes:
        if not (
            operation.startswith("compute:GET ") and operation.endswith("/aggregated/instances")
        ):
            return body
        answer = json.loads(body)
        for scoped in answer.get("items", {}).values():
            for vm in scoped.get("instances", []):
                if vm.get("name") == name:
                    edit(vm)
        return json.dumps(answer).encode()

    return rewrite


def grpc_answer_interceptor(method: str, edit: Callable[[Any], None]) -> Any:
    """Pass every answer of ``method`` (``/google.monitoring.v3.MetricService/ListTimeSeries``)
    through ``edit``, which changes the proto-plus message in place."""
    import grpc

    class Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            if handler is None or details.method != method:
                return handler
            inner = handler.unary_unary

            def edited(request: Any, context: Any) -> Any:
                answer = inner(request, context)
                edit(answer)
                return answer

            return handler._replace(unary_unary=edited)

    return Interceptor()

"""Hostile answers for ``FaultProxy.rewrite``: one instance's part of a real answer broken.

Each function returns a ``Rewrite`` (``(operation, body, headers) -> body``) that changes only
the answers of one operation, and there only what belongs to one instance, so a test can check
that the rest of the answer is still used as before:

- ``ec2_instance_rewrite``: the ``<item>`` of one instance in EC2's DescribeInstances XML,
  through edits of its elements (``drop("instanceType")``,
  ``set_text("instanceState/name", "hibernating-soon")``).

CloudWatch's GetMetricData travels as CBOR (smithy-rpc-v2-cbor) in this botocore, which the
standard library cannot rewrite; NaN and negative datapoints are covered where every provider
reduces them (``guardian.series``).

Usable from ``bench/`` too: nothing here depends on pytest.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping

from tests.fakes.fault_proxy import Rewrite

__all__ = [
    "drop",
    "ec2_instance_rewrite",
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

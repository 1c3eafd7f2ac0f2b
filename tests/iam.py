"""The part of IAM policy evaluation guardian's policy files use: Allow/Deny statements with
``Action`` (names or ``service:*``), ``Resource`` (``*`` or ARN patterns with ``*``) and the
``Null`` and ``StringNotEqualsIgnoreCase`` conditions on ``aws:ResourceTag/<key>``. An explicit
Deny wins, then an Allow; anything else is denied. Enough to check the files say what the docs
say; not a substitute for AWS's evaluator."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "docs" / "iam-policy.json"
STANDBY = REPO / "docs" / "iam-policy-standby.json"


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _condition_holds(condition: Mapping[str, Mapping[str, str]], tags: Mapping[str, str]) -> bool:
    for operator, checks in condition.items():
        for key, expected in checks.items():
            tag = key.removeprefix("aws:ResourceTag/")
            if operator == "Null":
                if (tag not in tags) != (expected == "true"):
                    return False
            elif operator == "StringNotEqualsIgnoreCase":
                if tags.get(tag, "").lower() == expected.lower():
                    return False
            else:
                raise ValueError(f"condition operator {operator} is not modelled here")
    return True


def _matches(
    statement: Mapping[str, Any], action: str, resource: str, tags: Mapping[str, str]
) -> bool:
    actions = _listed(statement["Action"])
    resources = _listed(statement["Resource"])
    return (
        any(fnmatch.fnmatchcase(action, pattern) for pattern in actions)
        and any(fnmatch.fnmatchcase(resource, pattern) for pattern in resources)
        and _condition_holds(statement.get("Condition", {}), tags)
    )


def allowed(
    policy: Mapping[str, Any],
    action: str,
    resource: str = "*",
    tags: Mapping[str, str] | None = None,
) -> bool:
    """Whether ``policy`` lets ``action`` on ``resource`` (with these resource tags) through."""
    tags = tags or {}
    statements = policy["Statement"]
    if any(s["Effect"] == "Deny" and _matches(s, action, resource, tags) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and _matches(s, action, resource, tags) for s in statements)


def instance_arn(instance_id: str, region: str = "us-east-1") -> str:
    return f"arn:aws:ec2:{region}:123456789012:instance/{instance_id}"


def group_arn(name: str, region: str = "us-east-1") -> str:
    return (
        f"arn:aws:autoscaling:{region}:123456789012:autoScalingGroup:"
        f"0f1e2d3c-aaaa-bbbb-cccc-0123456789ab:autoScalingGroupName/{name}"
    )

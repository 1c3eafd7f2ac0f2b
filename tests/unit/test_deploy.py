"""deploy/: the member-account StackSet role grants exactly docs/iam-policy.json (less what
only the hub needs), the container recipe and the Kubernetes manifests say what they promise."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from guardian.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Called from the account guardian runs in, never in a member account.
HUB_ONLY_ACTIONS = {"pricing:GetProducts"}


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return sorted([action] if isinstance(action, str) else action)


def _normal(statement: dict[str, Any]) -> tuple[Any, ...]:
    resource = statement.get("Resource", "*")
    return (
        statement.get("Sid"),
        statement["Effect"],
        tuple(_actions(statement)),
        tuple([resource] if isinstance(resource, str) else resource),
        json.dumps(statement.get("Condition"), sort_keys=True),
    )


def test_the_stackset_role_grants_exactly_the_documented_policy() -> None:
    template = yaml.safe_load((DEPLOY / "aws" / "stackset-member-role.yaml").read_text())
    role = template["Resources"]["GuardianMemberRole"]["Properties"]
    (policy,) = role["Policies"]
    granted = policy["PolicyDocument"]["Statement"]
    documented = json.loads((ROOT / "docs" / "iam-policy.json").read_text())["Statement"]
    member = [
        s for s in documented if not set(_actions(s)) <= HUB_ONLY_ACTIONS
    ]  # statements a member account needs, with their conditions
    assert sorted(map(_normal, granted)) == sorted(map(_normal, member))
    # The trust: guardian's own principal, with the external id of its config.
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Principal"]["AWS"] == {"Ref": "GuardianPrincipalArn"}
    assert trust["Condition"]["StringEquals"]["sts:ExternalId"] == {"Ref": "ExternalId"}
    assert template["Parameters"]["RoleName"]["Default"] == "gpu-guardian"


def test_the_kubernetes_config_is_a_valid_guardian_config_for_replicas() -> None:
    (configmap,) = yaml.safe_load_all((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    config = parse_config(yaml.safe_load(configmap["data"]["guardian.yaml"]))
    assert config.metrics.listen.endswith(":9464")
    (deployment,) = yaml.safe_load_all((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    spec = deployment["spec"]
    assert 2 <= spec["replicas"] <= 3
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    (pdb,) = yaml.safe_load_all((DEPLOY / "kubernetes" / "pdb.yaml").read_text())
    assert pdb["spec"]["maxUnavailable"] == 1
    (account,) = yaml.safe_load_all((DEPLOY / "kubernetes" / "serviceaccount.yaml").read_text())
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]
    kinds = {
        doc["kind"]
        for path in (DEPLOY / "kubernetes").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
    }
    assert {"ConfigMap", "Secret", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    assert {"Deployment", "ServiceMonitor", "Service"} <= kinds


def test_the_container_is_multi_stage_non_root_with_guardian_as_entrypoint() -> None:
    recipe = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", recipe, re.MULTILINE)
    assert len(stages) == 2
    final = recipe.split("\nFROM ")[-1]
    assert "COPY --from=build /opt/gpu-guardian /opt/gpu-guardian" in final
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final)
    assert re.search(r"^USER 10001", final, re.MULTILINE)
    assert 'ENTRYPOINT ["guardian"' in final
    assert "HEALTHCHECK" in final
    assert ":9464/metrics" in final

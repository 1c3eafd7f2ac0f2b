"""A moto server that enforces IAM, in a process of its own, and the users to call it as.

    python -m tests.moto_iam STOP_LOG TYPE,TYPE...

prints its URL on the first line and serves until killed. moto checks IAM once
``INITIAL_NO_AUTH_ACTION_COUNT`` calls have been served without it; that setting and moto's
backends are process-wide, which is why this server is not the test process's shared one. The
first three calls create an administrator whose keys seed everything else.

What moto 5.2 evaluates (``moto/iam/access_control.py``, read for this): a statement's
``Effect``, ``Action`` (with ``*``) and ``Resource`` — but every EC2, CloudWatch and Auto
Scaling request is checked against the resource ``"*"``, so a statement whose Resource is an
ARN pattern never applies — and, of the conditions, only ``StringEquals`` on values the request
itself carries; every other operator (``Null``, ``StringNotEqualsIgnoreCase``...) and every key
it cannot see (``aws:ResourceTag/...``, ``aws:ARN``) is taken to hold. Stock moto would
therefore refuse every ``ec2:StopInstances`` the shipped policies allow, and enforce none of
their Deny statements.

``_authorize_stops_per_instance`` closes that gap for ``ec2:StopInstances`` only, the one call
whose statements carry ARNs and tag conditions: each instance of the call is checked on its
own ARN, with its tags as ``aws:ResourceTag/<key>``, and the conditions on those keys are
evaluated as AWS does (``Null``, ``StringEquals``, ``StringNotEqualsIgnoreCase``). So is the
agent's ``aws:ARN`` = ``${ec2:SourceInstanceARN}``: ``aws:ARN`` is the ARN of the instance being
stopped, and a user whose IAM tags carry ``SOURCE_INSTANCE_TAG`` stands for an instance role's
credentials on that instance (its value, an instance ARN, fills the variable; without it the
variable is unresolved and the condition fails, as for keys used off an instance). A condition on
any other key is still taken to hold, as moto does. Statement matching and Deny-over-Allow stay
moto's. Every StopInstances the
server is asked for is appended to STOP_LOG (``user instance-id allowed|denied``), so a test can
show what guardian never asked.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "123456789012"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
# create_user, put_user_policy, create_access_key: the administrator, made before IAM is on.
UNAUTHENTICATED_CALLS = 3
_TAG_KEY = "aws:ResourceTag/"
_VARIABLE = re.compile(r"\$\{([^}]+)\}")
# The IAM user tag that stands for "these are an instance role's credentials, on this instance".
SOURCE_INSTANCE_TAG = "SourceInstanceARN"


def _first(value: Any) -> str:
    return str(value[0] if isinstance(value, list) else value)


def _resolve(value: str, context: Mapping[str, str]) -> str | None:
    """``value`` with its policy variables (``${ec2:SourceInstanceARN}``) filled in from the
    request's context; None when one is not in it (AWS: such a value matches nothing)."""
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        known = context.get(match.group(1))
        missing = missing or known is None
        return known or ""

    filled = _VARIABLE.sub(fill, value)
    return None if missing else filled


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, str]) -> bool:
    """One condition on a key of ``context``, as AWS evaluates it (a key absent from the
    context is an absent key: ``Null`` true, ``StringEquals`` false, a negated operator true)."""
    values = [expected] if isinstance(expected, str) else list(expected)
    wanted = [v for v in (_resolve(str(value), context) for value in values) if v is not None]
    actual = context.get(key)
    if operator == "Null":
        return (actual is None) == (str(values[0]).lower() == "true")
    if operator == "StringEquals":
        return actual is not None and actual in wanted
    if operator == "StringNotEqualsIgnoreCase":
        return (actual or "").lower() not in {v.lower() for v in wanted}
    raise NotImplementedError(f"condition {operator} on {key} is not modelled here")


def _evaluated_here(key: str) -> bool:
    return key.startswith(_TAG_KEY) or key == "aws:ARN"


def _applies(statement: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    """Whether the statement's conditions on the keys modelled here hold (others: left to moto)."""
    for operator, checks in (statement.get("Condition") or {}).items():
        for key, expected in checks.items():
            if _evaluated_here(key) and not _condition_holds(operator, key, expected, context):
                return False
    return True


def stop_context(
    arn: str, tags: Mapping[str, str], source_instance_arn: str | None
) -> dict[str, str]:
    """The condition keys of one instance's StopInstances: its ARN (``aws:ARN``), its tags
    (``aws:ResourceTag/<key>``) and, for credentials an instance role delivered, that instance's
    ARN (``ec2:SourceInstanceARN``; a test user carries it as its ``SOURCE_INSTANCE_TAG``)."""
    context = {f"{_TAG_KEY}{key}": value for key, value in tags.items()}
    context["aws:ARN"] = arn
    if source_instance_arn is not None:
        context["ec2:SourceInstanceARN"] = source_instance_arn
    return context


def _authorize_stops_per_instance(stop_log: Path) -> None:
    from moto.ec2.models import ec2_backends
    from moto.iam import access_control

    check_action = access_control.IAMRequest.check_action_permitted
    lock = threading.Lock()

    def source_instance_arn(request: Any) -> str | None:
        key = request._access_key
        tags = key.backend.list_user_tags(key._owner_user_name)
        return next((t["Value"] for t in tags if t["Key"] == SOURCE_INSTANCE_TAG), None)

    def permitted(request: Any, arn: str, context: Mapping[str, str]) -> bool:
        # A statement whose condition fails does not apply (moto would call it a Deny, even
        # for an Allow); moto then matches what is left on Action, Resource and Effect.
        result = access_control.PermissionResult
        allowed = False
        for policy in request._access_key.collect_policies():
            document = access_control.IAMPolicy(policy)._policy_json
            statements = document["Statement"]
            statements = [statements] if isinstance(statements, dict) else statements
            # moto takes the conditions of the statements kept to hold: they did.
            kept = [s for s in statements if _applies(s, context)]
            answer = access_control.IAMPolicy(
                json.dumps({**document, "Statement": kept})
            ).is_action_permitted(request._action, arn)
            if answer == result.DENIED:
                return False
            allowed = allowed or answer == result.PERMITTED
        return allowed

    def check(self: Any, resource: str) -> None:
        # moto names CloudWatch's actions after its signing name, monitoring:; IAM's is cloudwatch:
        if self._action.startswith("monitoring:"):
            self._action = "cloudwatch:" + self._action.split(":", 1)[1]
        if self._action != "ec2:StopInstances":
            check_action(self, resource)
            return
        backend = ec2_backends[self.account_id][self._region]
        ids = [_first(v) for k, v in sorted(self._data.items()) if k.startswith("InstanceId.")]
        for instance_id in ids:
            instance = backend.get_instance(instance_id)
            tags = {t["key"]: t["value"] for t in instance.get_tags()}
            arn = instance_arn(self._region, instance_id)
            ok = permitted(self, arn, stop_context(arn, tags, source_instance_arn(self)))
            user = self._access_key.arn.rsplit("/", 1)[-1]
            with lock, stop_log.open("a") as log:
                log.write(f"{user} {instance_id} {'allowed' if ok else 'denied'}\n")
            if not ok:
                self._raise_access_denied()

    access_control.IAMRequest.check_action_permitted = check  # type: ignore[method-assign]


# -- the test side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    user: str
    access_key_id: str
    secret_access_key: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def client(self, endpoint_url: str, service: str, region: str = "us-east-1") -> Any:
        """A client with these keys (made once: a boto3 client costs ~0.1 s to build)."""
        return _client(self, endpoint_url, service, region)


@functools.cache
def _client(keys: Keys, endpoint_url: str, service: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,  # type: ignore[call-overload]
        region_name=region,
        # moto checks the signature over the body as it stores it, uncompressed: a gzipped
        # PutMetricData (botocore compresses those over 10 KiB) would never match.
        config=Config(disable_request_compression=True),
        endpoint_url=endpoint_url,
        aws_access_key_id=keys.access_key_id,
        aws_secret_access_key=keys.secret_access_key,
    )


@dataclass
class IamMoto:
    endpoint_url: str
    stop_log: Path
    admin: Keys

    def client(self, service: str, region: str = "us-east-1") -> Any:
        """A client with the administrator's keys, for seeding and reading back."""
        return self.admin.client(self.endpoint_url, service, region)

    def user(self, name: str, policy: Mapping[str, Any], *, on_instance: str | None = None) -> Keys:
        """A user whose only permissions are ``policy`` (an inline policy, as a role's would be);
        ``on_instance`` (an instance ARN): its keys stand for the instance role's on that
        instance, whose ARN is then the ``ec2:SourceInstanceARN`` of their StopInstances."""
        keys = _make_user(self.client("iam"), name, policy)
        if on_instance is not None:
            self.client("iam").tag_user(
                UserName=name, Tags=[{"Key": SOURCE_INSTANCE_TAG, "Value": on_instance}]
            )
        return keys

    def stops_asked(self) -> list[tuple[str, str, str]]:
        """Every StopInstances the server was asked for: (user, instance id, allowed|denied)."""
        if not self.stop_log.exists():
            return []
        lines = self.stop_log.read_text().splitlines()
        return [(u, i, d) for u, i, d in (line.split() for line in lines)]


def instance_arn(region: str, instance_id: str) -> str:
    return f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{instance_id}"


def _make_user(iam: Any, name: str, policy: Mapping[str, Any]) -> Keys:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="guardian", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Keys(name, key["AccessKeyId"], key["SecretAccessKey"])


@contextmanager
def iam_moto_server(workdir: Path, instance_types: list[str]) -> Iterator[IamMoto]:
    """Start the server (offering only ``instance_types``), make its administrator, stop it."""
    import boto3

    stop_log = workdir / "stops.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(UNAUTHENTICATED_CALLS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.moto_iam", str(stop_log), ",".join(instance_types)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://"), f"the IAM moto server did not start: {url!r}"
        unauthenticated = boto3.client(
            "iam",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id="AKIAUNAUTHENTICATED0",
            aws_secret_access_key="unused",
        )
        admin = _make_user(unauthenticated, "admin", ADMIN_POLICY)
        yield IamMoto(url, stop_log, admin)
    finally:
        process.kill()
        process.wait(timeout=10)


if __name__ == "__main__":
    from guardian.simulated.aws import start_moto_server
    from guardian.simulated.moto_speedups import offer_only

    if len(sys.argv) > 2 and sys.argv[2]:
        offer_only(set(sys.argv[2].split(",")))
    _authorize_stops_per_instance(Path(sys.argv[1]))
    _server, server_url = start_moto_server()
    print(server_url, flush=True)
    threading.Event().wait()

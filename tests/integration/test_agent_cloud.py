"""The agent on a (simulated) cloud instance: local HTTP fakes of IMDSv2 and of GCP's metadata
server, and autostop end to end against the moto server — the instance really gets stopped in
moto, a protected one does not."""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from guardian.agent.gpu.fake import ManualClock
from guardian.agent.metadata import MetadataUnavailable, aws_identity, detect_identity, gcp_identity
from guardian.agent.status import RunDir
from guardian.commands.agent import build_agent
from guardian.config import parse_config
from guardian.model import Lifecycle, Verdict
from guardian.policy import Step
from guardian.simulated.aws import launch_autoscaling_group, launch_gpu_instances
from tests.conftest import AwsWire
from tests.fakes.local_disks import FakeBlockTree, Usage

# -- local metadata servers ----------------------------------------------------------------------


class _Server:
    """A ThreadingHTTPServer on a free 127.0.0.1 port serving ``handle(method, path, headers)``."""

    def __init__(self) -> None:
        owner = self
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                length = int(headers.get("content-length") or 0)
                owner.bodies.append(self.rfile.read(length).decode() if length else "")
                owner.requests.append((self.command, self.path, headers))
                status, body, extra = owner.handle(self.command, self.path, headers)
                data = body.encode()
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, str, dict]:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeImds(_Server):
    """IMDSv2: a token from PUT /latest/api/token, required on every GET (401 without)."""

    TOKEN = "AQAEAFakeToken=="

    def __init__(
        self, document: Mapping[str, str], tags: Mapping[str, str] | None, lifecycle: str
    ) -> None:
        self.document, self.tags, self.lifecycle = dict(document), tags, lifecycle
        super().__init__()

    def handle(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, str, dict]:
        if path == "/latest/api/token":
            if method != "PUT" or "x-aws-ec2-metadata-token-ttl-seconds" not in headers:
                return 400, "", {}
            return 200, self.TOKEN, {}
        if headers.get("x-aws-ec2-metadata-token") != self.TOKEN:
            return 401, "", {}
        if path == "/latest/dynamic/instance-identity/document":
            return 200, json.dumps(self.document), {}
        if path == "/latest/meta-data/instance-life-cycle":
            return 200, self.lifecycle, {}
        prefix = "/latest/meta-data/tags/instance"
        if path.startswith(prefix) and self.tags is not None:
            key = unquote(path[len(prefix) :].lstrip("/"))
            if not key:
                return 200, "\n".join(self.tags), {}
            if key in self.tags:
                return 200, self.tags[key], {}
        return 404, "", {}


class FakeGcpMetadata(_Server):
    """The GCE metadata server: answers only with ``Metadata-Flavor: Google``, and says so."""

    def handle(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, str, dict]:
        flavor = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor") != "Google":
            return 403, "Missing Metadata-Flavor header", flavor
        if path == "/computeMetadata/v1/instance/?recursive=true":
            instance = {
                "id": 5017365123456789012,
                "name": "trainer-7",
                "zone": "projects/123456789/zones/us-central1-a",
                "machineType": "projects/123456789/machineTypes/g2-standard-8",
                "scheduling": {"preemptible": "FALSE", "provisioningModel": "SPOT"},
            }
            return 200, json.dumps(instance), flavor
        if path == "/computeMetadata/v1/project/project-id":
            return 200, "ml-sandbox", flavor
        return 404, "", flavor


DOCUMENT = {
    "accountId": "123456789012",
    "instanceId": "i-0abc1234def567890",
    "region": "us-east-1",
    "availabilityZone": "us-east-1b",
    "instanceType": "g5.xlarge",
}


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    server = FakeImds(DOCUMENT, {"Name": "trainer", "team": "ml"}, "spot")
    yield server
    server.close()


@pytest.fixture
def gce() -> Iterator[FakeGcpMetadata]:
    server = FakeGcpMetadata()
    yield server
    server.close()


def test_imdsv2_identity_and_tags(imds: FakeImds) -> None:
    identity = aws_identity(imds.url)
    assert (identity.provider, identity.account, identity.region, identity.zone) == (
        "aws",
        "123456789012",
        "us-east-1",
        "us-east-1b",
    )
    assert (identity.instance_id, identity.instance_type) == ("i-0abc1234def567890", "g5.xlarge")
    assert identity.lifecycle is Lifecycle.SPOT
    assert identity.tags == {"Name": "trainer", "team": "ml"}
    methods = [(m, p) for m, p, _ in imds.requests]
    assert methods[0] == ("PUT", "/latest/api/token")  # v2: a token before anything else
    assert all(h.get("x-aws-ec2-metadata-token") == FakeImds.TOKEN for _, _, h in imds.requests[1:])


def test_imds_without_instance_tags_leaves_tags_unknown() -> None:
    server = FakeImds(DOCUMENT, None, "on-demand")
    try:
        identity = aws_identity(server.url)
    finally:
        server.close()
    assert identity.tags is None
    assert identity.lifecycle is Lifecycle.ON_DEMAND


def test_gcp_metadata_identity(gce: FakeGcpMetadata) -> None:
    identity = gcp_identity(gce.url)
    assert identity.provider == "gcp"
    assert (identity.account, identity.zone, identity.region) == (
        "ml-sandbox",
        "us-central1-a",
        "us-central1",
    )
    assert (identity.instance_id, identity.name, identity.instance_type) == (
        "5017365123456789012",
        "trainer-7",
        "g2-standard-8",
    )
    assert identity.lifecycle is Lifecycle.SPOT
    assert all(h.get("metadata-flavor") == "Google" for _, _, h in gce.requests)


def test_detect_uses_the_endpoint_env_vars(
    monkeypatch: pytest.MonkeyPatch, gce: FakeGcpMetadata
) -> None:
    closed = _closed_port_url()
    monkeypatch.setenv("GUARDIAN_IMDS_ENDPOINT", closed)
    monkeypatch.setenv("GUARDIAN_GCP_METADATA_ENDPOINT", gce.url)
    assert detect_identity().provider == "gcp"  # AWS refused, GCP answered
    with pytest.raises(MetadataUnavailable, match="no AWS instance metadata"):
        detect_identity("aws")


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_off_cloud_is_one_line_and_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # A listener that accepts connections and never answers: the short timeout must hold.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        monkeypatch.setenv("GUARDIAN_IMDS_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("GUARDIAN_GCP_METADATA_ENDPOINT", _closed_port_url())
        started = time.monotonic()
        with pytest.raises(MetadataUnavailable) as caught:
            detect_identity(timeout_s=0.3)
        assert time.monotonic() - started < 3
    finally:
        silent.close()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cannot tell which cloud instance this is")
    assert "autostop and publishing need a cloud instance" in message


def test_a_gcp_lookalike_without_the_flavor_header_is_refused() -> None:
    class Impostor(_Server):
        def handle(
            self, method: str, path: str, headers: Mapping[str, str]
        ) -> tuple[int, str, dict]:
            return 200, "{}", {}

    server = Impostor()
    try:
        with pytest.raises(MetadataUnavailable, match="no GCP metadata server"):
            gcp_identity(server.url)
    finally:
        server.close()


# -- autostop end to end on moto -----------------------------------------------------------------


class Receiver(_Server):
    """A chat webhook: apprise's json:// posts land here (in ``bodies``)."""

    def handle(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, str, dict]:
        return 200, "ok", {}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _wall(tmp_path: Path) -> tuple[tuple[str, ...], Path]:
    log = tmp_path / "wall.log"
    script = tmp_path / "fake-wall"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{log}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return (str(script),), log


def _launch(moto_server: Any, tags: Mapping[str, str], instance_type: str) -> str:
    ec2 = moto_server.client("ec2")
    [instance_id] = launch_gpu_instances(ec2, instance_type, tags=tags, zone="us-east-1a")
    return instance_id


def _state(moto_server: Any, instance_id: str) -> str:
    ec2 = moto_server.client("ec2")
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def _run_agent(
    moto_server: Any,
    *,
    aws_gpu_catalog: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
    tags: Mapping[str, str],
    minutes: int,
    # g5g is the one GPU family moto describes without instance-store volumes.
    instance_type: str = "g5g.xlarge",
    disks: FakeBlockTree | None = None,
    wire: AwsWire | None = None,
    instance_id: str | None = None,
) -> tuple[str, list[Any], Path]:
    instance_id = instance_id or _launch(moto_server, tags, instance_type)
    server = FakeImds(
        {**DOCUMENT, "instanceId": instance_id, "availabilityZone": "us-east-1a"}, None, "on-demand"
    )
    monkeypatch.setenv("GUARDIAN_IMDS_ENDPOINT", server.url)
    wall, wall_log = _wall(tmp_path)
    config = parse_config(
        {
            "agent": {"interval": "30s", "listen": "", "autostop": True, "publish": "cloudwatch"},
            "idle": {"window_released": "10m", "grace": "5m"},
            "notify": {"urls": [f"json://127.0.0.1:{receiver.url.rsplit(':', 1)[1]}/hook"]},
        }
    )
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30))
    agent, providers = build_agent(
        config,
        backend="fake:idle",
        run_dir=RunDir(tmp_path / "run"),
        clock=clock,
        wall=wall,
        launch_time=clock.now() - timedelta(hours=1),
        provider_options={"catalog": aws_gpu_catalog}
        | ({"session": wire.session} if wire is not None else {}),
        local_disks=(disks or FakeBlockTree(tmp_path / "machine")).probe(),
    )
    results = []
    try:
        for _ in range(minutes * 2):
            results.append(agent.poll())
            clock.advance(30)
    finally:
        agent.close()
        for provider in providers:
            provider.close()
        server.close()
    return instance_id, results, wall_log


def test_autostop_stops_the_idle_instance_in_moto(  # noqa: PLR0917 - pytest parameters
    moto_server: Any,
    aws_gpu_catalog: Any,
    aws_wire: AwsWire,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    instance_id, results, wall_log = _run_agent(
        moto_server,
        aws_gpu_catalog=aws_gpu_catalog,
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
        receiver=receiver,
        tags={"Name": "trainer"},
        minutes=20,
        wire=aws_wire,
    )
    # It re-read its own instance (one DescribeInstances every 5 minutes and before the stop),
    # never a region's discovery: no DescribeInstanceTypeOfferings, no filtered listing.
    ec2_calls = sorted(c.operation for c in aws_wire.calls if c.operation.startswith("ec2:"))
    describes = [c for c in aws_wire.calls if c.operation == "ec2:DescribeInstances"]
    assert all(c.params == {"InstanceIds": [instance_id]} for c in describes)
    assert ec2_calls == ["ec2:DescribeInstances"] * 5 + ["ec2:StopInstances"]
    steps = [(r.autostop.step, r.snapshot.sampled_at) for r in results if r.autostop]
    warned = next(at for step, at in steps if step is Step.WARN)
    stopped = next(at for step, at in steps if step is Step.STOP)
    assert stopped - warned == timedelta(minutes=5)
    assert _state(moto_server, instance_id) in ("stopping", "stopped")
    assert results[-1].autostop is not None
    assert results[-1].autostop.stopped
    assert results[0].snapshot.gpus  # measured from the first poll
    # Everyone was told: the chat channel (through apprise) and the logged-in users (wall).
    bodies = [json.loads(b) for b in receiver.bodies]
    assert [b["title"].split(": ", 1)[1] for b in bodies] == [
        "idle, stopping at " + (warned + timedelta(minutes=5)).strftime("%H:%M UTC"),
        "stopping now",
    ]
    assert all(instance_id in b["title"] for b in bodies)
    assert "stopping now" in wall_log.read_text()
    # ...and its GPU metrics reached CloudWatch in the CloudWatch agent's schema.
    listed = moto_server.client("cloudwatch").list_metrics(
        Namespace="CWAgent",
        MetricName="nvidia_smi_utilization_gpu",
        Dimensions=[{"Name": "InstanceId", "Value": instance_id}],
    )
    assert listed["Metrics"]


def test_autostop_leaves_a_protected_instance_running(
    moto_server: Any,
    aws_gpu_catalog: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    instance_id, results, wall_log = _run_agent(
        moto_server,
        aws_gpu_catalog=aws_gpu_catalog,
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
        receiver=receiver,
        tags={"Name": "keeper", "guardian:protect": "true"},
        minutes=20,
    )
    assert {r.decision.verdict for r in results} == {Verdict.PROTECTED}
    assert all(r.autostop is not None and r.autostop.step is Step.NONE for r in results)
    assert _state(moto_server, instance_id) == "running"
    assert not wall_log.exists()


@pytest.mark.parametrize("used_gib", [40.0, 0.0])
def test_autostop_measures_and_publishes_its_instance_store(  # noqa: PLR0917 - pytest parameters
    moto_server: Any,
    aws_gpu_catalog: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
    used_gib: float,
) -> None:
    disks = FakeBlockTree(tmp_path / "machine")
    disks.disk("nvme1n1")  # the g5.xlarge's 250 GB NVMe instance store
    if used_gib:
        disks.mount("/dev/nvme1n1", "/scratch", "ext4", Usage(232_000, used_gib * 1024, 10**6, 90))
    instance_id, results, _ = _run_agent(
        moto_server,
        aws_gpu_catalog=aws_gpu_catalog,
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
        receiver=receiver,
        tags={},
        minutes=20,
        instance_type="g5.xlarge",
        disks=disks,
    )
    titles = [json.loads(b)["title"] for b in receiver.bodies]
    if used_gib:
        assert _state(moto_server, instance_id) == "running"
        messages = {r.autostop.message for r in results if r.autostop}
        assert any("40.0 GiB in use on its local disks" in (m or "") for m in messages)
        assert sum("idle, not stopping" in t for t in titles) == 1
    else:
        assert _state(moto_server, instance_id) in ("stopping", "stopped")
    # Published beside the GPU metrics, for the daemon: exactly {InstanceId}, in MiB.
    cloudwatch = moto_server.client("cloudwatch")
    listed = cloudwatch.list_metrics(Namespace="CWAgent", MetricName="guardian_local_disk_used")
    assert {tuple((d["Name"], d["Value"]) for d in m["Dimensions"]) for m in listed["Metrics"]} == {
        (("InstanceId", instance_id),)
    }
    stats = cloudwatch.get_metric_statistics(
        Namespace="CWAgent",
        MetricName="guardian_local_disk_used",
        Dimensions=[{"Name": "InstanceId", "Value": instance_id}],
        StartTime=datetime.now(UTC) - timedelta(hours=2),
        EndTime=datetime.now(UTC) + timedelta(minutes=5),
        Period=3600,
        Statistics=["Maximum"],
    )
    assert {p["Maximum"] for p in stats["Datapoints"]} == {used_gib * 1024}


def test_an_agent_on_an_auto_scaling_member_never_stops_its_machine(
    moto_server: Any,
    aws_gpu_catalog: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: Receiver,
) -> None:
    ec2, autoscaling = moto_server.client("ec2"), moto_server.client("autoscaling")
    [member] = launch_autoscaling_group(
        ec2, autoscaling, "gpu-pool", "g5g.xlarge", min_size=0, desired=1, max_size=2,
        zone="us-east-1a",
    )  # fmt: skip
    _, results, _ = _run_agent(
        moto_server,
        aws_gpu_catalog=aws_gpu_catalog,
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
        receiver=receiver,
        tags={},
        minutes=20,
        instance_id=member,
    )
    assert _state(moto_server, member) == "running"
    titles = [json.loads(b)["title"] for b in receiver.bodies]
    assert sum("idle, not stopping" in t for t in titles) == 1
    messages = {r.autostop.message for r in results if r.autostop and r.autostop.message}
    assert any("managed by Auto Scaling group gpu-pool" in m for m in messages)

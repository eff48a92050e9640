"""Probes against istiod_lite's delta xDS on 15012 (a real ControlPlane, gRPC over mTLS on 127.0.0.1).

Each test replays a probe that once broke the server:
- streams whose client process is killed (kill -9) or closes them all at once stayed registered for good
  (in ``pilot_xds``, ``/debug/syncz``, and "xds streams still open after close" at shutdown);
- raw bytes that are not a DeltaDiscoveryRequest ended the stream with OK, unlogged and uncounted;
- one request subscribing 200,000 unknown names got a 13.4 MB reply.
The stream tests open many streams (one TLS connection each) from a separate Python process; every wait
is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import structlog.testing

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from istiod_lite.push import StreamLimits
from meshcore.model.convert import ADDRESS_TYPE_URL
from meshcore.proto import discovery_pb2, discovery_pb2_grpc
from meshcore.tls.contexts import channel_credentials, channel_options

REPO = Path(__file__).resolve().parents[2]
STREAMS = 1000
DEADLINE = 30.0
DELTA_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

# Opens N delta-ADS streams, one TLS connection each, waits for every first response, prints "ready";
# then either closes them all at once when a line arrives on stdin ("close") or waits to be killed ("hold").
OPENER = textwrap.dedent(
    """
    import asyncio, pathlib, resource, sys
    import grpc
    from meshcore.model.convert import ADDRESS_TYPE_URL
    from meshcore.proto import discovery_pb2, discovery_pb2_grpc
    from meshcore.tls.contexts import channel_credentials, channel_options

    async def main(target, n, mode, cred_dir):
        d = pathlib.Path(cred_dir)
        creds = channel_credentials(
            (d / "root-cert.pem").read_text(), (d / "key.pem").read_text(), (d / "cert-chain.pem").read_text()
        )
        channels = [grpc.aio.secure_channel(target, creds, options=channel_options()) for _ in range(n)]
        calls = []
        for i, channel in enumerate(channels):
            call = discovery_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE_URL)
            request.node.id = f"ztunnel~10.0.{i // 250}.{i % 250 + 1}~zt-{i}.istio-system~istio-system.svc.cluster.local"
            await call.write(request)
            calls.append(call)
        await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 60)
        print("ready", flush=True)
        if mode == "close":
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            for c in calls:
                c.cancel()
            await asyncio.gather(*(c.close() for c in channels))
            print("closed", flush=True)
            return
        await asyncio.sleep(600)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * int(sys.argv[2]) + 256)), hard))
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
    """
)


class Plane:
    def __init__(self, cp: ControlPlane, cred_dir: Path) -> None:
        self.cp = cp
        self.cred_dir = cred_dir
        self.target = f"127.0.0.1:{cp.xds_port}"

    def metric(self, name: str, **labels: str) -> float:
        return self.cp.metrics.get_sample_value(name, labels) or 0.0

    def channel(self) -> grpc.aio.Channel:
        d = self.cred_dir
        creds = channel_credentials(
            (d / "root-cert.pem").read_text(), (d / "key.pem").read_text(), (d / "cert-chain.pem").read_text()
        )
        return grpc.aio.secure_channel(self.target, creds, options=channel_options())

    async def syncz(self) -> list[dict]:
        url = f"http://127.0.0.1:{self.cp.monitoring_port}/debug/syncz"

        def fetch() -> list[dict]:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())

        return await asyncio.to_thread(fetch)


@pytest.fixture
def fd_room():
    """1000 TLS connections need ~2000 fds in this process (server side plus grpc's own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * STREAMS + 256)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
async def plane(tmp_path: Path, fd_room) -> AsyncIterator[Plane]:
    state = tmp_path / "state"
    state.mkdir()
    cp = ControlPlane(
        IstiodConfig(
            state_dir=state, xds_host="127.0.0.1", xds_port=0, monitoring_host="127.0.0.1", monitoring_port=0
        )
    )
    await cp.start()
    cred = cp.ca.issue_node_credential("node-1", datetime.now(UTC))
    cred_dir = tmp_path / "cred"
    cred_dir.mkdir()
    (cred_dir / "key.pem").write_text(cred.key_pem)
    (cred_dir / "cert-chain.pem").write_text("".join(cred.chain_pem))
    (cred_dir / "root-cert.pem").write_text(cred.roots_pem)
    try:
        yield Plane(cp, cred_dir)
    finally:
        await cp.stop(grace=0)


async def poll(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline}s: {what}")
        await asyncio.sleep(0.05)


async def open_streams(plane: Plane, mode: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OPENER, plane.target, str(STREAMS), mode, str(plane.cred_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line.strip() == b"ready", f"opener did not get its streams up: {line!r} (exit {proc.returncode})"
        await poll(lambda: plane.cp.push.connected == STREAMS, f"{STREAMS} streams registered")
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


@pytest.mark.parametrize("mode", ["kill", "close"], ids=["a client killed with open streams", "a client closing all its streams"])
async def test_every_stream_of_a_vanished_client_is_unregistered(plane: Plane, mode: str) -> None:
    proc = await open_streams(plane, "hold" if mode == "kill" else "close")
    assert plane.metric("pilot_xds") == STREAMS
    try:
        if mode == "kill":
            proc.send_signal(signal.SIGKILL)
        else:
            assert proc.stdin is not None
            proc.stdin.write(b"close\n")
            await proc.stdin.drain()
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    await poll(
        lambda: plane.cp.push.connected == 0 and plane.metric("pilot_xds") == 0,
        f"streams still registered: {plane.cp.push.connected}, pilot_xds {plane.metric('pilot_xds')}",
    )
    assert await plane.syncz() == []
    with structlog.testing.capture_logs() as logs:
        await plane.cp.push.close()
    assert [e for e in logs if e["event"] == "xds streams still open after close"] == []


async def test_bytes_that_are_not_a_request_end_the_stream_with_invalid_argument(plane: Plane) -> None:
    async with plane.channel() as channel:
        call = channel.stream_stream(DELTA_ADS)()
        with structlog.testing.capture_logs() as logs:
            await call.write(b"\xff\xff\xff\xff not a protobuf message")
            assert await asyncio.wait_for(call.code(), DEADLINE) == grpc.StatusCode.INVALID_ARGUMENT
        details = await call.details()
    assert "not a protobuf DeltaDiscoveryRequest" in details
    assert plane.metric("istiod_lite_xds_invalid_requests_total", reason="UndecodableRequestError") == 1
    [warning] = [e for e in logs if e["event"] == "xds request rejected, ending stream"]
    assert warning["log_level"] == "warning" and warning["reason"] == "UndecodableRequestError"
    await poll(lambda: plane.cp.push.connected == 0, "the rejected stream is unregistered")


async def test_a_request_with_200k_unknown_names_is_refused_naming_the_limit(plane: Plane) -> None:
    limit = StreamLimits().max_names_per_request
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=ADDRESS_TYPE_URL, resource_names_subscribe=[f"nope/{i:06d}" for i in range(200_000)]
    )
    request.node.id = "ztunnel~10.0.0.1~zt.istio-system~istio-system.svc.cluster.local"
    assert request.ByteSize() < 4 * 1024 * 1024  # under the message cap: this is the names limit at work
    async with plane.channel() as channel:
        call = discovery_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await call.write(request)
        assert await asyncio.wait_for(call.code(), DEADLINE) == grpc.StatusCode.INVALID_ARGUMENT
        details = await call.details()
    assert "lists 200000 resource names" in details and f"at most {limit} per request" in details
    assert plane.metric("istiod_lite_xds_invalid_requests_total", reason="TooManyNamesError") == 1
    assert plane.metric("pilot_xds_pushes_total", type="wds") == 0  # no reply of any size was sent


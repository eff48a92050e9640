"""A ztunnel's life around the data path: local config file, operator endpoints over HTTP, plaintext
inbound, certificates late, workloads leaving, graceful drain and SIGTERM-style shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from meshcore.model.convert import ADDRESS_TYPE_URL
from meshcore.testing.fake_ca import FakeCa
from ztunnel.app import StartupError, Ztunnel
from ztunnel.proxy.listeners import DRAIN_CLOSE_MESSAGE
from ztunnel.proxy.local_config import load_local_config
from ztunnel.testing import loopback_block, make_config, socks5_connect

MESH = """
workloads:
- {{name: client, serviceAccount: client, workloadIps: [{client}], node: node-1}}
- {{name: server, serviceAccount: server, workloadIps: [{server}], node: {server_node}}}
policies:
- name: strict-mtls
  namespace: default
  scope: Namespace
  action: Deny
  rules: [[[{{notPrincipals: ["*"], destinationPorts: [{deny_port}]}}]]]
"""


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


@dataclass
class One:
    """One ztunnel serving both workloads (same node) from a local config file."""

    zt: Ztunnel
    client_ip: str
    server_ip: str
    port: int  # echo app on the server workload
    deny_port: int  # a second app port that plaintext clients may not reach
    path: Path


@pytest.fixture
def logs():
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
async def one(tmp_path: Path, logs) -> AsyncIterator[One]:
    net = loopback_block()
    client_ip, server_ip = net + "11", net + "12"
    app = await asyncio.start_server(echo, server_ip, 0)
    other = await asyncio.start_server(echo, server_ip, 0)
    port, deny_port = app.sockets[0].getsockname()[1], other.sockets[0].getsockname()[1]
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH.format(client=client_ip, server=server_ip, deny_port=deny_port, server_node="node-1"))
    zt = Ztunnel(make_config("node-1", net + "1", local_xds_path=path, fake_ca=True, inbound_plaintext_target_port=port))
    try:
        await zt.start()
        await zt.wait_ready(10)
        yield One(zt, client_ip, server_ip, port, deny_port, path)
    finally:
        await zt.stop()
        app.close()
        other.close()


async def http(address: tuple[str, int], method: str, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def connect(one: One, port: int | None = None):
    assert one.zt.socks5 is not None
    return await socks5_connect(tuple(one.zt.socks5.address), one.client_ip, one.server_ip, port or one.port)


async def test_operator_endpoints_answer_over_http(one: One):
    assert await http(one.zt.readiness_address, "GET", "/healthz/ready") == (200, b"ready\n")
    reader, writer = await connect(one)
    writer.write(b"hold")
    assert await reader.readexactly(4) == b"hold"
    status, body = await http(one.zt.admin_address, "GET", "/connections")
    conns = json.loads(body)
    assert status == 200 and {(c["direction"], c["protocol"]) for c in conns} == {("outbound", "HBONE"), ("inbound", "HBONE")}
    inbound = next(c for c in conns if c["direction"] == "inbound")
    assert inbound["target"] == f"{one.server_ip}:{one.port}" and inbound["identity"].endswith("/sa/client")
    status, body = await http(one.zt.admin_address, "GET", "/config_dump")
    dump = json.loads(body)
    assert {w["name"] for w in dump["workloads"]} == {"client", "server"}
    assert {c["identity"].rsplit("/", 1)[1] for c in dump["certificates"]} == {"client", "server"}
    assert all(c["state"] == "Available" for c in dump["certificates"])
    server_uid = "Kubernetes//Pod/default/server"
    assert dump["workloadState"][server_uid]["state"] == "Up"
    assert dump["workloadState"][server_uid]["connections"]["inbound"][0]["actualDst"] == f"{one.server_ip}:{one.port}"
    assert await http(one.zt.admin_address, "POST", "/logging?level=debug") == (200, b'{\n  "level": "debug"\n}\n')
    status, body = await http(one.zt.stats_address, "GET", "/stats/prometheus")
    assert status == 200 and b'istio_tcp_connections_open{direction="inbound"} 1.0' in body
    assert b"istio_tcp_received_bytes_total" in body
    writer.close()


async def test_plaintext_inbound_applies_policy_without_identity(one: One, logs):
    reader, writer = await asyncio.open_connection(one.server_ip, 15006)
    writer.write(b"plain")
    writer.write_eof()
    assert await reader.read() == b"plain"
    writer.close()
    await one.zt.stop()  # flush access logs deterministically
    done = [e for e in logs if e.get("event") == "connection complete" and e.get("direction") == "inbound"]
    assert done and "src.identity" not in done[0] and done[0]["dst.addr"] == f"{one.server_ip}:{one.port}"


async def test_plaintext_denied_by_a_strict_policy_is_reset(tmp_path: Path, logs):
    net = loopback_block()
    client_ip, server_ip = net + "11", net + "12"
    app = await asyncio.start_server(echo, server_ip, 0)
    port = app.sockets[0].getsockname()[1]
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH.format(client=client_ip, server=server_ip, deny_port=port, server_node="node-1"))
    zt = Ztunnel(make_config("node-1", None, local_xds_path=path, fake_ca=True, inbound_plaintext_target_port=port))
    try:
        await zt.start()
        await zt.wait_ready(10)
        reader, writer = await asyncio.open_connection(server_ip, 15006)
        writer.write(b"let me in")
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
        writer.close()
        denied = [e for e in logs if e.get("event") == "connection complete" and "explicitly denied" in e.get("error", "")]
        assert denied and denied[0]["policy"] == "default/strict-mtls"
    finally:
        await zt.stop()
        app.close()


async def test_drain_lets_short_connections_finish_and_closes_long_ones_at_the_deadline(one: One, logs):
    long_reader, long_writer = await connect(one)
    long_writer.write(b"long")
    assert await long_reader.readexactly(4) == b"long"
    short_reader, short_writer = await connect(one)
    loop = asyncio.get_running_loop()
    started = loop.time()
    draining = asyncio.create_task(one.zt.drain(started + 0.4))
    short_writer.write(b"short")
    short_writer.write_eof()
    assert await short_reader.read() == b"short"  # finishes normally while draining
    short_writer.close()
    await draining
    assert 0.35 <= loop.time() - started < 3
    with contextlib.suppress(ConnectionError):
        while await long_reader.read(65536):
            pass
    long_writer.close()
    done = [e for e in logs if e.get("event") == "connection complete"]
    assert sum(1 for e in done if "error" not in e) == 2  # the short one, both directions
    [inbound] = [e for e in done if e.get("error") and e["direction"] == "inbound"]
    assert inbound["error"] == DRAIN_CLOSE_MESSAGE
    assert [e["direction"] for e in done if e.get("error")].count("outbound") == 1
    with pytest.raises(OSError):  # the SOCKS5 listener no longer accepts
        await connect(one)


async def test_a_workload_leaving_the_node_has_its_listener_drained_and_its_certificate_forgotten(one: One):
    one.path.write_text(MESH.format(client=one.client_ip, server=one.server_ip, deny_port=1, server_node="node-9"))
    one.zt.cell.publish(load_local_config(one.path))  # what a config push of the same change would do
    async with asyncio.timeout(5):
        while "Kubernetes//Pod/default/server" in one.zt.manager.statuses() or len(one.zt.secrets.identities) != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(one.server_ip, 15008), 2)


async def test_readiness_reports_missing_certificates_until_the_ca_answers(tmp_path: Path):
    net = loopback_block()
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH.format(client=net + "11", server=net + "12", deny_port=1, server_node="node-1"))
    ca = FakeCa()
    gate = asyncio.Event()
    fetch = ca.fetch

    async def slow_fetch(identity):
        await gate.wait()
        return await fetch(identity)

    ca.fetch = slow_fetch  # the CA is slow to answer: a boundary, not our code
    zt = Ztunnel(make_config("node-1", None, local_xds_path=path), ca=ca)
    try:
        await zt.start()
        status, body = await http(zt.readiness_address, "GET", "/healthz/ready")
        assert status == 503 and b"certificates for spiffe://cluster.local/ns/default/sa/" in body
        gate.set()
        await zt.wait_ready(10)
        assert (await http(zt.readiness_address, "GET", "/healthz/ready"))[0] == 200
    finally:
        await zt.stop()


async def test_a_bad_local_config_stops_startup_with_the_problem_named(tmp_path: Path):
    path = tmp_path / "mesh.yaml"
    path.write_text("workloads: [{name: x, workloadIps: [not-an-ip]}]")
    zt = Ztunnel(make_config("node-1", None, local_xds_path=path, fake_ca=True))
    with pytest.raises(StartupError, match="not-an-ip"):
        await zt.start()


async def test_xds_config_from_a_fake_control_plane_makes_the_node_ready(logs):
    from meshcore.aio.xds_client import XdsClient
    from meshcore.testing import builders as b
    from meshcore.testing.fake_xds import FakeXdsServer

    ip = loopback_block() + "12"
    async with FakeXdsServer() as xds:
        wl = b.workload("server", ip, node="node-2")
        await xds.push(ADDRESS_TYPE_URL, {wl.uid: wl})
        zt = Ztunnel(make_config("node-2", None), ca=FakeCa(),
                     xds=lambda cell: XdsClient(xds.address, None, "ztunnel~node-2", {"NODE_NAME": "node-2"}, cell))
        try:
            await zt.start()
            await zt.wait_ready(10)
            assert zt.manager.statuses()[wl.uid].state == "Up"
        finally:
            await zt.stop()


async def test_the_ztunnel_process_becomes_ready_and_drains_on_sigterm(tmp_path: Path):
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    net = loopback_block()
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH.format(client=net + "11", server=net + "12", deny_port=1, server_node="node-1"))
    ready_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("XDS_", "CA_"))},
        "NODE_NAME": "node-1", "LOCAL_XDS_PATH": str(path), "FAKE_CA": "true", "ADMIN_ADDR": "127.0.0.1:0",
        "STATS_ADDR": "127.0.0.1:0", "READINESS_ADDR": f"127.0.0.1:{ready_port}", "SOCKS5_ADDR": f"{net}1:0",
        "DRAIN_DURATION": "200ms", "LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ztunnel", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(20):
            while True:
                with contextlib.suppress(OSError):
                    if (await http(("127.0.0.1", ready_port), "GET", "/healthz/ready"))[0] == 200:
                        break
                assert proc.returncode is None, "ztunnel exited before becoming ready"
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        assert [e["event"] for e in lines if e["event"] in ("draining", "ztunnel stopped")] == ["draining", "ztunnel stopped"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_bad_setting_stops_the_process_with_one_line_and_exit_code_2():
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ztunnel", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2 and err.decode().startswith("ztunnel: NODE_NAME: not set")

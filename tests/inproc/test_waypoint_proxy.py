"""The waypoint process in one event loop: a scripted xDS server feeds it, a fake CA signs every identity,
two "destination ztunnels" (real mTLS HBONE listeners on 127.0.55.x:15008) front HTTP backends, and a
client opens HBONE to the waypoint as a source ztunnel would, then speaks HTTP inside the tunnel.

Covers: allowed and denied requests (403 ``RBAC: access denied``), per-request balancing across two
endpoints on one keep-alive connection, the destination seeing the waypoint's identity, Istio's request
metrics with ``reporter="waypoint"``, and a policy change taking effect without reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from meshcore.aio.hbone_server import serve_hbone
from meshcore.aio.xds_client import XdsClient
from meshcore.identity import SpiffeId
from meshcore.model import Port
from meshcore.model.authorization import StringMatch
from meshcore.model.convert import ADDRESS_TYPE_URL
from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL, l7_authorization_to_proto
from meshcore.model.l7 import L7Action, L7Authorization, L7Operation, L7Rule, L7Target, PathMatch
from meshcore.testing import builders
from meshcore.testing.fake_ca import FakeCa
from meshcore.testing.fake_xds import FakeXdsServer
from meshcore.testing.waypoint_mesh import DestinationZtunnel, HttpOverHbone
from meshcore.tls.contexts import server_context
from meshcore.tls.verify import verify_peer
from waypoint.app import Waypoint
from waypoint.config import WaypointConfig
from waypoint.state import WAYPOINT_KINDS

pytestmark = pytest.mark.inproc

TD = "cluster.local"
WAYPOINT_ID = SpiffeId(TD, "default", "echo-waypoint")
CLIENT_ID = SpiffeId(TD, "default", "sleep")
ECHO_ID = SpiffeId(TD, "default", "echo")
BACKENDS = ("127.0.55.2", "127.0.55.3")
VIP = "10.96.55.10"
PORTS = {"default/echo.default.svc.cluster.local": (Port(service_port=80, target_port=8080),)}


async def _http_backend(host: str) -> asyncio.Server:
    """A keep-alive HTTP/1.1 server answering every request with its own address."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                answer = json.dumps({"backend": host, "request": head.split(b"\r\n", 1)[0].decode(),
                                     "body": body.decode()}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(answer)).encode() + b"\r\n\r\n" + answer)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, host, 8080)


def _allow_get(path: str = "/") -> L7Authorization:
    op = L7Operation(methods=(StringMatch("exact", "GET"),), paths=(PathMatch("exact", path),))
    return L7Authorization("allow-get", "default", L7Action.ALLOW,
                           targets=(L7Target("service", "echo.default.svc.cluster.local"),),
                           rules=(L7Rule(operations=(op,)),))


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[Waypoint, FakeXdsServer, DestinationZtunnel, FakeCa]]:
    ca = FakeCa()
    dest = DestinationZtunnel()
    servers = [await _http_backend(h) for h in BACKENDS]
    hbone = [
        await serve_hbone(h, 15008, server_context(ca.issue(ECHO_ID)),
                          lambda der: verify_peer(der, trust_domain=TD), dest.on_tunnel)
        for h in BACKENDS
    ]
    xds = FakeXdsServer()
    await xds.start()
    workloads = {
        f"Kubernetes//Pod/default/echo-{i}": builders.workload(f"echo-{i}", ip, service_account="echo", services=PORTS)
        for i, ip in enumerate(BACKENDS)
    }
    workloads["Kubernetes//Pod/default/sleep"] = builders.workload("sleep", "127.0.0.1")
    await xds.push(ADDRESS_TYPE_URL, {**workloads, "default/echo.default.svc.cluster.local":
                                      builders.service("echo", VIP, ports={80: 8080})})
    await xds.push(L7_AUTHORIZATION_TYPE_URL, {})
    config = WaypointConfig(
        pod_name="echo-waypoint-0", namespace="default", service_account="echo-waypoint",
        gateway_name="echo-waypoint", pod_ip="127.0.55.1", hbone_port=0, xds_address=None, ca_address=None,
        admin_addr=_hp("127.0.0.1", 0), stats_addr=_hp("127.0.0.1", 0), readiness_addr=_hp("127.0.0.1", 0),
    )
    waypoint = Waypoint(
        config, ca=ca,
        xds=lambda cell: XdsClient(xds.address, None, "router~127.0.55.1~wp.default~default.svc.cluster.local",
                                   {}, cell, kinds=WAYPOINT_KINDS),
    )
    await waypoint.start()
    try:
        await waypoint.wait_ready(10)
        yield waypoint, xds, dest, ca
    finally:
        await waypoint.stop()
        await xds.stop()
        for s in hbone:
            await s.aclose()
        for s in servers:
            s.close()


def _hp(host: str, port: int):
    from meshcore.config import HostPort

    return HostPort(host, port)


async def test_requests_on_one_connection_are_balanced_and_reach_backends_as_the_waypoint(mesh):
    waypoint, _, dest, ca = mesh
    conn = await _open(waypoint, ca)
    try:
        seen = []
        for _ in range(4):
            status, _, body = await conn.request("GET", "/")
            assert status == 200
            seen.append(json.loads(body)["backend"])
        assert sorted(set(seen)) == sorted(BACKENDS)  # one keep-alive downstream, both endpoints
        assert seen[0] != seen[1]
    finally:
        await conn.close()
    assert dest.peers and set(dest.peers) == {WAYPOINT_ID}  # the destination sees the waypoint's identity


async def test_a_policy_allows_get_and_denies_post_with_403_and_metrics_show_both(mesh):
    waypoint, xds, _, ca = mesh
    await xds.push(L7_AUTHORIZATION_TYPE_URL,
                   {"default/allow-get": l7_authorization_to_proto(_allow_get()).SerializeToString()})
    await waypoint.cell.wait_for(lambda state: bool(state.l7_policies), timeout=10)
    conn = await _open(waypoint, ca)
    try:
        assert (await conn.request("GET", "/"))[0] == 200
        status, _, body = await conn.request("POST", "/", b"data")
        assert (status, body) == (403, b"RBAC: access denied")
        assert (await conn.request("GET", "/"))[0] == 200  # the connection serves on after a denial
    finally:
        await conn.close()
    text = (await _get(waypoint.stats_address, "/metrics")).decode()
    lines = [x for x in text.splitlines() if x.startswith("istio_requests_total{")]
    assert any('response_code="403"' in x and 'reporter="waypoint"' in x for x in lines), lines
    assert any('response_code="200"' in x and 'destination_service="echo.default.svc.cluster.local"' in x
               and f'source_principal="{CLIENT_ID}"' in x for x in lines), lines


async def test_admin_config_dump_shows_the_l7_policies_and_the_certificate(mesh):
    waypoint, xds, _, _ = mesh
    await xds.push(L7_AUTHORIZATION_TYPE_URL,
                   {"default/allow-get": l7_authorization_to_proto(_allow_get()).SerializeToString()})
    await waypoint.cell.wait_for(lambda state: bool(state.l7_policies), timeout=10)
    dump = json.loads(await _get(waypoint.admin_address, "/config_dump"))
    assert dump["gateway"] == "default/echo-waypoint"
    assert [p["name"] for p in dump["l7Policies"]] == ["allow-get"]
    assert dump["certificates"] and dump["identity"] == str(WAYPOINT_ID)
    ready = await _get(waypoint.readiness_address, "/healthz/ready")
    assert ready.startswith(b"ready")


async def _open(waypoint: Waypoint, ca: FakeCa) -> HttpOverHbone:
    assert waypoint.hbone_address is not None
    return await HttpOverHbone.open(waypoint.hbone_address, ca, CLIENT_ID, WAYPOINT_ID, f"{VIP}:80")


async def _get(address, path: str) -> bytes:
    assert address is not None
    reader, writer = await asyncio.open_connection(address[0], address[1])
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2]

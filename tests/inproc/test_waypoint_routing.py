"""Route selection at the waypoint end to end, in one event loop: a scripted xDS server pushes a
``ServiceTraffic`` (as bytes, like istiod_lite), a fake CA signs every identity, a ``v1`` and a ``v2``
echo backend of one service sit behind destination-ztunnel stand-ins (mTLS HBONE on 127.0.62.x:15008),
and a client speaks HTTP/1.1 inside an HBONE tunnel to the waypoint.

Covers: a 90/10 split by weight between the v1 and v2 subsets converging within a bound (fixed seed); a
header match sending every request to v2 with the rule's request and response header edits; a redirect
answered by the waypoint; a request no rule matches answered 404.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from meshcore.aio.hbone_server import serve_hbone
from meshcore.aio.xds_client import XdsClient
from meshcore.config import HostPort
from meshcore.identity import SpiffeId
from meshcore.model import Port
from meshcore.model.convert import ADDRESS_TYPE_URL
from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL
from meshcore.model.convert_traffic import SERVICE_TRAFFIC_TYPE_URL, service_traffic_to_proto
from meshcore.model.traffic import (
    BackendRef,
    DestinationPolicy,
    HeaderModifier,
    PathMatch,
    PathRewrite,
    Redirect,
    RouteMatch,
    RouteRule,
    ServiceTraffic,
    Subset,
    ValueMatch,
)
from meshcore.testing import builders
from meshcore.testing.echo import EchoBackend
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
HOSTS = {"v1": "127.0.62.2", "v2": "127.0.62.3"}
VIP = "10.96.62.10"
ECHO = "echo.default.svc.cluster.local"
SEED = 8


def uid(version: str) -> str:
    return f"Kubernetes//Pod/default/echo-{version}"


def echo(subset: str, weight: int = 1) -> BackendRef:
    return BackendRef("default", ECHO, 80, subset, weight)


TRAFFIC = ServiceTraffic("default", ECHO, routes=(
    RouteRule("HTTPRoute default/moved", matches=(RouteMatch(path=PathMatch("exact", "/old")),),
              redirect=Redirect(path=PathRewrite("full", "/new"), status_code=301)),
    RouteRule("HTTPRoute default/by-header",
              matches=(RouteMatch(path=PathMatch("prefix", "/"), headers=(ValueMatch("x-version", "exact", "v2"),)),),
              backends=(echo("v2"),),
              request_headers=HeaderModifier(set=(("x-routed-by", "header"),)),
              response_headers=HeaderModifier(add=(("x-route", "by-header"),))),
    RouteRule("HTTPRoute default/canary", matches=(RouteMatch(path=PathMatch("prefix", "/app")),),
              backends=(echo("v1", 90), echo("v2", 10))),
), policy=DestinationPolicy("DestinationRule default/echo", subsets=(
    Subset("v1", (("version", "v1"),), (uid("v1"),)), Subset("v2", (("version", "v2"),), (uid("v2"),)))))


@dataclass
class Mesh:
    waypoint: Waypoint
    ca: FakeCa
    backends: dict[str, EchoBackend]

    async def client(self) -> HttpOverHbone:
        assert self.waypoint.hbone_address is not None
        return await HttpOverHbone.open(self.waypoint.hbone_address, self.ca, CLIENT_ID, WAYPOINT_ID, f"{VIP}:80")


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    ca = FakeCa()
    dest = DestinationZtunnel()
    backends = {v: EchoBackend(f"echo-{v}", host=h, port=8080) for v, h in HOSTS.items()}
    started: list[EchoBackend] = []
    hbone = []
    xds = FakeXdsServer()
    waypoint: Waypoint | None = None
    try:
        for b in backends.values():
            started.append(await b.start())
            hbone.append(await serve_hbone(b.host, 15008, server_context(ca.issue(ECHO_ID)),
                                           lambda der: verify_peer(der, trust_domain=TD), dest.on_tunnel))
        await xds.start()
        ports = {f"default/{ECHO}": (Port(service_port=80, target_port=8080),)}
        resources = {
            uid(v): builders.workload(f"echo-{v}", h, service_account="echo", services=ports, canonical_revision=v)
            for v, h in HOSTS.items()
        }
        resources["Kubernetes//Pod/default/sleep"] = builders.workload("sleep", "127.0.0.1")
        resources[f"default/{ECHO}"] = builders.service("echo", VIP, ports={80: 8080})
        await xds.push(ADDRESS_TYPE_URL, resources)
        await xds.push(L7_AUTHORIZATION_TYPE_URL, {})
        await xds.push(SERVICE_TRAFFIC_TYPE_URL, {TRAFFIC.key: service_traffic_to_proto(TRAFFIC).SerializeToString()})
        config = WaypointConfig(
            pod_name="echo-waypoint-0", namespace="default", service_account="echo-waypoint",
            gateway_name="echo-waypoint", pod_ip="127.0.62.1", hbone_port=0, xds_address=None, ca_address=None,
            admin_addr=HostPort("127.0.0.1", 0), stats_addr=HostPort("127.0.0.1", 0),
            readiness_addr=HostPort("127.0.0.1", 0),
        )
        waypoint = Waypoint(
            config, ca=ca, rng=random.Random(SEED),
            xds=lambda cell: XdsClient(xds.address, None, "router~127.0.62.1~wp.default~default.svc.cluster.local",
                                       {}, cell, kinds=WAYPOINT_KINDS),
        )
        await waypoint.start()
        await waypoint.wait_ready(10)
        async with asyncio.timeout(10):
            while waypoint.cell.current().traffic.get(TRAFFIC.key) != TRAFFIC:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.01)
        yield Mesh(waypoint, ca, backends)
    finally:
        if waypoint is not None:
            await waypoint.stop()
        await xds.stop()
        for s in hbone:
            await s.aclose()
        for b in started:
            await b.close()


async def test_a_90_10_split_by_weight_converges_to_its_weights(mesh: Mesh) -> None:
    conn = await mesh.client()
    n = 400
    try:
        statuses = [(await conn.request("GET", "/app"))[0] for _ in range(n)]
    finally:
        await conn.close()
    assert statuses == [200] * n
    v1, v2 = len(mesh.backends["v1"].requests), len(mesh.backends["v2"].requests)
    assert v1 + v2 == n
    assert abs(v2 / n - 0.10) <= 0.06  # 10% of 400, seeded; the bound is 4 standard deviations


async def test_a_header_match_sends_every_request_to_v2_with_the_rule_header_edits(mesh: Mesh) -> None:
    conn = await mesh.client()
    try:
        results = [await conn.request("GET", "/app", headers={"x-version": "v2"}) for _ in range(10)]
    finally:
        await conn.close()
    assert [status for status, _, _ in results] == [200] * 10
    assert all(fields.get("x-route") == "by-header" for _, fields, _ in results)
    assert len(mesh.backends["v2"].requests) == 10 and not mesh.backends["v1"].requests
    assert all(r.headers.get("x-routed-by") == "header" for r in mesh.backends["v2"].requests)


async def test_a_redirect_is_answered_by_the_waypoint_and_an_unmatched_request_gets_404(mesh: Mesh) -> None:
    conn = await mesh.client()
    try:
        status, fields, _ = await conn.request("GET", "/old?q=1")
        missing, _, body = await conn.request("GET", "/elsewhere")
    finally:
        await conn.close()
    assert (status, fields.get("location")) == (301, "http://echo/new?q=1")
    assert missing == 404 and body == b"no route"
    assert not mesh.backends["v1"].requests and not mesh.backends["v2"].requests

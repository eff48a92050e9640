"""The waypoint's resilience data plane end to end, in one event loop: a scripted xDS server pushes
``ServiceTraffic`` resources (as bytes, like istiod_lite), a fake CA signs every identity, three echo
backends of one service (and one of a mirror service) sit behind destination-ztunnel stand-ins (mTLS
HBONE on 127.0.61.x:15008), and a client speaks HTTP/1.1 inside an HBONE tunnel to the waypoint.

Covers: a retry hiding a backend that fails every other request; a 50% injected 503 within tolerance
over many requests (fixed seed); a mirror receiving shadow copies; a failing backend ejected while
traffic keeps succeeding; connection-pool overflow answered 503 UO; a local rate limit answered 429 RL.
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
    ConnectionPool,
    DestinationPolicy,
    Fault,
    Mirror,
    OutlierDetection,
    RateLimit,
    Retry,
    RouteRule,
    ServiceTraffic,
    TrafficPolicy,
)
from meshcore.testing import builders
from meshcore.testing.clock import FakeClock
from meshcore.testing.echo import EchoBackend
from meshcore.testing.fake_ca import FakeCa
from meshcore.testing.fake_xds import FakeXdsServer
from meshcore.testing.waypoint_mesh import DestinationZtunnel, HttpOverHbone
from meshcore.tls.contexts import server_context
from meshcore.tls.verify import verify_peer
from waypoint.admission import Admission
from waypoint.app import Waypoint
from waypoint.config import WaypointConfig
from waypoint.state import WAYPOINT_KINDS

pytestmark = pytest.mark.inproc

TD = "cluster.local"
WAYPOINT_ID = SpiffeId(TD, "default", "echo-waypoint")
CLIENT_ID = SpiffeId(TD, "default", "sleep")
ECHO_ID = SpiffeId(TD, "default", "echo")
HOSTS = ("127.0.61.2", "127.0.61.3", "127.0.61.4")
MIRROR_HOST = "127.0.61.5"
VIP, MIRROR_VIP = "10.96.61.10", "10.96.61.11"
ECHO = "echo.default.svc.cluster.local"
ECHO_MIRROR = "echo-mirror.default.svc.cluster.local"
SEED = 20261207


@dataclass
class Mesh:
    waypoint: Waypoint
    xds: FakeXdsServer
    ca: FakeCa
    backends: list[EchoBackend]
    mirror: EchoBackend

    async def push(self, traffic: ServiceTraffic) -> None:
        await self.xds.push(SERVICE_TRAFFIC_TYPE_URL, {traffic.key: service_traffic_to_proto(traffic).SerializeToString()})
        async with asyncio.timeout(10):
            while self.waypoint.cell.current().traffic.get(traffic.key) != traffic:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.01)

    async def client(self) -> HttpOverHbone:
        assert self.waypoint.hbone_address is not None
        return await HttpOverHbone.open(self.waypoint.hbone_address, self.ca, CLIENT_ID, WAYPOINT_ID, f"{VIP}:80")


def _traffic(*rules: RouteRule, policy: TrafficPolicy | None = None, rate_limit: RateLimit | None = None
             ) -> ServiceTraffic:
    dest = DestinationPolicy("DestinationRule default/echo", policy) if policy is not None else None
    return ServiceTraffic("default", ECHO, routes=rules, policy=dest, rate_limit=rate_limit)


def _rule(**kwargs) -> RouteRule:
    return RouteRule("VirtualService default/echo", backends=(BackendRef("default", ECHO),), **kwargs)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    ca = FakeCa()
    dest = DestinationZtunnel()
    backends = [EchoBackend(f"echo-{i}", host=h, port=8080) for i, h in enumerate(HOSTS)]
    mirror = EchoBackend("mirror", host=MIRROR_HOST, port=8080)
    started: list[EchoBackend] = []
    hbone = []
    xds = FakeXdsServer()
    waypoint: Waypoint | None = None
    try:
        for b in (*backends, mirror):
            started.append(await b.start())
            hbone.append(await serve_hbone(b.host, 15008, server_context(ca.issue(ECHO_ID)),
                                           lambda der: verify_peer(der, trust_domain=TD), dest.on_tunnel))
        await xds.start()
        ports = {f"default/{ECHO}": (Port(service_port=80, target_port=8080),)}
        mirror_ports = {f"default/{ECHO_MIRROR}": (Port(service_port=80, target_port=8080),)}
        resources = {
            f"Kubernetes//Pod/default/echo-{i}": builders.workload(f"echo-{i}", h, service_account="echo",
                                                                   services=ports)
            for i, h in enumerate(HOSTS)
        }
        resources["Kubernetes//Pod/default/mirror"] = builders.workload("mirror", MIRROR_HOST, service_account="echo",
                                                                        services=mirror_ports)
        resources["Kubernetes//Pod/default/sleep"] = builders.workload("sleep", "127.0.0.1")
        resources[f"default/{ECHO}"] = builders.service("echo", VIP, ports={80: 8080})
        resources[f"default/{ECHO_MIRROR}"] = builders.service("echo-mirror", MIRROR_VIP, ports={80: 8080})
        await xds.push(ADDRESS_TYPE_URL, resources)
        await xds.push(L7_AUTHORIZATION_TYPE_URL, {})
        await xds.push(SERVICE_TRAFFIC_TYPE_URL, {})
        config = WaypointConfig(
            pod_name="echo-waypoint-0", namespace="default", service_account="echo-waypoint",
            gateway_name="echo-waypoint", pod_ip="127.0.61.1", hbone_port=0, xds_address=None, ca_address=None,
            admin_addr=HostPort("127.0.0.1", 0), stats_addr=HostPort("127.0.0.1", 0),
            readiness_addr=HostPort("127.0.0.1", 0),
        )
        waypoint = Waypoint(
            config, ca=ca, rng=random.Random(SEED),
            xds=lambda cell: XdsClient(xds.address, None, "router~127.0.61.1~wp.default~default.svc.cluster.local",
                                       {}, cell, kinds=WAYPOINT_KINDS),
        )
        await waypoint.start()
        await waypoint.wait_ready(10)
        yield Mesh(waypoint, xds, ca, backends, mirror)
    finally:
        if waypoint is not None:
            await waypoint.stop()
        await xds.stop()
        for s in hbone:
            await s.aclose()
        for b in started:
            await b.close()


async def _statuses(conn: HttpOverHbone, n: int) -> list[int]:
    return [(await conn.request())[0] for _ in range(n)]


async def test_a_retry_hides_a_backend_that_fails_every_other_request(mesh):
    mesh.backends[0].fail_every = 2
    await mesh.push(_traffic(_rule(retry=Retry(2, retry_on=("5xx",)))))
    conn = await mesh.client()
    try:
        statuses = await _statuses(conn, 30)
    finally:
        await conn.close()
    assert statuses == [200] * 30
    assert sum(1 for r in mesh.backends[0].requests) >= 10  # the failing backend kept getting its share
    assert mesh.waypoint.http_counters.retries >= 4


async def test_an_injected_503_for_half_the_requests_lands_within_tolerance(mesh):
    await mesh.push(_traffic(_rule(fault=Fault(abort_status=503, abort_percent=50.0))))
    conn = await mesh.client()
    try:
        results = [await conn.request() for _ in range(200)]
    finally:
        await conn.close()
    aborted = [r for r in results if r[0] == 503]
    assert 70 <= len(aborted) <= 130  # 50% of 200, seeded; the bound is ~4 standard deviations
    assert all(body == b"fault filter abort" for _, _, body in aborted)
    assert {s for s, _, _ in results} == {200, 503}
    assert sum(len(b.requests) for b in mesh.backends) == 200 - len(aborted)  # an abort never reaches a backend


async def test_a_mirror_receives_shadow_copies_and_the_client_only_sees_the_primary(mesh):
    await mesh.push(_traffic(_rule(mirrors=(Mirror(BackendRef("default", ECHO_MIRROR)),))))
    conn = await mesh.client()
    try:
        results = [await conn.request("POST", "/orders", b"order-1") for _ in range(3)]
        await mesh.mirror.wait_for(3)
    finally:
        await conn.close()
    assert [r[0] for r in results] == [200, 200, 200]
    assert all(b'"echo-' in body for _, _, body in results)  # answered by the primary backends
    copies = mesh.mirror.requests
    assert {(c.method, c.path, c.host, c.body) for c in copies} == {("POST", "/orders", "echo-shadow", b"order-1")}


async def test_a_failing_backend_is_ejected_and_traffic_keeps_succeeding(mesh):
    failing = mesh.backends[1]
    failing.fail_every = 1
    od = OutlierDetection(consecutive_5xx_errors=1, base_ejection_time=300.0, max_ejection_percent=50)
    await mesh.push(_traffic(_rule(retry=Retry(2, retry_on=("5xx",))), policy=TrafficPolicy(outlier_detection=od)))
    conn = await mesh.client()
    try:
        statuses = await _statuses(conn, 30)
    finally:
        await conn.close()
    assert statuses == [200] * 30
    assert len(failing.requests) == 1  # one failure ejected it; it got nothing after
    assert mesh.waypoint.handler.chooser.outlier.ejections == 1


async def test_connection_pool_overflow_is_answered_503_uo(mesh):
    for b in mesh.backends:
        b.delay = 30.0  # held until released below
    pool = ConnectionPool(http2_max_requests=1, http1_max_pending_requests=1)
    await mesh.push(_traffic(_rule(), policy=TrafficPolicy(connection_pool=pool)))
    conns = [await mesh.client() for _ in range(3)]
    try:
        first = asyncio.ensure_future(conns[0].request())
        async with asyncio.timeout(10):
            while not any(b.requests for b in mesh.backends):  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.01)
        second = asyncio.ensure_future(conns[1].request())
        breaker = mesh.waypoint.handler.admission
        async with asyncio.timeout(10):
            while breaker.counters.queued < 1:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.01)
        status, headers, body = await conns[2].request()
        assert (status, body) == (503, b"upstream connect error or disconnect/reset before headers. "
                                       b"reset reason: overflow")
        for b in mesh.backends:
            b.released.set()
        assert (await first)[0] == 200 and (await second)[0] == 200
    finally:
        for c in conns:
            await c.close()
    assert breaker.counters.overflowed == 1


async def test_a_local_rate_limit_answers_429_and_counts(mesh):
    clock = FakeClock()
    mesh.waypoint.handler.admission = Admission(clock=clock.monotonic)  # tokens refill only when the test says
    await mesh.push(_traffic(rate_limit=RateLimit("HTTPLocalRateLimitPolicy default/echo", requests_per_second=2)))
    conn = await mesh.client()
    try:
        statuses = await _statuses(conn, 4)
        clock.advance(1.0)
        statuses += await _statuses(conn, 1)
    finally:
        await conn.close()
    assert statuses == [200, 200, 429, 429, 200]
    assert mesh.waypoint.handler.admission.counters.rate_limited == {"total": 2}

"""Two real ztunnels in one event loop: SOCKS5 -> HBONE (mTLS, HTTP/2) -> echo, on 127.x.y.0/24.

node-1's ztunnel serves the client workload (.11), node-2's the server workload (.12, an echo server on
it). Configuration comes from a FakeXdsServer (so a policy can be pushed mid-connection), certificates
from one FakeCa. Everything else is real: sockets, TLS 1.3, HTTP/2 framing, the pool, the relay,
metrics over HTTP, access logs captured from structlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from meshcore.aio.hbone_server import TunnelRequest, serve_hbone
from meshcore.aio.xds_client import XdsClient
from meshcore.model import Action, Match, StringMatch
from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.policy import POLICY_CHANGE_MESSAGE
from meshcore.testing import builders as b
from meshcore.testing.fake_ca import FakeCa
from meshcore.testing.fake_xds import FakeXdsServer
from meshcore.tls.contexts import server_context
from meshcore.tls.verify import verify_peer
from ztunnel.app import Ztunnel
from ztunnel.testing import Socks5Refused, loopback_block, make_config, socks5_connect

MiB = 1 << 20
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"


@dataclass
class Mesh:
    net: str
    client_ip: str
    server_ip: str
    echo_port: int
    ca: FakeCa
    xds: FakeXdsServer
    z1: Ztunnel
    z2: Ztunnel

    async def connect(self, dst_ip: str | None = None, port: int | None = None, src_ip: str | None = None):
        assert self.z1.socks5 is not None
        return await socks5_connect(
            tuple(self.z1.socks5.address), src_ip or self.client_ip, dst_ip or self.server_ip, port or self.echo_port
        )


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def echo_server(host: str) -> AsyncIterator[int]:
    server = await asyncio.start_server(echo, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def xds_source(xds: FakeXdsServer, node: str) -> Callable:
    return lambda cell: XdsClient(xds.address, None, f"ztunnel~{node}", {"NODE_NAME": node}, cell)


@pytest.fixture
def logs():
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
async def mesh(logs) -> AsyncIterator[Mesh]:
    net = loopback_block()
    client_ip, server_ip = net + "11", net + "12"
    ca = FakeCa()
    async with FakeXdsServer() as xds, echo_server(server_ip) as port:
        client = b.workload("client", client_ip, node="node-1")
        server = b.workload("server", server_ip, node="node-2")
        await xds.push(ADDRESS_TYPE_URL, {client.uid: client, server.uid: server})
        z1 = Ztunnel(make_config("node-1", net + "1"), ca=ca, xds=xds_source(xds, "node-1"))
        z2 = Ztunnel(make_config("node-2", None), ca=ca, xds=xds_source(xds, "node-2"))
        try:
            await z1.start()
            await z2.start()
            await z1.wait_ready(10)
            await z2.wait_ready(10)
            yield Mesh(net, client_ip, server_ip, port, ca, xds, z1, z2)
        finally:
            await z1.stop()
            await z2.stop()


async def wait_for_log(logs: list[dict], predicate: Callable[[dict], bool], within: float = 5.0) -> dict:
    """The first captured log entry matching ``predicate``, polling until ``within`` seconds passed."""
    async with asyncio.timeout(within):
        while True:
            found = next((e for e in logs if predicate(e)), None)
            if found is not None:
                return found
            await asyncio.sleep(0.01)


def access(direction: str) -> Callable[[dict], bool]:
    return lambda e: e.get("scope") == "access" and e.get("direction") == direction and e["event"] == "connection complete"


async def scrape(address: tuple[str, int]) -> dict[tuple[str, frozenset], float]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await reader.read()
    writer.close()
    body = raw.split(b"\r\n\r\n", 1)[1].decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def total(metrics: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


async def round_trip(reader, writer, payload: bytes) -> bytes:
    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(view), MiB):
            writer.write(view[i : i + MiB])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = bytearray()
    while chunk := await reader.read(MiB):
        received += chunk
    await sender
    writer.close()
    return bytes(received)


async def test_one_byte_round_trip_logs_both_identities_on_both_sides_and_counts_the_bytes(mesh: Mesh, logs):
    reader, writer = await mesh.connect()
    assert await round_trip(reader, writer, b"x") == b"x"
    out = await wait_for_log(logs, access("outbound"))
    inb = await wait_for_log(logs, access("inbound"))
    assert (out["src.identity"], out["dst.identity"], out["src.workload"], out["dst.workload"]) == (
        CLIENT_ID, SERVER_ID, "client", "server"
    )
    assert out["dst.addr"] == f"{mesh.server_ip}:15008" and out["dst.hbone_addr"] == f"{mesh.server_ip}:{mesh.echo_port}"
    assert (out["bytes_sent"], out["bytes_recv"]) == (1, 1) and "error" not in out
    assert (inb["src.identity"], inb["dst.identity"], inb["src.workload"], inb["src.addr"].split(":")[0]) == (
        CLIENT_ID, SERVER_ID, "client", mesh.client_ip
    )
    assert inb["dst.addr"] == f"{mesh.server_ip}:{mesh.echo_port}" and "error" not in inb

    dst = await scrape(mesh.z2.stats_address)
    labels = {"reporter": "destination", "source_principal": CLIENT_ID, "destination_principal": SERVER_ID,
              "connection_security_policy": "mutual_tls", "source_workload": "client"}
    assert total(dst, "istio_tcp_received_bytes_total", **labels) == 1
    assert total(dst, "istio_tcp_sent_bytes_total", **labels) == 1
    assert total(dst, "istio_tcp_connections_opened_total", **labels) == 1
    assert total(dst, "istio_tcp_connections_closed_total", **labels) == 1
    src = await scrape(mesh.z1.stats_address)
    assert total(src, "istio_tcp_received_bytes_total", reporter="source", destination_workload="server") == 1
    assert total(src, "istio_tcp_sent_bytes_total", reporter="source", destination_workload="server") == 1


async def test_64_mib_echo_returns_intact(mesh: Mesh):
    payload = os.urandom(64 * MiB)
    reader, writer = await mesh.connect()
    echoed = await asyncio.wait_for(round_trip(reader, writer, payload), 60)
    assert len(echoed) == len(payload) and hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_a_second_app_connection_reuses_the_pooled_hbone_connection(mesh: Mesh):
    for _ in range(2):
        reader, writer = await mesh.connect()
        assert await round_trip(reader, writer, b"ping") == b"ping"
    stats = mesh.z1.pool.stats()
    assert (stats.handshakes, stats.connections) == (1, 1)
    assert mesh.z2.hbone_counters.connections_accepted == 1
    metrics = await scrape(mesh.z1.stats_address)
    assert total(metrics, "ztunnel_pool_handshakes_total") == 1


async def test_a_deny_policy_pushed_while_a_connection_is_open_closes_it(mesh: Mesh, logs):
    reader, writer = await mesh.connect()
    writer.write(b"before")
    assert await reader.readexactly(6) == b"before"
    deny = b.policy("deny-client", Match(principals=(StringMatch("exact", CLIENT_ID.removeprefix("spiffe://")),)),
                    action=Action.DENY)
    await mesh.xds.push(AUTHORIZATION_TYPE_URL, {deny.key: deny})
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionError):
            while await reader.read(MiB):
                pass
    writer.close()
    inb = await wait_for_log(logs, access("inbound"))
    assert inb["error"] == POLICY_CHANGE_MESSAGE and inb["policy"] == "default/deny-client"
    assert mesh.z2.watcher.closed_total == 1
    with pytest.raises(Socks5Refused) as refused:
        await mesh.connect()
    assert refused.value.reply == 0x02  # the destination answered 401
    denied = await wait_for_log(logs, lambda e: access("inbound")(e) and "explicitly denied" in e.get("error", ""))
    assert denied["policy"] == "default/deny-client"
    metrics = await scrape(mesh.z2.stats_address)
    assert total(metrics, "ztunnel_connection_failures_total", reason="PolicyChange") == 1
    assert total(metrics, "ztunnel_connection_failures_total", reason="PolicyDenied") == 1
    assert total(metrics, "istio_tcp_connections_failed_total", response_flags="DENY") == 2


async def test_a_server_presenting_the_wrong_identity_is_refused_by_the_client(mesh: Mesh, logs):
    rogue_ip = mesh.net + "13"
    impostor = mesh.ca.issue(b.workload("impostor", rogue_ip).identity)
    expected = b.workload("server3", rogue_ip, node="node-3")
    await mesh.xds.push(ADDRESS_TYPE_URL, {expected.uid: expected})
    await mesh.z1.cell.wait_for(lambda s: s.find_workload(expected.uid) is not None, 5)
    reached: list[TunnelRequest] = []

    async def record(request: TunnelRequest) -> None:
        reached.append(request)
        await request.reject(503)

    rogue = await serve_hbone(rogue_ip, 15008, server_context(impostor), lambda der: verify_peer(der), record)
    try:
        with pytest.raises(Socks5Refused) as refused:
            await mesh.connect(rogue_ip, 8080)
    finally:
        await rogue.aclose()
    assert refused.value.reply == 0x02 and reached == []  # no CONNECT was ever sent to the impostor
    out = await wait_for_log(logs, access("outbound"))
    assert "not trusted" in out["error"] and "impostor" in out["error"]
    assert mesh.z1.pool.stats().dial_failures == 1


async def test_a_client_that_is_not_a_local_mesh_workload_is_refused(mesh: Mesh, logs):
    with pytest.raises(Socks5Refused) as refused:
        await mesh.connect(src_ip=mesh.net + "99")
    assert refused.value.reply == 0x02
    failed = await wait_for_log(logs, lambda e: e.get("event") == "connection failed" and e.get("direction") == "outbound")
    assert "not a mesh workload served by this ztunnel" in failed["error"]
    metrics = await scrape(mesh.z1.stats_address)
    assert total(metrics, "ztunnel_connection_failures_total", reason="UnknownSource") == 1


async def test_a_destination_outside_the_mesh_is_reached_by_plain_tcp_passthrough(mesh: Mesh, logs):
    outside_ip = mesh.net + "50"
    async with echo_server(outside_ip) as port:
        reader, writer = await mesh.connect(outside_ip, port)
        assert await round_trip(reader, writer, b"plain") == b"plain"
    out = await wait_for_log(logs, access("outbound"))
    assert out["dst.addr"] == f"{outside_ip}:{port}" and "dst.hbone_addr" not in out and "src.identity" not in out
    assert mesh.z1.pool.stats().handshakes == 0

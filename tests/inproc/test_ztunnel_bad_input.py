"""Bad input at a real ztunnel's inbound HBONE listener: each case refused or closed with the right
status, logged once with its reason, counted, and the listener keeps serving everyone else.

One ztunnel (node-2) serves the server workload with an echo app behind it; the tests play the peer
themselves with raw TLS, raw HTTP/2 (h2) or an ``HboneClient``, with certificates from the mesh CA, a
foreign CA, an expired one or another trust domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import h2.config
import h2.connection
import h2.events
import pytest
import structlog

from meshcore.aio.hbone_client import HboneClient
from meshcore.hbone import TunnelRefused
from meshcore.identity import SpiffeId
from meshcore.state import ProxyState
from meshcore.testing import builders as b
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls.certs import CertBundle
from meshcore.tls.contexts import client_context
from meshcore.tls.verify import verify_peer
from ztunnel.app import Ztunnel
from ztunnel.testing import StaticSource, loopback_block, make_config

CLIENT = SpiffeId("cluster.local", "default", "client")
SERVER = SpiffeId("cluster.local", "default", "server")


@dataclass
class Node:
    ip: str
    port: int  # the echo app's port
    ca: FakeCa
    zt: Ztunnel

    def counters(self):
        return self.zt.hbone_counters

    async def tunnel_client(self, bundle: CertBundle | None = None) -> HboneClient:
        return await HboneClient.connect(
            self.ip, 15008, ssl_context=client_context(bundle or self.ca.issue(CLIENT)),
            verify=lambda der: verify_peer(der, expected=[SERVER]),
        )

    async def echo_once(self) -> bytes:
        """Proof of life: a fresh, valid tunnel to the echo app."""
        client = await self.tunnel_client()
        try:
            stream = await client.open_tunnel(f"{self.ip}:{self.port}")
            await stream.send_all(b"alive")
            await stream.send_eof()
            out = b""
            while chunk := await stream.receive_some():
                out += chunk
            return out
        finally:
            await client.aclose()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


@pytest.fixture
def logs():
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
async def node(logs) -> AsyncIterator[Node]:
    ip = loopback_block() + "12"
    ca = FakeCa()
    app = await asyncio.start_server(echo, ip, 0)
    state = ProxyState.of(b.workload("server", ip, node="node-2"), b.workload("client", "10.0.0.1", node="node-1"))
    zt = Ztunnel(make_config("node-2", None), ca=ca, xds=StaticSource.of(state))
    try:
        await zt.start()
        await zt.wait_ready(10)
        yield Node(ip, app.sockets[0].getsockname()[1], ca, zt)
    finally:
        await zt.stop()
        app.close()


async def until(condition, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - bounded poll of counters we do not own
            await asyncio.sleep(0.01)


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e.get("event") == name]


async def tls_attempt(ip: str, context: ssl.SSLContext, payload: bytes = b"") -> None:
    """Connect with ``context``, send ``payload``, read until the server hangs up (errors swallowed)."""
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
        reader, writer = await asyncio.open_connection(ip, 15008, ssl=context, server_hostname="")
        writer.write(payload or b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        await reader.read()
        writer.close()


def plain_client_context(bundle: CertBundle | None, roots: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    ctx.load_verify_locations(cadata=roots)
    if bundle is not None:
        return client_context(bundle)
    return ctx


async def raw_h2_request(node: Node, headers: list[tuple[str, str]]) -> int:
    """Send one HTTP/2 request with exactly ``headers`` over valid mTLS; return the response status."""
    reader, writer = await asyncio.open_connection(
        node.ip, 15008, ssl=client_context(node.ca.issue(CLIENT)), server_hostname=""
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=False)
    writer.write(conn.data_to_send())
    try:
        async with asyncio.timeout(5):
            while True:
                data = await reader.read(65536)
                assert data, "the server closed the connection without answering"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                        return int(dict(event.headers)[b":status"])
                writer.write(conn.data_to_send())
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------ TLS layer


@pytest.mark.parametrize(
    "case",
    ["no client certificate", "a certificate from another CA", "an expired certificate", "garbage instead of TLS"],
)
async def test_bad_tls_peers_fail_the_handshake_are_counted_once_and_the_listener_keeps_serving(node: Node, logs, case):
    now = datetime.now(UTC)
    if case == "no client certificate":
        attempt = tls_attempt(node.ip, plain_client_context(None, node.ca.roots_pem))
    elif case == "a certificate from another CA":
        foreign = FakeCa.foreign("cluster.local").issue(CLIENT)
        attempt = tls_attempt(node.ip, plain_client_context(foreign, node.ca.roots_pem))
    elif case == "an expired certificate":
        expired = node.ca.issue(CLIENT, ttl=timedelta(hours=1), not_before=now - timedelta(hours=2))
        attempt = tls_attempt(node.ip, plain_client_context(expired, node.ca.roots_pem))
    else:
        async def garbage() -> None:
            reader, writer = await asyncio.open_connection(node.ip, 15008)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
            with contextlib.suppress(ConnectionError):
                await reader.read()
            writer.close()

        attempt = garbage()
    await attempt
    await until(lambda: node.counters().handshake_failures == 1)
    assert len(events(logs, "hbone.handshake_failed")) == 1
    assert await node.echo_once() == b"alive"
    assert node.counters().handshake_failures == 1 and node.counters().untrusted_peers == 0


async def test_a_client_from_another_trust_domain_is_refused_after_the_handshake(node: Node, logs):
    other = node.ca.issue(SpiffeId("other.local", "default", "client"))  # same root, wrong trust domain
    await tls_attempt(node.ip, client_context(other))
    await until(lambda: node.counters().untrusted_peers == 1)
    [rejected] = events(logs, "hbone.peer_rejected")
    assert "other.local" in rejected["reason"]
    assert await node.echo_once() == b"alive"


async def test_garbage_instead_of_http2_costs_only_that_connection(node: Node, logs):
    await tls_attempt(node.ip, client_context(node.ca.issue(CLIENT)), b"this is not an HTTP/2 preface at all\r\n")
    await until(lambda: node.counters().connection_errors == 1)
    assert len(events(logs, "hbone.connection_error")) == 1
    assert await node.echo_once() == b"alive"


# ------------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(":method", "CONNECT"), (":authority", "echo.default.svc:80")], "not an IP address"),
        ([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "10.0.0.2:80")], "CONNECT"),
    ],
    ids=["a connect to a host name is answered 400", "a non-connect method is answered 400"],
)
async def test_malformed_requests_are_answered_400_logged_and_counted(node: Node, logs, headers, reason):
    assert await raw_h2_request(node, headers) == 400
    await until(lambda: node.counters().tunnels_refused == 1)
    [refused] = events(logs, "hbone.request_refused")
    assert refused["status"] == 400 and reason in refused["reason"]
    assert await node.echo_once() == b"alive"


async def test_a_connect_to_an_address_this_listener_does_not_serve_is_answered_400(node: Node, logs):
    client = await node.tunnel_client()
    try:
        with pytest.raises(TunnelRefused) as refused:
            await client.open_tunnel("10.9.9.9:80")
        assert refused.value.status == 400
        stream = await client.open_tunnel(f"{node.ip}:{node.port}")  # the same connection still works
        await stream.aclose()
    finally:
        await client.aclose()
    [failed] = [e for e in events(logs, "connection failed") if e.get("direction") == "inbound"]
    assert failed["error"].startswith("ip mismatch: 10.9.9.9 != ")
    assert failed["dst.addr"] == "10.9.9.9:80"


async def test_a_connect_to_a_closed_app_port_is_answered_503_after_trying(node: Node, logs):
    with contextlib.closing(socket.socket()) as s:
        s.bind((node.ip, 0))
        closed_port = s.getsockname()[1]
    client = await node.tunnel_client()
    try:
        with pytest.raises(TunnelRefused) as refused:
            await client.open_tunnel(f"{node.ip}:{closed_port}")
    finally:
        await client.aclose()
    assert refused.value.status == 503
    [done] = [e for e in events(logs, "connection complete") if e.get("direction") == "inbound"]
    assert "connection refused" in done["error"]


async def test_a_stream_reset_mid_transfer_is_logged_once_counted_and_spares_its_neighbours(node: Node, logs):
    client = await node.tunnel_client()
    try:
        neighbour = await client.open_tunnel(f"{node.ip}:{node.port}")
        victim = await client.open_tunnel(f"{node.ip}:{node.port}")
        await victim.send_all(b"x" * 100_000)
        assert len(await victim.receive_some(1)) == 1
        await victim.aclose()  # RST_STREAM(CANCEL) mid-transfer
        [done] = await _wait_events(logs, lambda e: e.get("event") == "connection complete" and "error" in e)
        assert "reset" in done["error"]
        await neighbour.send_all(b"still here")
        await neighbour.send_eof()
        got = b""
        while chunk := await neighbour.receive_some():
            got += chunk
        assert got == b"still here"
    finally:
        await client.aclose()
    assert node.zt.registry.get_sample_value("ztunnel_connection_failures_total", {"reason": "StreamReset"}) == 1


async def _wait_events(logs: list[dict], predicate, within: float = 5.0) -> list[dict]:
    async with asyncio.timeout(within):
        while not (found := [e for e in logs if predicate(e)]):  # noqa: ASYNC110 - bounded poll of captured logs
            await asyncio.sleep(0.01)
    return found

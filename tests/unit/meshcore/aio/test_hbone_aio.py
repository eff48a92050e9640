"""HBONE asyncio shells: client and server over a plaintext socketpair, then real mTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from meshcore.aio.hbone_client import HboneClient
from meshcore.aio.hbone_server import HboneServerCounters, TunnelRequest, serve_hbone
from meshcore.aio.relay import relay
from meshcore.aio.streams import AsyncioByteStream
from meshcore.hbone import (
    ConnectionDrained,
    HboneConnectionError,
    HboneSettings,
    PeerNotTrusted,
    TunnelRefused,
    TunnelResetError,
)
from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.testing.pairs import TEST_CLIENT_ID, TEST_SERVER_ID, hbone_socketpair
from meshcore.tls.contexts import client_context, server_context
from meshcore.tls.verify import verify_peer

MiB = 1 << 20
CLIENT_ID = SpiffeId("cluster.local", "default", "sleep")
SERVER_ID = SpiffeId("cluster.local", "default", "ztunnel")


async def read_all(stream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def echo(request: TunnelRequest) -> None:
    """Accept, read until EOF, send it all back, half-close."""
    stream = await request.accept([("baggage", "k8s.namespace.name=dst")])
    data = await read_all(stream)
    await stream.send_all(data)
    await stream.send_eof()


async def poll(condition, within: float = 5.0) -> None:
    """Wait until ``condition()`` holds, failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 (bounded poll of state we do not own)
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def socketpair_client(on_tunnel, **kwargs):
    client, server_task = await hbone_socketpair(on_tunnel, **kwargs)
    try:
        yield client
    finally:
        await client.aclose()
        async with asyncio.timeout(5):
            await server_task


async def test_tunnel_carries_bytes_both_ways_with_half_close():
    async with socketpair_client(echo) as client:
        stream = await client.open_tunnel("10.0.0.2:8080", [("traceparent", "00-x")])
        assert stream.response_headers == (("baggage", "k8s.namespace.name=dst"),)
        assert stream.peer_identity == TEST_SERVER_ID
        await stream.send_all(b"hello")
        await stream.send_eof()
        assert await read_all(stream) == b"hello"
        assert stream.finished and client.active_streams == 0


async def test_request_carries_authority_headers_and_peer_identity():
    seen: list[TunnelRequest] = []

    async def record(request: TunnelRequest) -> None:
        seen.append(request)
        await request.reject(401)

    async with socketpair_client(record) as client:
        with pytest.raises(TunnelRefused) as refused:
            await client.open_tunnel("[fd00::7]:9080", [("forwarded", 'for="10.0.0.1:4444"')])
    assert refused.value.status == 401
    [request] = seen
    assert (request.authority, request.target.port, request.peer_identity) == ("[fd00::7]:9080", 9080, TEST_CLIENT_ID)
    assert request.headers == (("forwarded", 'for="10.0.0.1:4444"'),)


async def test_a_handler_that_raises_yields_503_and_is_counted_and_the_connection_lives_on():
    counters = HboneServerCounters()

    async def broken(request: TunnelRequest) -> None:
        if request.target.port == 1:
            raise RuntimeError("boom")
        await echo(request)

    async with socketpair_client(broken, server_counters=counters) as client:
        with pytest.raises(TunnelRefused) as refused:
            await client.open_tunnel("10.0.0.2:1")
        assert refused.value.status == 503 and counters.handler_errors == 1
        stream = await client.open_tunnel("10.0.0.2:2")
        await stream.send_eof()
        assert await read_all(stream) == b""


async def test_a_handler_that_returns_without_answering_yields_503():
    async def silent(request: TunnelRequest) -> None:
        return None

    async with socketpair_client(silent) as client:
        with pytest.raises(TunnelRefused, match="503"):
            await client.open_tunnel("10.0.0.2:80")


async def test_closing_the_client_stream_resets_the_server_side():
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def wait_for_reset(request: TunnelRequest) -> None:
        stream = await request.accept()
        try:
            await stream.receive_some()
        except TunnelResetError as exc:
            outcome.set_result(exc)

    async with socketpair_client(wait_for_reset) as client:
        stream = await client.open_tunnel("10.0.0.2:80")
        await stream.aclose()
        error = await asyncio.wait_for(outcome, 5)
        assert isinstance(error, TunnelResetError) and error.by_peer


async def test_a_slow_reader_holds_back_the_sender_by_flow_control_alone():
    release = asyncio.Event()
    got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def slow(request: TunnelRequest) -> None:
        stream = await request.accept()
        await release.wait()
        got.set_result(len(await read_all(stream)))

    async with socketpair_client(slow) as client:
        stream = await client.open_tunnel("10.0.0.2:80")
        sender = asyncio.create_task(stream.send_all(bytes(8 * MiB)))
        await poll(lambda: client.conn.local_window(stream.stream_id) == 0)
        assert not sender.done()  # 4 MiB stream window full: waiting for the reader
        release.set()
        await asyncio.wait_for(sender, 5)
        await stream.send_eof()
        assert await asyncio.wait_for(got, 5) == 8 * MiB


async def test_the_peer_closing_the_connection_fails_open_streams():
    hold = asyncio.Event()

    async def hang(request: TunnelRequest) -> None:
        await request.accept()
        await hold.wait()

    async with socketpair_client(hang) as client:
        stream = await client.open_tunnel("10.0.0.2:80")
        client._writer.transport.abort()  # noqa: SLF001 - simulate the TCP connection dying
        with pytest.raises(HboneConnectionError):
            async with asyncio.timeout(5):
                await stream.receive_some()
        assert client.closed and client.available_streams == 0
        with pytest.raises(HboneConnectionError):
            await client.open_tunnel("10.0.0.2:80")


async def test_the_client_respects_a_smaller_server_stream_limit():
    hold = asyncio.Event()

    async def hang(request: TunnelRequest) -> None:
        stream = await request.accept()
        await hold.wait()
        await stream.send_eof()

    async with socketpair_client(hang, server_settings=HboneSettings(max_concurrent_streams=2)) as client:
        first = await client.open_tunnel("10.0.0.2:80")
        assert client.max_streams == 2
        await client.open_tunnel("10.0.0.2:81")
        assert client.available_streams == 0
        await first.aclose()
        assert client.available_streams == 1
        hold.set()


# --- real mTLS on 127.0.0.1 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> FakeCa:
    return FakeCa()


@contextlib.asynccontextmanager
async def mtls_server(ca: FakeCa, on_tunnel, counters: HboneServerCounters | None = None):
    server = await serve_hbone(
        "127.0.0.1", 0, server_context(ca.issue(SERVER_ID)),
        lambda der: verify_peer(der, trust_domain=ca.trust_domain), on_tunnel,
        counters=counters, handshake_timeout=5.0,
    )
    try:
        yield server
    finally:
        await server.aclose()


async def mtls_client(ca: FakeCa, port: int, *, identity=CLIENT_ID, expected=(SERVER_ID,), bundle=None):
    return await HboneClient.connect(
        "127.0.0.1", port,
        ssl_context=client_context(bundle or ca.issue(identity)),
        verify=lambda der: verify_peer(der, expected=list(expected)),
    )


@pytest.mark.parametrize("size", [1, 8 * MiB], ids=["one byte round trip", "8 MiB round trip"])
async def test_mtls_tunnel_round_trip(ca, size):
    seen: list[SpiffeId] = []

    async def echo_and_record(request: TunnelRequest) -> None:
        seen.append(request.peer_identity)
        await echo(request)

    payload = bytes(range(256)) * (size // 256) if size >= 256 else b"x"
    async with mtls_server(ca, echo_and_record) as server:
        client = await mtls_client(ca, server.port)
        try:
            assert client.peer_identity == SERVER_ID
            stream = await client.open_tunnel("127.0.0.1:9")

            async def send() -> None:
                await stream.send_all(payload)
                await stream.send_eof()

            sender = asyncio.create_task(send())
            assert await asyncio.wait_for(read_all(stream), 30) == payload
            await sender
        finally:
            await client.aclose()
    assert seen == [CLIENT_ID]


async def test_client_refuses_a_server_whose_identity_is_not_expected_before_any_connect(ca):
    counters = HboneServerCounters()
    async with mtls_server(ca, echo, counters) as server:
        with pytest.raises(PeerNotTrusted, match="not trusted"):
            await mtls_client(ca, server.port, expected=[SpiffeId("cluster.local", "default", "reviews")])
        await poll(lambda: counters.connections_open == 0)
        assert counters.tunnels_requested == 0


async def test_server_refuses_a_client_from_another_trust_domain_and_keeps_serving(ca):
    counters = HboneServerCounters()
    async with mtls_server(ca, echo, counters) as server:
        outsider = ca.issue(SpiffeId("evil.local", "default", "sleep"))  # same root, wrong trust domain
        client = await mtls_client(ca, server.port, bundle=outsider)
        with pytest.raises((HboneConnectionError, TunnelRefused)):
            async with asyncio.timeout(5):
                await client.open_tunnel("127.0.0.1:9")
        await client.aclose()
        assert counters.untrusted_peers == 1 and counters.tunnels_requested == 0
        good = await mtls_client(ca, server.port)
        stream = await good.open_tunnel("127.0.0.1:9")
        await stream.send_eof()
        assert await read_all(stream) == b""
        await good.aclose()


async def test_a_client_with_a_foreign_root_fails_the_handshake(ca):
    counters = HboneServerCounters()
    async with mtls_server(ca, echo, counters) as server:
        foreign = FakeCa.foreign()
        with pytest.raises((HboneConnectionError, PeerNotTrusted)):
            await mtls_client(foreign, server.port, identity=SpiffeId("foreign.local", "default", "x"))
        await poll(lambda: counters.handshake_failures == 1)


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b""],
    ids=["an HTTP/1.1 request", "cleartext HTTP/2", "a client that connects and leaves"],
)
async def test_non_tls_clients_are_counted_and_the_listener_keeps_serving(ca, garbage):
    counters = HboneServerCounters()
    async with mtls_server(ca, echo, counters) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(garbage)
        writer.write_eof()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                await reader.read()
        writer.close()
        await poll(lambda: counters.handshake_failures == 1)
        client = await mtls_client(ca, server.port)
        stream = await client.open_tunnel("127.0.0.1:9")
        await stream.send_all(b"ok")
        await stream.send_eof()
        assert await read_all(stream) == b"ok"
        await client.aclose()


async def test_failed_handshakes_leave_no_fd_and_never_touch_a_live_connection(ca):
    """Regression: the handshake-failure path closed the socket the transport still owned, so a
    connection accepted meanwhile could get the freed fd number and be closed by the stale cleanup."""
    import os

    counters = HboneServerCounters()
    async with mtls_server(ca, echo, counters) as server:
        client = await mtls_client(ca, server.port)
        stream = await client.open_tunnel("127.0.0.1:9")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write_eof()
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(5):
                    await reader.read()
            writer.close()
            await writer.wait_closed()
        await poll(lambda: counters.handshake_failures == 30)
        await poll(lambda: len(os.listdir("/proc/self/fd")) <= before)
        await stream.send_all(b"still here")
        await stream.send_eof()
        assert await read_all(stream) == b"still here"
        await client.aclose()


async def test_drain_lets_a_live_tunnel_finish_and_refuses_new_ones(ca):
    go = asyncio.Event()

    async def wait_then_echo(request: TunnelRequest) -> None:
        stream = await request.accept()
        await go.wait()
        await stream.send_all(await read_all(stream))
        await stream.send_eof()

    async with mtls_server(ca, wait_then_echo) as server:
        client = await mtls_client(ca, server.port)
        stream = await client.open_tunnel("127.0.0.1:9")
        loop = asyncio.get_running_loop()
        draining = asyncio.create_task(server.drain(loop.time() + 10))
        await poll(lambda: client.draining)
        with pytest.raises(ConnectionDrained):
            await client.open_tunnel("127.0.0.1:9")
        await stream.send_all(b"finish me")
        await stream.send_eof()
        go.set()
        assert await read_all(stream) == b"finish me"
        await asyncio.wait_for(draining, 5)
        await poll(lambda: client.closed)
        await client.aclose()


async def test_relay_between_an_hbone_stream_and_tcp(ca):
    """The composition the data path uses: app TCP <-> relay <-> HBONE tunnel <-> echo."""
    async with mtls_server(ca, echo) as server:
        client = await mtls_client(ca, server.port)
        stream = await client.open_tunnel("127.0.0.1:9")
        app_side, relay_side = socket.socketpair()
        app = AsyncioByteStream(*await asyncio.open_connection(sock=app_side))
        tcp = AsyncioByteStream(*await asyncio.open_connection(sock=relay_side))
        relaying = asyncio.create_task(relay(tcp, stream))
        await app.send_all(b"through the mesh")
        await app.send_eof()
        assert await read_all(app) == b"through the mesh"
        assert await asyncio.wait_for(relaying, 5) == (16, 16)
        await app.aclose()
        await tcp.aclose()
        await client.aclose()


async def test_keepalive_pings_measure_the_round_trip():
    fast = HboneSettings(max_header_list_size=16 * 1024, ping_interval=0.02, ping_timeout=5.0)
    async with socketpair_client(echo, client_settings=fast) as client:
        await poll(lambda: client.last_rtt is not None)
        assert 0 <= client.last_rtt < 5.0 and not client.closed


async def test_a_peer_that_never_answers_pings_is_declared_dead():
    left, right = socket.socketpair()  # nobody speaks HTTP/2 on the right side
    try:
        fast = HboneSettings(max_header_list_size=16 * 1024, ping_interval=0.02, ping_timeout=0.05)
        client = HboneClient.from_streams(
            *await asyncio.open_connection(sock=left), peer_identity=TEST_SERVER_ID, settings=fast
        )
        await poll(lambda: client.closed)
        assert "keepalive" in client.close_reason
        await client.aclose()
    finally:
        right.close()


def test_mtls_round_trip_under_uvloop(ca):
    """The binaries run on uvloop: the accept path and the client must work there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> bytes:
        async with mtls_server(ca, echo) as server:
            client = await mtls_client(ca, server.port)
            try:
                stream = await client.open_tunnel("127.0.0.1:9")
                await stream.send_all(b"on uvloop")
                await stream.send_eof()
                return await asyncio.wait_for(read_all(stream), 10)
            finally:
                await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == b"on uvloop"


async def test_connect_dials_from_a_socket_the_caller_prepared(ca):
    seen: list[TunnelRequest] = []

    async def record(request: TunnelRequest) -> None:
        seen.append(request)
        await echo(request)

    async with mtls_server(ca, record) as server:
        prepared = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        prepared.bind(("127.0.0.1", 0))  # as a pod-netns or source-IP-bound socket would be
        source = prepared.getsockname()
        client = await HboneClient.connect(
            "127.0.0.1", server.port, ssl_context=client_context(ca.issue(CLIENT_ID)),
            verify=lambda der: verify_peer(der, expected=[SERVER_ID]), sock=prepared,
        )
        stream = await client.open_tunnel("127.0.0.1:9")
        await stream.send_eof()
        assert await read_all(stream) == b""
        await client.aclose()
    assert seen[0].peer_address == source and seen[0].local_address == ("127.0.0.1", server.port)


async def test_connect_to_a_closed_port_is_a_connection_error(ca):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with pytest.raises(HboneConnectionError, match="TCP connect"):
        await mtls_client(ca, port)


async def test_closing_a_finished_stream_with_unread_bytes_gives_their_window_back():
    async def talk_and_finish(request: TunnelRequest) -> None:
        stream = await request.accept()
        await stream.send_all(bytes(100_000))
        await stream.send_eof()
        assert await read_all(stream) == b""

    async with socketpair_client(talk_and_finish) as client:
        stream = await client.open_tunnel("10.0.0.2:80")
        await stream.send_eof()
        await poll(lambda: stream.finished)  # both directions ended; 100 kB still unread
        assert client.conn.open_tunnels == 1  # the connection still counts the unacknowledged bytes
        await stream.aclose()
        assert client.conn.open_tunnels == 0

"""relay() between TcpStreams and HBONE tunnels (the callback splice): the same contract as the copying
relay (half-close, counters, errors, cancel), plus back-pressure and bytes buffered before the splice.

Loopback TCP and socketpairs only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from meshcore.aio.hbone_server import TunnelRequest
from meshcore.aio.relay import RelayCounters, relay, start_relay
from meshcore.aio.streams import PipeEnd, TcpStream
from meshcore.hbone import TunnelResetError
from meshcore.testing.pairs import hbone_socketpair

MiB = 1 << 20
DEADLINE = 10.0


async def tcp_pair(*, tcp: bool = False) -> tuple[TcpStream, TcpStream]:
    if tcp:  # loopback TCP: needed where a real RST matters
        with socket.create_server(("127.0.0.1", 0)) as listener:
            left = socket.create_connection(listener.getsockname())
            right, _ = listener.accept()
    else:
        left, right = socket.socketpair()
    return await TcpStream.from_socket(left), await TcpStream.from_socket(right)


async def read_all(stream: TcpStream) -> bytes:
    chunks = []
    async with asyncio.timeout(DEADLINE):
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def spliced(
    counters: RelayCounters | None = None, *, tcp: bool = False
) -> AsyncIterator[tuple[TcpStream, TcpStream, asyncio.Task[tuple[int, int]]]]:
    """client <-> (a) relay (b) <-> server over TcpStreams; yields (client, server, relay task)."""
    client, a = await tcp_pair(tcp=tcp)
    b, server = await tcp_pair(tcp=tcp)
    task = asyncio.create_task(relay(a, b, counters))
    try:
        yield client, server, task
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        for stream in (client, a, b, server):
            await stream.aclose()


async def test_tcp_streams_and_hbone_streams_are_spliced_without_tasks():
    a, b = await tcp_pair()
    try:
        assert isinstance(a, PipeEnd) and isinstance(b, PipeEnd)
        before = len(asyncio.all_tasks())
        task = asyncio.create_task(relay(a, b))
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == before + 1  # the relay itself, no copy tasks
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await a.aclose()
        await b.aclose()


async def test_eof_one_way_half_closes_the_other_side_and_the_reverse_keeps_flowing():
    counters = RelayCounters()
    async with spliced(counters) as (client, server, task):
        await client.send_all(b"request")
        await client.send_eof()
        assert await read_all(server) == b"request"
        assert not task.done()
        await server.send_all(b"late response")
        await server.send_eof()
        assert await read_all(client) == b"late response"
        assert await asyncio.wait_for(task, DEADLINE) == (7, 13)
    assert (counters.a_to_b, counters.b_to_a) == (7, 13)


async def test_bytes_and_eof_buffered_before_the_splice_are_relayed_first():
    client, a = await tcp_pair()
    b, server = await tcp_pair()
    try:
        await client.send_all(b"early")
        await client.send_eof()
        async with asyncio.timeout(DEADLINE):
            while not a._chunks or not a._eof_received:  # noqa: SLF001, ASYNC110 - bounded poll
                await asyncio.sleep(0.005)
        task = asyncio.create_task(relay(a, b))
        assert await read_all(server) == b"early"
        await server.send_eof()
        assert await asyncio.wait_for(task, DEADLINE) == (5, 0)
    finally:
        for stream in (client, a, b, server):
            await stream.aclose()


async def test_a_slow_reader_pauses_the_source_and_nothing_is_lost():
    async with spliced() as (client, server, task):
        payload = bytes(range(256)) * (32 * 4096)  # 32 MiB
        sending = asyncio.create_task(client.send_all(payload))
        async with asyncio.timeout(DEADLINE):
            while not server._read_paused:  # noqa: SLF001, ASYNC110 - the server stopped reading: full
                await asyncio.sleep(0.005)
        assert not sending.done()  # back-pressure reached the client instead of piling up in the relay
        got = bytearray(await server.receive_some())
        await client.send_eof()
        got += await read_all(server)
        await asyncio.wait_for(sending, DEADLINE)
        assert bytes(got) == payload
        await server.send_eof()
        await asyncio.wait_for(task, DEADLINE)


async def test_a_reset_on_one_side_stops_both_directions_and_the_error_is_raised():
    async with spliced(tcp=True) as (client, _server, task):
        sock = client.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.abort()  # a real RST towards the relay's "a" side
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(DEADLINE):
                await task


async def test_cancelling_the_splice_returns_the_streams_to_pull_mode():
    client, a = await tcp_pair()
    b, server = await tcp_pair()
    try:
        task = asyncio.create_task(relay(a, b))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.send_all(b"after the relay")
        async with asyncio.timeout(DEADLINE):
            assert await a.receive_some() == b"after the relay"
    finally:
        for stream in (client, a, b, server):
            await stream.aclose()


# --- TCP <-> HBONE -------------------------------------------------------------------------------------


async def _echo(request: TunnelRequest) -> None:
    stream = await request.accept()
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    await stream.send_all(b"".join(chunks))
    await stream.send_eof()


async def test_tcp_to_hbone_carries_a_large_transfer_both_ways_through_the_windows():
    client, server_task = await hbone_socketpair(_echo)
    app, relay_side = await tcp_pair()
    try:
        tunnel = await client.open_tunnel("10.0.0.2:80")
        relaying = asyncio.create_task(relay(relay_side, tunnel))
        payload = bytes(range(256)) * (40 * 4096)  # 40 MiB: more than the 16 MiB connection window
        sending = asyncio.create_task(app.send_all(payload))
        await asyncio.wait_for(sending, DEADLINE)
        await app.send_eof()
        assert await read_all(app) == payload
        assert await asyncio.wait_for(relaying, DEADLINE) == (len(payload), len(payload))
        assert tunnel.finished
    finally:
        await app.aclose()
        await relay_side.aclose()
        await client.aclose()
        await asyncio.wait_for(server_task, DEADLINE)


async def test_a_tunnel_reset_by_the_peer_ends_the_splice_with_its_error():
    accepted = asyncio.Event()

    async def reset_after_accept(request: TunnelRequest) -> None:
        stream = await request.accept()
        accepted.set()
        await stream.receive_some()
        await stream.aclose()  # RST_STREAM(CANCEL)

    client, server_task = await hbone_socketpair(reset_after_accept)
    app, relay_side = await tcp_pair()
    try:
        tunnel = await client.open_tunnel("10.0.0.2:80")
        relaying = asyncio.create_task(relay(relay_side, tunnel))
        await app.send_all(b"anyone there?")
        with pytest.raises(TunnelResetError):
            await asyncio.wait_for(relaying, DEADLINE)
    finally:
        await app.aclose()
        await relay_side.aclose()
        await client.aclose()
        await asyncio.wait_for(server_task, DEADLINE)


async def test_a_slow_tcp_reader_withholds_the_tunnel_window_from_the_sender():
    payload = bytes(range(256)) * (48 * 4096)  # 48 MiB: more than the windows and the socket buffers
    sent_all = asyncio.Event()

    async def firehose(request: TunnelRequest) -> None:
        stream = await request.accept()
        await stream.send_all(payload)
        sent_all.set()
        await stream.send_eof()
        await stream.receive_some()

    client, server_task = await hbone_socketpair(firehose)
    app, relay_side = await tcp_pair()
    try:
        tunnel = await client.open_tunnel("10.0.0.2:80")
        relaying = asyncio.create_task(relay(relay_side, tunnel))
        async with asyncio.timeout(DEADLINE):
            while not tunnel._paused:  # noqa: SLF001, ASYNC110 - the app side is congested
                await asyncio.sleep(0.005)
        assert not sent_all.is_set()  # the sender waits for window instead of us buffering 48 MiB
        assert await read_all_with_eof(app, app) == payload
        assert sent_all.is_set()
        await asyncio.wait_for(relaying, DEADLINE)
    finally:
        await app.aclose()
        await relay_side.aclose()
        await client.aclose()
        await asyncio.wait_for(server_task, DEADLINE)


async def read_all_with_eof(reader: TcpStream, writer: TcpStream) -> bytes:
    """Read to EOF, then half-close ``writer`` so the relay can finish."""
    data = await read_all(reader)
    await writer.send_eof()
    return data


async def test_start_relay_hands_back_a_future_whose_cancel_ends_the_splice():
    client, a = await tcp_pair()
    b, server = await tcp_pair()
    try:
        running = start_relay(a, b)
        assert isinstance(running, asyncio.Future)  # no coroutine frame kept per idle relay
        running.cancel()
        await asyncio.sleep(0)
        await client.send_all(b"not relayed any more")
        async with asyncio.timeout(DEADLINE):
            assert await a.receive_some() == b"not relayed any more"
    finally:
        for stream in (client, a, b, server):
            await stream.aclose()


async def test_a_tunnel_handler_may_hand_its_relay_over_and_the_connection_ending_stops_it():
    ends: list[TcpStream] = []
    stopped = asyncio.Event()

    async def relay_to_a_socketpair(request: TunnelRequest) -> asyncio.Future[tuple[int, int]]:
        near, far = await tcp_pair()
        ends.append(far)
        tunnel = await request.accept()
        running = start_relay(tunnel, near)
        assert isinstance(running, asyncio.Future)
        running.add_done_callback(lambda _: (near.close(), stopped.set()))
        return running

    client, server_task = await hbone_socketpair(relay_to_a_socketpair)
    try:
        tunnel = await client.open_tunnel("10.0.0.2:80")
        await tunnel.send_all(b"through a handed-over relay")
        async with asyncio.timeout(DEADLINE):
            while not ends:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.005)
            assert await ends[0].receive_some() == b"through a handed-over relay"
            await ends[0].send_all(b"back")
            assert await tunnel.receive_some() == b"back"  # the handler's task is gone, the tunnel is not
            await client.aclose()  # the HBONE connection ends: the relay is stopped with it
            await stopped.wait()
    finally:
        await client.aclose()
        await asyncio.wait_for(server_task, DEADLINE)
        for far in ends:
            await far.aclose()

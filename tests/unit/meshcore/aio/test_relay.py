"""relay(): half-close, live counters, buffer growth and failure handling, over real socket pairs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest

from meshcore.aio.relay import MAX_BUFFER, MIN_BUFFER, RelayCounters, relay
from meshcore.aio.streams import AsyncioByteStream

MiB = 1 << 20


async def stream_pair(*, tcp: bool = False) -> tuple[AsyncioByteStream, AsyncioByteStream]:
    if tcp:  # loopback TCP: needed where a real RST matters
        with socket.create_server(("127.0.0.1", 0)) as listener:
            left = socket.create_connection(listener.getsockname())
            right, _ = listener.accept()
    else:
        left, right = socket.socketpair()
    return (
        AsyncioByteStream(*await asyncio.open_connection(sock=left)),
        AsyncioByteStream(*await asyncio.open_connection(sock=right)),
    )


async def read_all(stream: AsyncioByteStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


class RecordingStream:
    """A ByteStream wrapper that records the read sizes relay asks for."""

    def __init__(self, inner: AsyncioByteStream) -> None:
        self.inner = inner
        self.asked: list[int] = []

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        self.asked.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def relayed(counters: RelayCounters | None = None, *, wrap=lambda s: s, tcp: bool = False):
    """client <-> (a) relay (b) <-> server; yields (client, server, relay task)."""
    client, a = await stream_pair(tcp=tcp)
    b, server = await stream_pair(tcp=tcp)
    task = asyncio.create_task(relay(wrap(a), b, counters))
    try:
        yield client, server, task
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        for stream in (client, a, b, server):
            await stream.aclose()


async def test_eof_one_way_half_closes_the_other_side_and_the_reverse_direction_keeps_flowing():
    counters = RelayCounters()
    async with relayed(counters) as (client, server, task):
        await client.send_all(b"request")
        await client.send_eof()
        assert await asyncio.wait_for(read_all(server), 5) == b"request"  # EOF arrived
        assert not task.done()  # server -> client is still open
        await server.send_all(b"late response")
        await server.send_eof()
        assert await asyncio.wait_for(read_all(client), 5) == b"late response"
        assert await asyncio.wait_for(task, 5) == (7, 13)
    assert (counters.a_to_b, counters.b_to_a) == (7, 13)


async def test_server_can_finish_first():
    async with relayed() as (client, server, task):
        await server.send_all(b"banner")
        await server.send_eof()
        assert await asyncio.wait_for(read_all(client), 5) == b"banner"
        await client.send_all(b"bye")
        await client.send_eof()
        assert await asyncio.wait_for(read_all(server), 5) == b"bye"
        assert await asyncio.wait_for(task, 5) == (3, 6)


async def test_counters_move_while_the_relay_runs():
    counters = RelayCounters()
    async with relayed(counters) as (client, server, task):
        await client.send_all(b"x" * 1000)
        async with asyncio.timeout(5):
            while counters.a_to_b < 1000:  # noqa: ASYNC110 (bounded poll of a live counter)
                await asyncio.sleep(0.005)
        assert not task.done() and counters.b_to_a == 0
        assert await server.receive_some(1000) == b"x" * 1000


async def test_read_size_grows_from_16k_to_256k_on_a_busy_stream():
    recorder: list[RecordingStream] = []

    def wrap(stream):
        recorder.append(RecordingStream(stream))
        return recorder[0]

    async with relayed(wrap=wrap) as (client, server, task):
        reader = asyncio.create_task(read_all(server))
        await client.send_all(bytes(16 * MiB))
        await client.send_eof()
        assert len(await asyncio.wait_for(reader, 10)) == 16 * MiB
        await server.send_eof()
        await asyncio.wait_for(task, 5)
    asked = recorder[0].asked
    assert asked[0] == MIN_BUFFER and max(asked) == MAX_BUFFER
    assert all(later >= earlier for earlier, later in zip(asked, asked[1:], strict=False))


async def test_a_reset_on_one_side_stops_both_directions_and_the_error_is_raised():
    async with relayed(tcp=True) as (client, server, task):
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.writer.transport.abort()  # close with linger 0: a real RST towards the relay's "a" side
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                await task  # the idle server -> client direction must not keep the relay alive


async def test_cancelling_the_relay_stops_both_directions():
    async with relayed() as (_, _server, task):
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

"""TcpStream read by hand (pull mode) and served by a TcpListener: the paths SOCKS5 and the listeners use."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable

import pytest

from meshcore.aio.listener import TcpListener
from meshcore.aio.relay import start_relay
from meshcore.aio.streams import PULL_BUFFER_HIGH, TcpStream

DEADLINE = 5.0


async def pair() -> tuple[TcpStream, TcpStream]:
    left, right = socket.socketpair()
    return await TcpStream.from_socket(left), await TcpStream.from_socket(right)


async def test_receive_some_returns_at_most_what_was_asked_and_keeps_the_rest_in_order():
    a, b = await pair()
    try:
        await a.send_all(b"0123456789")
        async with asyncio.timeout(DEADLINE):
            assert await b.receive_some(4) == b"0123"
            assert await b.receive_some(100) == b"456789"
        await a.send_eof()
        async with asyncio.timeout(DEADLINE):
            assert await b.receive_some() == b""
            assert await b.receive_some() == b""  # EOF stays EOF
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_full_unread_buffer_stops_reading_from_the_socket_until_drained():
    a, b = await pair()
    try:
        writer = asyncio.create_task(a.send_all(bytes(8 * PULL_BUFFER_HIGH)))
        async with asyncio.timeout(DEADLINE):
            while not b._read_paused:  # noqa: SLF001, ASYNC110 - bounded poll
                await asyncio.sleep(0.005)
        assert b._buffered < 2 * PULL_BUFFER_HIGH  # noqa: SLF001 - it stopped, not buffered everything
        total = 0
        async with asyncio.timeout(DEADLINE):
            while total < 8 * PULL_BUFFER_HIGH:
                total += len(await b.receive_some())
        await asyncio.wait_for(writer, DEADLINE)
    finally:
        await a.aclose()
        await b.aclose()


async def test_sending_after_eof_or_loss_raises():
    a, b = await pair()
    await a.send_eof()
    with pytest.raises(BrokenPipeError):
        await a.send_all(b"x")
    b.abort()
    await a.aclose()


class Upper(TcpListener):
    async def _serve(self, stream: TcpStream) -> None:
        data = await stream.receive_some()
        if data == b"boom":
            raise RuntimeError("a bug in one connection")
        await stream.send_all(data.upper())
        await stream.aclose()

    def _log_failure(self) -> None:
        self.failures = getattr(self, "failures", 0) + 1


async def test_tcp_listener_serves_each_connection_and_a_bug_costs_only_that_one():
    listener = Upper(socket.create_server(("127.0.0.1", 0)))
    await listener.start()
    try:
        async with asyncio.timeout(DEADLINE):
            bad = await TcpStream.open(*listener.address)
            await bad.send_all(b"boom")
            assert await bad.receive_some() == b""  # reset or closed, never answered
            good = await TcpStream.open(*listener.address)
            await good.send_all(b"hello")
            assert await good.receive_some() == b"HELLO"
        assert listener.failures == 1
        await bad.aclose()
        await good.aclose()
    finally:
        await listener.aclose()
    assert listener.active == 0


class HandsBack(TcpListener):
    """Answers after the handler returned: the listener awaits what ``_serve`` handed back."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(listener)
        self.go = asyncio.Event()

    async def _serve(self, stream: TcpStream) -> Awaitable[None] | None:
        await stream.receive_some()
        return self._answer(stream)

    async def _answer(self, stream: TcpStream) -> None:
        await self.go.wait()
        await stream.send_all(b"late")
        await stream.aclose()


async def test_a_handler_may_hand_back_its_last_step_and_the_listener_tracks_it():
    listener = HandsBack(socket.create_server(("127.0.0.1", 0)))
    await listener.start()
    try:
        async with asyncio.timeout(DEADLINE):
            client = await TcpStream.open(*listener.address)
            await client.send_all(b"hi")
            while listener.active != 1:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.005)
            listener.go.set()
            assert await client.receive_some() == b"late"
            while listener.active:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.005)
        await client.aclose()
    finally:
        await listener.aclose()


class Relayer(TcpListener):
    """Relays each connection to the other end of a socketpair, handing the relay over to the listener."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(listener)
        self.far_ends: list[TcpStream] = []

    async def _serve(self, stream: TcpStream) -> Awaitable[object] | None:
        return self._start(stream)

    async def _start(self, stream: TcpStream) -> asyncio.Future[tuple[int, int]]:
        near, far = await pair()
        self.far_ends.append(far)
        running = start_relay(stream, near)
        assert isinstance(running, asyncio.Future)
        running.add_done_callback(lambda _: (stream.close(), near.close()))  # the relay's owner closes
        return running


async def test_a_relay_handed_over_runs_without_a_task_and_the_listener_still_owns_it():
    listener = Relayer(socket.create_server(("127.0.0.1", 0)))
    await listener.start()
    before = len(asyncio.all_tasks())
    try:
        async with asyncio.timeout(DEADLINE):
            client = await TcpStream.open(*listener.address)
            await client.send_all(b"ping")
            while not listener.far_ends:  # noqa: ASYNC110 - bounded poll
                await asyncio.sleep(0.005)
            far = listener.far_ends[0]
            assert await far.receive_some() == b"ping"
            while len(asyncio.all_tasks()) != before:  # noqa: ASYNC110 - the handler's task ends
                await asyncio.sleep(0.005)
            assert listener.active == 1  # the relay's future is what the listener tracks now
            await far.send_all(b"pong")
            assert await client.receive_some() == b"pong"
            await listener.aclose()  # cancels the relay, whose callback closes the connection
            assert await client.receive_some() == b""
            assert listener.active == 0
        await client.aclose()
        await far.aclose()
    finally:
        await listener.aclose()


async def test_close_without_waiting_aborts_a_connection_whose_peer_stopped_reading(monkeypatch):
    from meshcore.aio import streams

    monkeypatch.setattr(streams, "CLOSE_TIMEOUT", 0.05)
    a, b = await pair()
    try:
        a.transport.write(bytes(32 << 20))  # more than the socket buffers: some stays in the transport
        assert a.transport.get_write_buffer_size() > 0
        a.close()  # graceful first: flush, then FIN
        async with asyncio.timeout(DEADLINE):
            while not a._lost:  # noqa: SLF001, ASYNC110 - bounded poll: aborted after the close timeout
                await asyncio.sleep(0.01)
    finally:
        a.abort()
        b.abort()

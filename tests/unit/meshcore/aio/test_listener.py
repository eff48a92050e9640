"""TrackedListener and ConnectionTasks: a bug costs one connection, drain waits until a deadline, aclose ends
every connection now, a listener never started still releases its socket. Loopback TCP only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from meshcore.aio.listener import ConnectionTasks, TrackedListener
from meshcore.aio.streams import AsyncioByteStream

DEADLINE = 5.0  # seconds any single wait in these tests may take before it is a failure


class Echo(TrackedListener):
    """Echoes one line per connection; ``boom`` raises; ``hold`` waits for ``release`` first."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(listener)
        self.release = asyncio.Event()
        self.serving = asyncio.Event()
        self.failures = 0

    async def _serve(self, stream: AsyncioByteStream) -> None:
        line = await stream.reader.readline()
        self.serving.set()
        if line == b"boom\n":
            raise RuntimeError("a bug in one connection")
        if line == b"hold\n":
            await self.release.wait()
        await stream.send_all(line)
        await stream.aclose()

    def _log_failure(self) -> None:
        self.failures += 1


@contextlib.asynccontextmanager
async def echo_listener() -> AsyncIterator[Echo]:
    listener = Echo(socket.create_server(("127.0.0.1", 0)))
    await listener.start()
    try:
        yield listener
    finally:
        await listener.aclose()


async def ask(listener: Echo, line: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*listener.address)
    writer.write(line)
    await writer.drain()
    return reader, writer


async def answer(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(DEADLINE):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b"<reset>"


async def test_a_bug_in_one_connection_resets_it_and_the_listener_serves_the_next() -> None:
    async with echo_listener() as listener:
        bad, bad_w = await ask(listener, b"boom\n")
        assert await answer(bad) in (b"", b"<reset>")
        good, good_w = await ask(listener, b"hello\n")
        assert await answer(good) == b"hello\n"
        assert listener.failures == 1
        bad_w.close()
        good_w.close()


async def test_drain_waits_for_a_live_connection_that_ends_before_the_deadline() -> None:
    async with echo_listener() as listener:
        reader, writer = await ask(listener, b"hold\n")
        async with asyncio.timeout(DEADLINE):
            await listener.serving.wait()
        assert listener.active == 1
        loop = asyncio.get_running_loop()
        drain = asyncio.create_task(listener.drain(loop.time() + DEADLINE))
        await asyncio.sleep(0)
        assert not drain.done()  # still waiting for the held connection
        listener.release.set()
        async with asyncio.timeout(DEADLINE):
            await drain
        assert await answer(reader) == b"hold\n"
        assert listener.active == 0
        writer.close()


async def test_drain_returns_at_the_deadline_and_aclose_ends_what_is_left() -> None:
    async with echo_listener() as listener:
        reader, writer = await ask(listener, b"hold\n")
        async with asyncio.timeout(DEADLINE):
            await listener.serving.wait()
        loop = asyncio.get_running_loop()
        await listener.drain(loop.time() + 0.05)
        assert listener.active == 1  # past the deadline, the connection still runs
        await listener.aclose()
        assert listener.active == 0
        assert await answer(reader) in (b"", b"<reset>")
        assert listener.failures == 0  # a cancel is not a bug
        writer.close()


async def test_a_closed_listener_refuses_new_connections() -> None:
    async with echo_listener() as listener:
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*listener.address)


async def test_closing_a_listener_never_started_releases_its_socket() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    listener = Echo(sock)
    listener.close()
    assert sock.fileno() == -1
    await listener.aclose()


async def test_spawned_tasks_are_forgotten_once_done_and_cancel_ends_the_rest() -> None:
    tasks = ConnectionTasks()
    never = asyncio.Event()
    quick = tasks.spawn(asyncio.sleep(0))

    async def wait_forever() -> None:
        await never.wait()

    stuck = tasks.spawn(wait_forever())
    await quick
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert len(tasks) == 1
    await tasks.cancel()
    assert stuck.cancelled()
    assert len(tasks) == 0

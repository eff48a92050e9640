"""How the waypoint's HTTP engine writes a response downstream: a head that arrived with its body goes
out in the same write as the body (one HBONE DATA frame, one TLS record), and a head whose body is
still on its way goes out at once (a streaming response is never held back waiting for its body).

The downstream is a scripted ``ByteStream`` that keeps each ``send_all`` apart; the upstream is a real
TCP server on 127.0.0.1 that writes the response as each test says.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from waypoint.l7 import (
    ConnectionFacts,
    Detected,
    Forward,
    HttpLimits,
    Request,
    TcpUpstreamPool,
    Upstreams,
    serve_http,
)

HOST = "127.0.0.1"
DEADLINE = 10.0
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
BODY = b"hello"
REQUEST = b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n"

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class ScriptedDownstream:
    """The downstream as the engine sees it: hands out the request, keeps every write apart."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.writes: list[bytes] = []
        self.wrote = asyncio.Condition()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        return await self.incoming.get()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self.wrote:
            self.writes.append(bytes(data))
            self.wrote.notify_all()

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        self.incoming.put_nowait(b"")

    async def wait_for(self, wanted: bytes) -> None:
        async with asyncio.timeout(DEADLINE), self.wrote:
            await self.wrote.wait_for(lambda: wanted in b"".join(self.writes))


class OneUpstream:
    def __init__(self, port: int) -> None:
        self.port = port

    def decide(self, request: Request) -> Forward:
        return Forward((HOST, self.port), label=f"{HOST}:{self.port}")


@pytest.fixture
async def engine() -> AsyncIterator[Callable[[Answer], Awaitable[ScriptedDownstream]]]:
    """``await engine(answer)``: one downstream connection sending one GET; the upstream answers with
    ``answer(writer)``."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(answer: Answer) -> ScriptedDownstream:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await answer(writer)
            await writer.drain()
            await reader.read()  # keep-alive: the engine holds the connection until the end
            writer.close()

        server = await asyncio.start_server(serve, HOST, 0)
        pool = TcpUpstreamPool()
        upstreams = Upstreams(pool, HttpLimits())
        down = ScriptedDownstream()
        down.incoming.put_nowait(REQUEST)
        task = asyncio.get_running_loop().create_task(serve_http(
            down, first_bytes=b"", protocol=Detected.HTTP1, handler=OneUpstream(server.sockets[0].getsockname()[1]),
            upstreams=upstreams, connection=ConnectionFacts(HOST, 40000, "10.96.0.10:80"),
        ))

        async def stop() -> None:
            await down.aclose()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), DEADLINE)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await upstreams.aclose()
            await pool.aclose()
            server.close()
            await server.wait_closed()

        cleanups.append(stop)
        return down

    try:
        yield start
    finally:
        for stop in cleanups:
            await stop()


async def test_a_head_that_arrived_with_its_body_goes_downstream_in_the_same_write(engine):
    async def together(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + BODY)

    down = await engine(together)
    await down.wait_for(BODY)
    assert len(down.writes) == 1, down.writes
    assert down.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and down.writes[0].endswith(b"\r\n\r\n" + BODY)


async def test_a_head_whose_body_is_late_goes_downstream_before_the_body_arrives(engine):
    release = asyncio.Event()

    async def head_then_body(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        await writer.drain()
        await release.wait()
        writer.write(BODY)

    down = await engine(head_then_body)
    await down.wait_for(b"content-length: 5\r\n")  # the head, while the upstream still holds the body
    assert BODY not in b"".join(down.writes)
    release.set()
    await down.wait_for(BODY)
    assert b"".join(down.writes).endswith(b"\r\n\r\n" + BODY)

"""EchoBackend: a keep-alive HTTP/1.1 backend on loopback that tests can tell to fail, delay or count.

Each request is answered with JSON ``{"backend": name, "method", "path", "host", "body"}`` unless a
rule says otherwise: ``fail_every=n`` answers every n-th request (1: all) with ``fail_status``;
``delay`` holds every answer that many seconds (or until ``close``); ``reset=True`` closes the connection without answering.
Every request is recorded in ``requests`` (method, path, host, body) and ``seen`` is an event set on each
one, so tests await arrivals instead of sleeping. Small on purpose: Content-Length bodies only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field


@dataclass
class Seen:
    method: str
    path: str
    host: str
    body: bytes
    headers: dict[str, str]


@dataclass
class EchoBackend:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    fail_every: int = 0
    fail_status: int = 503
    delay: float = 0.0
    reset: bool = False
    requests: list[Seen] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set by close(): delayed answers go now
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> EchoBackend:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a test deadline
        """Wait (real time, bounded) until at least ``count`` requests arrived."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.seen.clear()
                await self.seen.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, path, _ = lines[0].split(" ", 2)
                    headers = {}
                    for line in lines[1:]:
                        name, sep, value = line.partition(":")
                        if sep:
                            headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0") or 0)
                    body = await reader.readexactly(length) if length else b""
                    self.requests.append(Seen(method, path, headers.get("host", ""), body, headers))
                    self.seen.set()
                    n = len(self.requests)
                    if self.delay:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.delay):
                                await self.released.wait()
                    if self.reset:
                        return
                    if self.fail_every and n % self.fail_every == 0:
                        status, answer = self.fail_status, b"failing on purpose"
                    else:
                        status = 200
                        answer = json.dumps({"backend": self.name, "method": method, "path": path,
                                             "host": headers.get("host", ""), "body": body.decode("latin-1")}).encode()
                    writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                                 % (status, len(answer)) + answer)
                    await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

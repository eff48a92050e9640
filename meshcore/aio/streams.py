"""The byte-stream interface the data path relays between, and its adapter over asyncio streams.

``ByteStream`` is what ``relay`` needs and what both a TCP connection and an HBONE tunnel offer:
``receive_some`` (``b""`` means the peer finished sending), ``send_all``, ``send_eof`` (half-close:
our direction ends, the other keeps flowing) and ``aclose``. Errors surface as ``ConnectionError``
subclasses. ``AsyncioByteStream`` wraps a StreamReader/StreamWriter pair and sets TCP_NODELAY.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol, runtime_checkable

DEFAULT_READ = 256 * 1024
CLOSE_TIMEOUT = 5.0  # seconds a graceful close may take before the connection is aborted


@runtime_checkable
class ByteStream(Protocol):
    """A bidirectional byte stream with half-close."""

    async def receive_some(self, max_bytes: int = DEFAULT_READ) -> bytes:
        """Up to ``max_bytes`` bytes, waiting for at least one; ``b""`` once the peer sent EOF."""
        ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send every byte, waiting for buffer space (back-pressure)."""
        ...

    async def send_eof(self) -> None:
        """Finish our direction; receiving keeps working. Idempotent."""
        ...

    async def aclose(self) -> None:
        """Release the stream (abort it if it is not finished). Idempotent."""
        ...


class AsyncioByteStream:
    """``ByteStream`` over an asyncio StreamReader/StreamWriter (a TCP connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._eof_sent = False
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    async def connect(cls, host: str, port: int, *, limit: int = DEFAULT_READ) -> AsyncioByteStream:
        """Open a TCP connection (no TLS)."""
        reader, writer = await asyncio.open_connection(host, port, limit=limit)
        return cls(reader, writer)

    async def receive_some(self, max_bytes: int = DEFAULT_READ) -> bytes:
        return await self.reader.read(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise BrokenPipeError("send_all after send_eof")
        self.writer.write(data)
        await self.writer.drain()

    async def send_eof(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        if self.writer.can_write_eof() and not self.writer.is_closing():
            await self.writer.drain()
            self.writer.write_eof()

    async def aclose(self) -> None:
        if self.writer.is_closing():
            return
        self.writer.close()  # flushes what is buffered, then FIN
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()  # a peer that stopped reading must not pin us

    def abort(self) -> None:
        """Drop the connection now (RST), discarding unsent bytes: for relays that failed."""
        self.writer.transport.abort()

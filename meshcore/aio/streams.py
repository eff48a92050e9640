"""The byte-stream interface the data path relays between, and its TCP implementations.

``ByteStream`` is what ``relay`` needs and what both a TCP connection and an HBONE tunnel offer:
``receive_some`` (``b""`` means the peer finished sending), ``send_all``, ``send_eof`` (half-close:
our direction ends, the other keeps flowing) and ``aclose``. Errors surface as ``ConnectionError``
subclasses.

``TcpStream`` is the data path's TCP connection: an ``asyncio.Protocol`` with no StreamReader behind it
(received ``bytes`` are kept as they arrive, never copied into a buffer), TCP_NODELAY (the event loop
sets it), and the pipe
interface (``PipeEnd``) through which ``relay`` splices two streams with callbacks: each received chunk
goes straight to the other side's transport, back-pressure pauses the source (``pause_reading`` or a
withheld HBONE window) instead of a task waiting. ``AsyncioByteStream`` wraps a StreamReader/StreamWriter
pair, for code that wants ``readline`` and friends; ``relay`` copies such streams with tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Protocol, cast, runtime_checkable

DEFAULT_READ = 256 * 1024
CLOSE_TIMEOUT = 5.0  # seconds a graceful close may take before the connection is aborted
# A pulled TcpStream stops reading from the socket while this much is buffered and unread.
PULL_BUFFER_HIGH = 256 * 1024


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


class Pipe(Protocol):
    """One direction of a splice, as its two ends see it (implemented by ``meshcore.aio.relay``)."""

    def data(self, chunk: bytes | memoryview) -> None:
        """The source received ``chunk``: write it to the sink now."""

    def eof(self) -> None:
        """The source reached EOF: half-close the sink."""

    def fail(self, error: BaseException) -> None:
        """Either end broke: the splice ends with ``error``."""

    def writable(self) -> None:
        """The sink, congested before, takes data again: resume the source."""

    def flushed(self) -> None:
        """The sink has sent its EOF (after everything queued before it): this direction is done."""


@runtime_checkable
class PipeEnd(Protocol):
    """What ``relay`` needs to splice a stream with callbacks instead of tasks. Not for applications."""

    def pipe_out(self, pipe: Pipe) -> None:
        """Deliver what is buffered, then every received chunk, EOF or error, to ``pipe`` (as its source)."""

    def pipe_in(self, pipe: Pipe) -> None:
        """Be the sink of ``pipe``: call ``pipe.writable()`` / ``pipe.flushed()`` when due."""

    def pipe_write(self, data: bytes | memoryview) -> bool:
        """Send ``data`` (never blocks; may queue); False when the source should pause for now."""

    def pipe_eof(self) -> bool:
        """Half-close after what is queued; True if done now, else ``pipe.flushed()`` follows."""

    def pipe_pause(self) -> None:
        """Stop delivering to the pipe until ``pipe_resume`` (flow control toward our peer)."""

    def pipe_resume(self) -> None: ...

    def unpipe(self) -> None:
        """Leave the splice: received data is buffered for ``receive_some`` again."""


class TcpStream(asyncio.Protocol):
    """A TCP connection as a ``ByteStream`` and ``PipeEnd`` (see the module docstring).

    Build with ``open``/``from_socket``, or pass the class as a protocol factory (``on_connected`` is
    called once the transport is attached: listeners start serving there).
    """

    __slots__ = (
        "_chunks", "_buffered", "_transport", "_eof_received", "_eof_sent", "_lost", "_error",
        "_read_paused", "_write_paused", "_read_waiter", "_drain_waiter", "_closed_waiter",
        "_source", "_sink", "_on_connected",
    )

    def __init__(self, on_connected: Any = None) -> None:
        self._transport: asyncio.Transport | None = None
        self._chunks: list[bytes] | None = None  # received, not yet read (pull mode); None while empty
        self._buffered = 0
        self._eof_received = False
        self._eof_sent = False
        self._lost = False
        self._error: BaseException | None = None
        self._read_paused = False
        self._write_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._source: Pipe | None = None  # the pipe we feed (we are its source)
        self._sink: Pipe | None = None  # the pipe feeding us (we are its sink)
        self._on_connected = on_connected

    @classmethod
    async def open(cls, host: str, port: int) -> TcpStream:
        """Open a TCP connection (no TLS)."""
        _, stream = await asyncio.get_running_loop().create_connection(cls, host, port)
        return stream

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> TcpStream:
        """Wrap an already connected socket (owned by the stream from then on)."""
        _, stream = await asyncio.get_running_loop().create_connection(cls, sock=sock)
        return stream

    # --- facts -----------------------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``get_extra_info`` (``peername``, ``sockname``, ``socket``...)."""
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None, "not connected yet"
        return self._transport

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # TCP_NODELAY: asyncio and uvloop set it on every TCP transport. (Asking uvloop for the socket
        # here would also cost a socket object per connection.)
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        if self._on_connected is not None:
            on_connected, self._on_connected = self._on_connected, None
            on_connected(self)

    def data_received(self, data: bytes) -> None:
        source = self._source
        if source is not None:
            source.data(data)
            return
        if self._chunks is None:
            self._chunks = [data]
        else:
            self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= PULL_BUFFER_HIGH and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof_received = True
        if self._source is not None:
            self._source.eof()
        else:
            self._wake_reader()
        return True  # keep the transport open: our direction may still be sending (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if exc is not None:
            self._error = exc
        lost = exc if exc is not None else ConnectionResetError("Connection lost")
        if self._source is not None:
            if exc is not None:
                self._source.fail(exc)
            elif not self._eof_received:
                self._eof_received = True
                self._source.eof()
        if self._sink is not None:
            self._sink.fail(lost)
        self._wake_reader()
        for waiter in (self._drain_waiter, self._closed_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._sink is not None:
            self._sink.writable()

    # --- ByteStream ------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int = DEFAULT_READ) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof_received or self._lost:
                return b""
            if self._read_paused:
                self._read_paused = False
                self.transport.resume_reading()
            waiter = asyncio.get_running_loop().create_future()
            self._read_waiter = waiter
            try:
                await waiter
            finally:
                self._read_waiter = None
        chunks = self._chunks
        first = chunks[0]
        if len(first) <= max_bytes:
            if len(chunks) == 1:
                self._chunks = None  # an idle connection keeps no list
            else:
                del chunks[0]
        else:
            chunks[0] = first[max_bytes:]
            first = first[:max_bytes]
        self._buffered -= len(first)
        if self._read_paused and self._buffered < PULL_BUFFER_HIGH // 2:
            self._read_paused = False
            self.transport.resume_reading()
        return first

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise BrokenPipeError("send_all after send_eof")
        if self._lost:
            raise self._error if self._error is not None else ConnectionResetError("Connection lost")
        self.transport.write(data)
        if self._write_paused:
            await self._drain()

    async def send_eof(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        transport = self._transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()  # after what is buffered

    async def aclose(self) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        if not transport.is_closing():
            transport.close()  # flushes what is buffered, then FIN
        waiter = self._closed_waiter
        if waiter is None:
            waiter = self._closed_waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(waiter)
        except TimeoutError:
            transport.abort()  # a peer that stopped reading must not pin us

    def abort(self) -> None:
        """Drop the connection now (RST), discarding unsent bytes: for relays that failed."""
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """``aclose`` without waiting (for callbacks): flush, FIN, and an abort if the connection is not
        gone ``CLOSE_TIMEOUT`` seconds later."""
        transport = self._transport
        if transport is None or self._lost:
            return
        if not transport.is_closing():
            transport.close()
        if transport.get_write_buffer_size():  # nothing buffered: the close completes by itself
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort_unless_lost)

    def _abort_unless_lost(self) -> None:
        if not self._lost:
            self.abort()  # a peer that stopped reading must not pin us

    def abort_if_open(self) -> None:
        """``abort`` unless the connection is already closing (what a listener does after serving)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def abort_if_cancelled(self, task: asyncio.Future[Any]) -> None:
        """Done callback of the task meant to serve this connection: a task cancelled before it ran its
        first step never reached its own cleanup, so the connection is reset here."""
        if task.cancelled():
            self.abort_if_open()

    # --- PipeEnd ---------------------------------------------------------------------------------

    def pipe_out(self, pipe: Pipe) -> None:
        self._source = pipe
        chunks, self._chunks = self._chunks, None
        self._buffered = 0
        for chunk in chunks or ():
            pipe.data(chunk)
        if self._error is not None:
            pipe.fail(self._error)
        elif self._eof_received:
            pipe.eof()
        elif self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def pipe_in(self, pipe: Pipe) -> None:
        self._sink = pipe
        if self._lost:
            pipe.fail(self._error or ConnectionResetError("Connection lost"))

    def pipe_write(self, data: bytes | memoryview) -> bool:
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            raise self._error if self._error is not None else ConnectionResetError("Connection lost")
        transport.write(data)
        return not self._write_paused

    def pipe_eof(self) -> bool:
        if not self._eof_sent:
            self._eof_sent = True
            transport = self._transport
            if transport is not None and not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()
        return True

    def pipe_pause(self) -> None:
        if not self._read_paused and not self._lost:
            self._read_paused = True
            self.transport.pause_reading()

    def pipe_resume(self) -> None:
        if self._read_paused and not self._lost:
            self._read_paused = False
            self.transport.resume_reading()

    def unpipe(self) -> None:
        self._source = None
        self._sink = None

    # --- internals -------------------------------------------------------------------------------

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drain(self) -> None:
        while self._write_paused and not self._lost:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._lost:
            raise self._error if self._error is not None else ConnectionResetError("Connection lost")


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

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.writer.get_extra_info(name, default)

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

    def abort_if_open(self) -> None:
        """``abort`` unless the connection is already closing (what a listener does after serving)."""
        if not self.writer.is_closing():
            self.writer.transport.abort()

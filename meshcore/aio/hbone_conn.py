"""The asyncio driver shared by HBONE clients and servers, and ``HboneStream``, the tunnel it hands out.

One ``HboneDriver`` owns one transport (normally TLS) and one sans-IO connection: a single reader task
feeds received bytes to the connection and dispatches the events to streams; writes go out as soon as
they are produced (one ``write`` per command or per read batch, so frames coalesce naturally); the
keepalive timer follows ``next_deadline()``. When the connection ends, for whatever reason, every
stream fails with ``HboneConnectionError`` and the transport is closed: nothing waits forever.

``HboneStream`` is a ``ByteStream``: received bytes are acknowledged (flow control) only when the app
takes them with ``receive_some``, so a slow reader throttles its own peer and nobody else; ``send_all``
queues what the window allows and waits for ``WindowOpened`` plus transport back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Iterable

import structlog

from meshcore.aio.streams import DEFAULT_READ
from meshcore.hbone import (
    ConnectionClosed,
    ConnectionDraining,
    DataReceived,
    EofReceived,
    HboneClientConn,
    HboneConnectionError,
    HboneEvent,
    HboneServerConn,
    Headers,
    PingAcked,
    TunnelAccepted,
    TunnelRejected,
    TunnelRequested,
    TunnelRequestRefused,
    TunnelReset,
    TunnelResetError,
    WindowOpened,
)
from meshcore.identity import SpiffeId

log = structlog.get_logger("meshcore.hbone")

READ_SIZE = 256 * 1024
# Transport write buffer high-water mark: a few frames in flight before senders wait (asyncio: 64 KiB).
WRITE_BUFFER_HIGH = 1024 * 1024
CLOSE_TIMEOUT = 5.0  # seconds a graceful transport close may take before it is aborted
CANCEL = 0x8  # HTTP/2 error code CANCEL

Address = tuple[str, int]


class HboneStream:
    """One HBONE tunnel as a ``ByteStream``. Created by the driver; use ``HboneClient.open_tunnel`` or
    ``TunnelRequest.accept`` to get one."""

    def __init__(
        self,
        driver: HboneDriver,
        stream_id: int,
        *,
        authority: str,
        request_headers: Headers = (),
    ) -> None:
        self.stream_id = stream_id
        self.authority = authority
        self.request_headers = request_headers
        self.response_headers: Headers = ()
        self._driver = driver
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already returned
        self._eof_received = False
        self._eof_sent = False
        self._error: BaseException | None = None
        self._finished = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()

    # --- facts -----------------------------------------------------------------------------------

    @property
    def peer_identity(self) -> SpiffeId:
        """The verified SPIFFE identity of the TLS peer carrying this tunnel."""
        return self._driver.peer_identity

    @property
    def peer_address(self) -> Address | None:
        return self._driver.peer_address

    @property
    def local_address(self) -> Address | None:
        return self._driver.local_address

    @property
    def finished(self) -> bool:
        """Both directions ended, or the tunnel was reset or closed."""
        return self._finished

    # --- ByteStream ------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int = DEFAULT_READ) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof_received:
                return b""
            self._readable.clear()
            await self._readable.wait()
        if self._error is not None:
            raise self._error  # a reset discards what was buffered, as TCP does
        data = self._take(max_bytes)
        self._driver.consumed(self.stream_id, len(data))
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._eof_sent:
            raise BrokenPipeError(f"HBONE stream {self.stream_id}: send_all after send_eof")
        view = memoryview(data)
        while view:
            sent = self._driver.send(self.stream_id, view)
            if sent < len(view):
                view = view[sent:]
                self._writable.clear()
                await self._writable.wait()
                if self._error is not None:
                    raise self._error
            else:
                break
        await self._driver.drain_transport()

    async def send_eof(self) -> None:
        if self._eof_sent or self._error is not None:
            return
        self._eof_sent = True
        self._driver.send_eof(self.stream_id)
        self._maybe_finish()

    async def aclose(self) -> None:
        """Reset the tunnel if it is not finished (CANCEL), then forget it. Idempotent.

        Bytes received but never read are dropped and acknowledged, so they do not keep holding the
        connection's flow-control window."""
        if self._chunks:
            unread = sum(len(chunk) for chunk in self._chunks) - self._offset
            self._chunks.clear()
            self._offset = 0
            self._driver.consumed(self.stream_id, unread)
        if self._finished:
            return
        self._fail(TunnelResetError(CANCEL, by_peer=False))
        self._driver.reset(self.stream_id, CANCEL)

    # --- called by the driver --------------------------------------------------------------------

    def _take(self, max_bytes: int) -> bytes:
        first = self._chunks[0]
        if self._offset == 0 and len(first) <= max_bytes and len(self._chunks) == 1:
            self._chunks.popleft()  # the common case: hand over the frame's bytes without copying
            return first
        parts = []
        total = 0
        while self._chunks and total < max_bytes:
            chunk = self._chunks[0]
            take = min(len(chunk) - self._offset, max_bytes - total)
            parts.append(chunk[self._offset : self._offset + take])
            total += take
            self._offset += take
            if self._offset == len(chunk):
                self._chunks.popleft()
                self._offset = 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()

    def _on_eof(self) -> None:
        self._eof_received = True
        self._readable.set()
        self._maybe_finish()

    def _on_window(self) -> None:
        self._writable.set()

    def _fail(self, error: BaseException) -> None:
        if self._finished:
            return
        self._error = error
        self._chunks.clear()
        self._driver._on_stream_failed(self.stream_id, error)
        self._finish()

    def _maybe_finish(self) -> None:
        if self._eof_sent and self._eof_received:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._readable.set()
        self._writable.set()
        self._driver.forget(self.stream_id)


class HboneDriver:
    """Runs one sans-IO HBONE connection over an asyncio transport (see module docstring)."""

    def __init__(
        self,
        conn: HboneClientConn | HboneServerConn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer_identity: SpiffeId,
    ) -> None:
        self.conn = conn
        self.peer_identity = peer_identity
        self.peer_address: Address | None = _address(writer.get_extra_info("peername"))
        self.local_address: Address | None = _address(writer.get_extra_info("sockname"))
        self.close_reason: str | None = None
        self.last_rtt: float | None = None
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._streams: dict[int, HboneStream] = {}
        self._watchers: list[Callable[[], None]] = []
        self._closed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._drain_when_idle = False
        self._reader_task: asyncio.Task[None] | None = None
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def _start(self) -> None:
        """Send the preface and start the reader task (owned by this driver, ended by ``aclose``)."""
        self.flush()
        self._arm_timer()
        self._reader_task = asyncio.create_task(self._read_loop(), name="hbone-reader")

    # --- state for owners (pool, server) ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def draining(self) -> bool:
        return self.conn.draining

    @property
    def active_streams(self) -> int:
        """Tunnels handed out and not finished."""
        return len(self._streams)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``active_streams``, ``draining`` or ``closed`` may have changed."""
        self._watchers.append(callback)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- commands from streams -------------------------------------------------------------------

    def send(self, stream_id: int, data: memoryview) -> int:
        self._check_usable()
        sent = self.conn.send(stream_id, data)
        if sent:
            self.flush()
        return sent

    def send_eof(self, stream_id: int) -> None:
        self._check_usable()
        self.conn.send_eof(stream_id)
        self.flush()

    def reset(self, stream_id: int, code: int) -> None:
        if not self.conn.closed:
            self.conn.reset(stream_id, code)
            self.flush()

    def consumed(self, stream_id: int, size: int) -> None:
        if not self.conn.closed:
            self.conn.acknowledge(stream_id, size)
            self.flush()

    def forget(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._notify()
            if self._drain_when_idle and not self._streams:
                self.close("drained: no tunnels left")

    async def drain_transport(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise HboneConnectionError(f"HBONE connection lost while sending: {exc}") from exc

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    # --- lifecycle -------------------------------------------------------------------------------

    def drain(self) -> None:
        """Graceful: GOAWAY, let live tunnels finish, close when none is left."""
        if self.closed:
            return
        self.conn.drain()
        self.flush()
        self._drain_when_idle = True
        self._notify()
        if not self._streams:
            self.close("drained: no tunnels left")

    def close(self, reason: str = "closed by this side") -> None:
        """End the connection now: GOAWAY, fail every stream, close the transport. Idempotent."""
        if self.closed:
            return
        self.conn.close(reason=reason)
        self.flush()
        self._lost(reason)
        if self._reader_task is not None and asyncio.current_task() is not self._reader_task:
            self._reader_task.cancel()

    async def aclose(self, reason: str = "closed by this side") -> None:
        """``close`` and wait for the reader task and the transport to finish."""
        self.close(reason)
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        await self._close_transport()

    # --- internals -------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.closed:
            raise HboneConnectionError(f"the HBONE connection is closed: {self.close_reason}")

    async def _read_loop(self) -> None:
        try:
            while not self.closed:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    self._lost("the peer closed the connection")
                    break
                self.dispatch(self.conn.receive_data(data))
                self.flush()
                self._arm_timer()
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            self._lost(f"transport error: {type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug in event handling: lose this connection, not the process
            log.exception("hbone.driver_failed", peer=str(self.peer_identity), addr=self.peer_address)
            self.conn.close(reason="internal error")
            self._lost(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._lost("reader stopped")
            await self._close_transport()

    def dispatch(self, events: Iterable[HboneEvent]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
                else:  # the app already let go of this tunnel: discard, give the window back
                    self.conn.acknowledge(event.stream_id, len(event.data))
            elif isinstance(event, WindowOpened):
                if event.stream_id == 0:
                    for stream in self._streams.values():
                        stream._on_window()
                elif (stream := self._streams.get(event.stream_id)) is not None:
                    stream._on_window()
            elif isinstance(event, EofReceived):
                if (stream := self._streams.get(event.stream_id)) is not None:
                    stream._on_eof()
            elif isinstance(event, TunnelReset):
                if (stream := self._streams.get(event.stream_id)) is not None:
                    stream._fail(TunnelResetError(event.error_code, by_peer=event.by_peer))
            elif isinstance(event, TunnelRequested):
                self._on_tunnel_requested(event)
            elif isinstance(event, TunnelRequestRefused):
                self._on_tunnel_refused(event)
            elif isinstance(event, (TunnelAccepted, TunnelRejected)):
                self._on_tunnel_answered(event)
            elif isinstance(event, ConnectionDraining):
                self._notify()
            elif isinstance(event, ConnectionClosed):
                self._lost(event.reason)
            elif isinstance(event, PingAcked):
                self.last_rtt = self._loop.time() - event.sent_at

    def _on_tunnel_requested(self, event: TunnelRequested) -> None:
        self.conn.reset(event.stream_id, CANCEL)  # pragma: no cover - only servers receive requests

    def _on_tunnel_refused(self, event: TunnelRequestRefused) -> None:
        pass  # pragma: no cover - servers count these

    def _on_tunnel_answered(self, event: TunnelAccepted | TunnelRejected) -> None:
        pass  # pragma: no cover - clients resolve their pending opens

    def _on_stream_failed(self, stream_id: int, error: BaseException) -> None:
        """Hook for subclasses: a stream failed (reset, refused, connection lost)."""

    def _on_lost(self, reason: str) -> None:
        """Hook for subclasses: the connection just ended."""

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.close_reason = reason
        self._closed.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = HboneConnectionError(f"HBONE connection to {self.peer_identity} ended: {reason}")
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._streams.clear()
        self._on_lost(reason)
        self.flush()  # a final GOAWAY, if the connection queued one
        if not self._writer.is_closing():
            self._writer.close()
        self._notify()

    async def _close_transport(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
            self._writer.transport.abort()

    def _arm_timer(self) -> None:
        deadline = self.conn.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer) if deadline is not None else None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.dispatch(self.conn.handle_timer(self._loop.time()))
        self.flush()
        if not self.closed:
            self._arm_timer()

    def _notify(self) -> None:
        for callback in self._watchers:
            callback()


def _address(value: object) -> Address | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None

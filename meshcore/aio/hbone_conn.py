"""The asyncio driver shared by HBONE clients and servers, and ``HboneStream``, the tunnel it hands out.

One ``HboneDriver`` is the ``asyncio.Protocol`` of one transport (normally TLS) and owns one sans-IO
connection: ``data_received`` feeds the connection and dispatches its events to streams, no task and no
StreamReader in between; writes go out as soon as they are produced (one ``write``/``writelines`` per
command or per received batch, so frames coalesce naturally and large payloads are not copied); the
keepalive timer follows ``next_deadline()``. When the connection ends, for whatever reason, every
stream fails with ``HboneConnectionError`` and the transport is closed: nothing waits forever. A peer
that keeps sending SETTINGS or PING frames while it reads nothing (so their ACKs pile up in our write
buffer) is cut off after ``MAX_QUEUED_CONTROL_FRAMES`` with GOAWAY(ENHANCE_YOUR_CALM).

``HboneStream`` is a ``ByteStream``: received bytes are acknowledged (flow control) only when the app
takes them with ``receive_some``, so a slow reader throttles its own peer and nobody else; ``send_all``
queues what the window allows and waits for ``WindowOpened`` plus transport back-pressure. It is also a
``PipeEnd``: spliced by ``relay``, received DATA goes straight to the other side and is acknowledged
unless that side is congested; what it is given is written as DATA frames at once, the remainder queued
until the window opens. Per tunnel it holds a few slots; futures are made only while someone waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, cast

import structlog

from meshcore.aio.streams import DEFAULT_READ, Pipe
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
ENHANCE_YOUR_CALM = 0xB  # HTTP/2 error code for a peer that abuses the connection
# SETTINGS/PING frames a peer may send, each queueing an ACK, while our writes to it are blocked (it does
# not read): past this the connection ends (nghttp2's bound on queued ACKs is 1000).
MAX_QUEUED_CONTROL_FRAMES = 1000
_JOIN_BELOW = 64 * 1024  # several output chunks totalling less than this are written as one buffer

Address = tuple[str, int]


class HboneStream:
    """One HBONE tunnel as a ``ByteStream``. Created by the driver; use ``HboneClient.open_tunnel`` or
    ``TunnelRequest.accept`` to get one."""

    __slots__ = (
        "stream_id", "authority", "request_headers", "response_headers", "_driver", "_chunks",
        "_offset", "_eof_received", "_eof_sent", "_error", "_finished", "_read_waiter", "_write_waiter",
        "_source", "_sink", "_queue", "_queued_eof", "_paused", "_withheld",
    )

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
        self._chunks: list[bytes | memoryview] | None = None  # received, not yet read (pull mode)
        self._offset = 0  # bytes of _chunks[0] already returned
        self._eof_received = False
        self._eof_sent = False
        self._error: BaseException | None = None
        self._finished = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._source: Pipe | None = None  # spliced: the pipe our received bytes go to
        self._sink: Pipe | None = None  # spliced: the pipe whose bytes we send
        self._queue: list[memoryview] | None = None  # spliced: bytes waiting for window
        self._queued_eof = False  # spliced: END_STREAM to send once the queue is empty
        self._paused = False  # spliced: our pipe's sink is congested, withhold acknowledgements
        self._withheld = 0  # bytes delivered but not yet acknowledged while paused

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
            waiter = self._driver.loop.create_future()
            self._read_waiter = waiter
            try:
                await waiter
            finally:
                self._read_waiter = None
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
        if type(data) is not bytes:
            data = bytes(data)  # frames refer to what they carry until written: it must not change
        view = memoryview(data)
        while view:
            sent = self._driver.send(self.stream_id, view)
            if sent < len(view):
                view = view[sent:]
                await self._wait_writable()
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
        self.close()

    def close(self) -> None:
        """``aclose``, which never waits, for callbacks."""
        unread = self._withheld
        self._withheld = 0
        if self._chunks:
            unread += sum(len(chunk) for chunk in self._chunks) - self._offset
            self._chunks = None
            self._offset = 0
        if unread:
            self._driver.consumed(self.stream_id, unread)
        if self._finished:
            return
        self._fail(TunnelResetError(CANCEL, by_peer=False))
        self._driver.reset(self.stream_id, CANCEL)

    # --- PipeEnd (relay) -------------------------------------------------------------------------

    def pipe_out(self, pipe: Pipe) -> None:
        self._source = pipe
        chunks, self._chunks = self._chunks, None
        if chunks:
            chunks[0] = chunks[0][self._offset :]
            self._offset = 0
            for chunk in chunks:
                pipe.data(chunk)
                self._ack(len(chunk))
        if self._error is not None:
            pipe.fail(self._error)
        elif self._eof_received:
            pipe.eof()

    def pipe_in(self, pipe: Pipe) -> None:
        self._sink = pipe
        if self._error is not None:
            pipe.fail(self._error)

    def pipe_write(self, data: bytes | memoryview) -> bool:
        if self._error is not None:
            raise self._error
        if self._queue:
            self._queue.append(memoryview(data))
            return False
        driver = self._driver
        sent = driver.send(self.stream_id, data)
        if sent < len(data):
            self._queue = [memoryview(data)[sent:]]
            return False
        if driver.write_paused:
            driver.block(self)
            return False
        return True

    def pipe_eof(self) -> bool:
        if self._error is not None:
            raise self._error
        if self._queue:
            self._queued_eof = True
            return False
        if not self._eof_sent:
            self._eof_sent = True
            self._driver.send_eof(self.stream_id)
            self._maybe_finish()
        return True

    def pipe_pause(self) -> None:
        self._paused = True

    def pipe_resume(self) -> None:
        self._paused = False
        if self._withheld:
            withheld, self._withheld = self._withheld, 0
            self._driver.consumed(self.stream_id, withheld)

    def unpipe(self) -> None:
        self._source = None
        self._sink = None
        self._queue = None
        self._queued_eof = False
        self.pipe_resume()

    # --- called by the driver --------------------------------------------------------------------

    def _take(self, max_bytes: int) -> bytes:
        chunks = self._chunks
        assert chunks
        first = chunks[0]
        if self._offset == 0 and len(first) <= max_bytes and len(chunks) == 1:
            self._chunks = None  # the common case: hand over the frame's bytes whole
            return first if type(first) is bytes else bytes(first)
        parts = []
        total = 0
        while chunks and total < max_bytes:
            chunk = chunks[0]
            take = min(len(chunk) - self._offset, max_bytes - total)
            parts.append(chunk[self._offset : self._offset + take])
            total += take
            self._offset += take
            if self._offset == len(chunk):
                del chunks[0]
                self._offset = 0
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def _ack(self, size: int) -> None:
        if self._paused:
            self._withheld += size
        else:
            self._driver.acknowledge(self.stream_id, size)

    def _on_data(self, data: bytes | memoryview) -> None:
        source = self._source
        if source is not None:  # spliced: straight to the other side, acknowledged unless it is congested
            source.data(data)
            if self._paused:
                self._withheld += len(data)
            else:
                self._driver.conn.acknowledge(self.stream_id, len(data))
            return
        if self._chunks is None:
            self._chunks = [data]
        else:
            self._chunks.append(data)
        _wake(self._read_waiter)

    def _on_eof(self) -> None:
        self._eof_received = True
        if self._source is not None:
            self._source.eof()
        _wake(self._read_waiter)
        self._maybe_finish()

    def _on_window(self) -> None:
        """The window opened (or the transport drained): send what is queued, resume whoever waits."""
        _wake(self._write_waiter)
        sink = self._sink
        if sink is None:
            return
        queue = self._queue
        driver = self._driver
        while queue:
            view = queue[0]
            sent = driver.send(self.stream_id, view)
            if sent < len(view):
                queue[0] = view[sent:]
                return
            del queue[0]
        self._queue = None
        if self._queued_eof:
            self._queued_eof = False
            self._eof_sent = True
            driver.send_eof(self.stream_id)
            sink.flushed()
            self._maybe_finish()
            return
        if driver.write_paused:
            driver.block(self)
        else:
            sink.writable()

    def _fail(self, error: BaseException) -> None:
        if self._finished:
            return
        self._error = error
        self._chunks = None
        self._queue = None
        self._driver._on_stream_failed(self.stream_id, error)
        for pipe in (self._source, self._sink):
            if pipe is not None:
                pipe.fail(error)
        self._finish()

    def _maybe_finish(self) -> None:
        if self._eof_sent and self._eof_received:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        _wake(self._read_waiter)
        _wake(self._write_waiter)
        self._driver.forget(self.stream_id)

    async def _wait_writable(self) -> None:
        waiter = self._driver.loop.create_future()
        self._write_waiter = waiter
        try:
            await waiter
        finally:
            self._write_waiter = None


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class HboneDriver(asyncio.Protocol):
    """Runs one sans-IO HBONE connection as the protocol of an asyncio transport (see module docstring).

    Made before the transport exists (it is the protocol factory's product); ``start`` begins HTTP/2
    once the peer is verified. Bytes that arrive earlier are held until then.
    """

    def __init__(self, conn: HboneClientConn | HboneServerConn, *, peer_identity: SpiffeId | None = None) -> None:
        self.conn = conn
        self.peer_identity: SpiffeId = peer_identity  # type: ignore[assignment]  # set before start()
        self.peer_address: Address | None = None
        self.local_address: Address | None = None
        self.close_reason: str | None = None
        self.last_rtt: float | None = None
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, HboneStream] = {}
        self._watchers: list[Callable[[], None]] = []
        self._closed = asyncio.Event()
        self._is_closed = False  # _closed.is_set(), as a plain attribute for the hot path
        self._transport_lost: asyncio.Future[None] = self.loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._drain_when_idle = False
        self._started = False
        self._early: list[bytes] | None = None  # bytes received before ``start``
        self.write_paused = False
        self._control_at_pause = 0  # conn.peer_control_frames when writes were last paused
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._blocked: set[HboneStream] = set()  # spliced streams waiting for the transport to drain
        self._writer: asyncio.StreamWriter | None = None  # adopted (adopt_streams): its __del__ closes the transport
        conn.data_handler = self._on_stream_data

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self._transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.peer_address = _address(transport.get_extra_info("peername"))
        self.local_address = _address(transport.get_extra_info("sockname"))
        with contextlib.suppress(AttributeError, NotImplementedError):
            transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def data_received(self, data: bytes) -> None:
        if not self._started:
            if self._early is None:
                self._early = []
            self._early.append(data)
            return
        if self._is_closed:
            return
        try:
            events = self.conn.receive_data(data, self.loop.time())
            if events:
                self.dispatch(events)
            if self.write_paused and (
                self.conn.peer_control_frames - self._control_at_pause > MAX_QUEUED_CONTROL_FRAMES
            ):
                self._on_control_flood()
                return
        except Exception as exc:  # a bug in event handling: lose this connection, not the process
            log.exception("hbone.driver_failed", peer=str(self.peer_identity), addr=self.peer_address)
            self.conn.close(reason="internal error")
            self._lost(f"internal error: {type(exc).__name__}: {exc}")
            return
        self.flush()
        self._arm_timer()

    def eof_received(self) -> bool:
        if self._started:
            self._lost("the peer closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._lost(f"transport error: {type(exc).__name__}: {exc}")
        else:
            self._lost("the peer closed the connection")
        if not self._transport_lost.done():
            self._transport_lost.set_result(None)
        self._wake_drainers()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._control_at_pause = self.conn.peer_control_frames

    def _on_control_flood(self) -> None:
        reason = (
            f"peer sent more than {MAX_QUEUED_CONTROL_FRAMES} SETTINGS/PING frames while not reading our "
            "replies (control frame flood)"
        )
        log.warning("hbone.control_flood", peer=str(self.peer_identity), addr=self.peer_address, reason=reason)
        self.close(reason, error_code=ENHANCE_YOUR_CALM)
        if self._transport is not None:
            self._transport.abort()  # its write buffer is full of ACKs it will never read

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drainers()
        blocked, self._blocked = self._blocked, set()
        for stream in blocked:
            if not self.write_paused:
                stream._on_window()
            else:
                self._blocked.add(stream)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Send the preface and process what arrived meanwhile (the peer is verified by now)."""
        self._started = True
        self.flush()
        self._arm_timer()
        early, self._early = self._early, None
        for data in early or ():
            self.data_received(data)

    # --- state for owners (pool, server) ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._is_closed

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

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        if self._is_closed:
            raise HboneConnectionError(f"the HBONE connection is closed: {self.close_reason}")
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
        """The app consumed ``size`` bytes of ``stream_id``: acknowledge them and write any update."""
        if not self.conn.closed:
            self.conn.acknowledge(stream_id, size)
            self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``consumed`` without the write: for callbacks inside ``data_received``, which flushes after."""
        if not self._is_closed:
            self.conn.acknowledge(stream_id, size)

    def forget(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._notify()
            if self._drain_when_idle and not self._streams:
                self.close("drained: no tunnels left")

    def block(self, stream: HboneStream) -> None:
        """``stream`` waits for the transport to drain (its ``_on_window`` runs then)."""
        self._blocked.add(stream)

    async def drain_transport(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self.write_paused:
            if self._transport_lost.done():
                raise HboneConnectionError("HBONE connection lost while sending")
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._transport_lost.done() and not self.closed:
            raise HboneConnectionError("HBONE connection lost while sending")

    def flush(self) -> None:
        out = self.conn.take_output()
        if not out:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if len(out) == 1:
            transport.write(out[0])
        elif sum(len(chunk) for chunk in out) < _JOIN_BELOW:
            transport.write(b"".join(out))  # one TLS record rather than one per frame
        else:
            transport.writelines(out)

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

    def close(self, reason: str = "closed by this side", *, error_code: int = 0) -> None:
        """End the connection now: GOAWAY, fail every stream, close the transport. Idempotent."""
        if self.closed:
            return
        self.conn.close(error_code, reason=reason)
        self.flush()
        self._lost(reason)

    async def aclose(self, reason: str = "closed by this side") -> None:
        """``close`` and wait for the transport to finish."""
        self.close(reason)
        await self._close_transport()

    # --- internals -------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.closed:
            raise HboneConnectionError(f"the HBONE connection is closed: {self.close_reason}")

    def _on_stream_data(self, stream_id: int, data: bytes | memoryview) -> None:
        """The connection's ``data_handler``: tunnel bytes, without an event (see ``_HboneConn``)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream._on_data(data)
        else:  # the app already let go of this tunnel: discard, give the window back
            self.conn.acknowledge(stream_id, len(data))

    def dispatch(self, events: Iterable[HboneEvent]) -> None:
        streams = self._streams
        for event in events:
            if type(event) is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
                else:  # the app already let go of this tunnel: discard, give the window back
                    self.conn.acknowledge(event.stream_id, len(event.data))
            elif isinstance(event, WindowOpened):
                if event.stream_id == 0:
                    for stream in list(streams.values()):
                        stream._on_window()
                elif (stream := streams.get(event.stream_id)) is not None:
                    stream._on_window()
            elif isinstance(event, EofReceived):
                if (stream := streams.get(event.stream_id)) is not None:
                    stream._on_eof()
            elif isinstance(event, TunnelReset):
                if (stream := streams.get(event.stream_id)) is not None:
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
                self.last_rtt = self.loop.time() - event.sent_at

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
        self._is_closed = True
        self._closed.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = HboneConnectionError(f"HBONE connection to {self.peer_identity} ended: {reason}")
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._streams.clear()
        self._blocked.clear()
        self._on_lost(reason)
        self.flush()  # a final GOAWAY, if the connection queued one
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._wake_drainers()
        self._notify()

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            _wake(waiter)

    async def _close_transport(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self._transport_lost)
        except TimeoutError:
            transport.abort()

    def _arm_timer(self) -> None:
        deadline = self.conn.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer) if deadline is not None else None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.dispatch(self.conn.handle_timer(self.loop.time()))
        self.flush()
        if not self.closed:
            self._arm_timer()

    def _notify(self) -> None:
        for callback in self._watchers:
            callback()


def adopt_streams(driver: HboneDriver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Make ``driver`` the protocol of the transport behind an asyncio stream pair (tests and callers that
    already hold one), carrying over bytes the reader buffered but nobody read."""
    transport = cast(asyncio.Transport, writer.transport)
    buffered: Any = getattr(reader, "_buffer", None)  # no public way to take what a StreamReader holds
    early = bytes(buffered) if buffered else b""
    if early:
        buffered.clear()
    transport.set_protocol(driver)
    driver._writer = writer
    driver.connection_made(transport)
    if early:
        driver.data_received(early)
    with contextlib.suppress(AttributeError, RuntimeError):
        transport.resume_reading()  # StreamReaderProtocol may have paused it for a full buffer


def _address(value: object) -> Address | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None



"""Upstream connections for the HTTP engine: HTTP/1.1 exchanges on connections borrowed from an
``UpstreamPool`` (one request at a time, returned for keep-alive reuse when both sides allow it) and
multiplexed HTTP/2 connections (one per endpoint, up to the server's stream limit, then another).

``Upstreams`` is one per waypoint process and owns the HTTP/2 connections' reader tasks (``aclose``
ends them). ``TcpUpstreamPool`` is a plain-TCP ``UpstreamPool`` (endpoints are ``(host, port)``),
used by tests and benchmarks and as the model of the waypoint's HBONE pool.

Every exchange ends with ``finish(ok)``: an HTTP/1 connection goes back to the pool only if ``ok``, the
response was read to its end and neither side asked to close; an HTTP/2 stream not finished cleanly is
reset (the connection lives on for its other streams).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Hashable

import structlog

from meshcore.aio.streams import ByteStream, TcpStream
from waypoint.l7.events import (
    Body,
    ConnectionEnded,
    Event,
    Headers,
    Refusal,
    ResponseHead,
    StreamReset,
    Upgraded,
    WindowOpened,
)
from waypoint.l7.http1 import Http1Client
from waypoint.l7.http2 import H2Client
from waypoint.l7.model import DEFAULT_LIMITS, HttpLimits, HttpProtocol, UpstreamPool

log = structlog.get_logger("waypoint.http.upstream")


class UpstreamError(Exception):
    """The upstream failed: ``flag`` is the Envoy response flag (UF connect failure, UC termination, UPE
    protocol error), ``detail`` says what happened."""

    def __init__(self, flag: str, detail: str) -> None:
        super().__init__(detail)
        self.flag = flag
        self.detail = detail


class Exchange:
    """One request/response with an upstream (common face of the HTTP/1 and HTTP/2 versions)."""

    label: str
    response_started: bool = False

    async def start(self, method: str, scheme: str, authority: str, path: str, headers: Headers, *,
                    content_length: int | None, end_stream: bool, upgrade: bool) -> None:
        raise NotImplementedError

    async def send_data(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_end(self, trailers: Headers) -> None:
        raise NotImplementedError

    async def next_event(self) -> Event:
        """ResponseHead, Informational, Body, EndOfMessage, Upgraded; raises ``UpstreamError``."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether ``next_event`` has an event (or error) buffered and will return without waiting."""
        return False

    async def receive_raw(self) -> bytes:
        """After an upgrade: opaque bytes from the upstream (b"" at EOF)."""
        raise NotImplementedError

    async def send_raw(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_raw_eof(self) -> None:
        raise NotImplementedError

    def finish(self, ok: bool) -> None:
        raise NotImplementedError


class _H1Exchange(Exchange):
    def __init__(self, pool: UpstreamPool, endpoint: Hashable, stream: ByteStream, limits: HttpLimits,
                 label: str) -> None:
        self._pool = pool
        self._endpoint = endpoint
        self._stream = stream
        self._client = Http1Client(limits)
        self._events: deque[Event] = deque()
        self._limits = limits
        self._finished = False
        self.label = label

    async def start(self, method: str, scheme: str, authority: str, path: str, headers: Headers, *,
                    content_length: int | None, end_stream: bool, upgrade: bool) -> None:
        data = self._client.send_request(method, path, authority, headers, content_length=content_length,
                                         end_stream=end_stream, upgrade=upgrade)
        await self._send(data)

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        try:
            await self._stream.send_all(data)
        except (ConnectionError, OSError) as exc:
            raise UpstreamError("UC", f"upstream connection broke while sending: {exc!r}") from exc

    async def send_data(self, data: bytes) -> None:
        await self._send(self._client.send_data(data))

    async def send_end(self, trailers: Headers) -> None:
        await self._send(self._client.send_end(trailers))

    def ready(self) -> bool:
        return bool(self._events)

    async def next_event(self) -> Event:
        events = self._events
        while not events:
            try:
                data = await self._stream.receive_some(self._limits.read_size)
            except (ConnectionError, OSError) as exc:
                raise UpstreamError("UC", f"upstream connection broke: {exc!r}") from exc
            events.extend(self._client.receive_data(data))
        event = events.popleft()
        if isinstance(event, Refusal):
            raise UpstreamError("UPE", event.detail)
        if isinstance(event, ConnectionEnded):
            raise UpstreamError("UC", event.reason)
        if isinstance(event, ResponseHead):
            self.response_started = True
        return event

    async def receive_raw(self) -> bytes:
        while self._events:
            event = self._events.popleft()
            if isinstance(event, Upgraded) and event.data:
                return event.data  # bytes that came right after the 101 (the EndOfMessage of the 101 is skipped)
        try:
            return await self._stream.receive_some(self._limits.read_size)
        except (ConnectionError, OSError):
            return b""

    async def send_raw(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def send_raw_eof(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._stream.send_eof()

    def finish(self, ok: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._pool.release(self._endpoint, self._stream, reusable=ok and self._client.reusable and not self._events)


class _H2Stream:
    __slots__ = ("queue", "window", "reset")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.window: asyncio.Future[None] | None = None
        self.reset = False


class _H2Connection:
    """One multiplexed HTTP/2 connection to an endpoint, with its reader task."""

    def __init__(self, owner: Upstreams, endpoint: Hashable, stream: ByteStream, limits: HttpLimits) -> None:
        self.owner = owner
        self.endpoint = endpoint
        self.stream = stream
        self.limits = limits
        self.conn = H2Client(limits)
        self.streams: dict[int, _H2Stream] = {}
        self.closed = False
        self.error = ""
        self._send_lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def run(self) -> None:
        try:
            await self.flush()
            while not self.closed:
                data = await self.stream.receive_some(self.limits.read_size)
                for event in self.conn.receive_data(data):
                    self._dispatch(event)
                await self.flush()
        except (ConnectionError, OSError) as exc:
            self.error = f"upstream HTTP/2 connection broke: {exc!r}"
        finally:
            self._end(self.error or "upstream HTTP/2 connection closed")

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ConnectionEnded):
            self.error = event.reason
            if event.last_stream_id is not None and event.error_code == 0:
                # graceful GOAWAY: streams above last_stream_id were not processed; the rest finish
                self.owner._forget(self)
                for sid, state in list(self.streams.items()):
                    if sid > event.last_stream_id:
                        state.queue.put_nowait(event)
                return
            self._end(event.reason)
            return
        if isinstance(event, WindowOpened):
            targets = self.streams.values() if event.stream_id == 0 else [self.streams.get(event.stream_id)]
            for state in targets:
                if state is not None and state.window is not None and not state.window.done():
                    state.window.set_result(None)
            return
        sid = getattr(event, "stream_id", 0)
        state = self.streams.get(sid)
        if state is None:
            if isinstance(event, Body):
                self.conn.acknowledge(sid, len(event.data))
            return
        if isinstance(event, StreamReset):
            state.reset = True
        state.queue.put_nowait(event)

    def _end(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner._forget(self)
        ended = ConnectionEnded(reason)
        for state in self.streams.values():
            state.queue.put_nowait(ended)
            if state.window is not None and not state.window.done():
                state.window.set_result(None)
        if not self.streams:
            self.owner._spawn_close(self.endpoint, self.stream)

    def stream_finished(self, sid: int) -> None:
        self.streams.pop(sid, None)
        if self.closed and not self.streams:
            self.owner._spawn_close(self.endpoint, self.stream)


class _H2Exchange(Exchange):
    def __init__(self, connection: _H2Connection, label: str) -> None:
        self._c = connection
        self._sid = 0
        self._state = _H2Stream()
        self._finished = False
        self._ended = False
        self.label = label

    async def start(self, method: str, scheme: str, authority: str, path: str, headers: Headers, *,
                    content_length: int | None, end_stream: bool, upgrade: bool) -> None:
        c = self._c
        if c.closed:
            raise UpstreamError("UC", c.error or "upstream HTTP/2 connection closed")
        if content_length is not None and not end_stream:
            headers = [*headers, ("content-length", str(content_length))]
        self._sid = c.conn.send_request(method, scheme, authority, path, headers, end_stream=end_stream)
        c.streams[self._sid] = self._state
        self._ended = end_stream
        await self._flush()

    async def _flush(self) -> None:
        try:
            await self._c.flush()
        except (ConnectionError, OSError) as exc:
            raise UpstreamError("UC", f"upstream HTTP/2 connection broke while sending: {exc!r}") from exc

    async def send_data(self, data: bytes) -> None:
        view = memoryview(data)
        c = self._c
        while view:
            if c.closed or self._state.reset:
                raise UpstreamError("UC", c.error or "upstream reset the stream")
            sent = c.conn.send_data(self._sid, view)
            view = view[sent:]
            await self._flush()
            if view:
                self._state.window = asyncio.get_running_loop().create_future()
                await self._state.window
                self._state.window = None

    async def send_end(self, trailers: Headers) -> None:
        if self._c.closed or self._state.reset:
            raise UpstreamError("UC", self._c.error or "upstream reset the stream")
        self._c.conn.end_stream(self._sid, trailers)
        self._ended = True
        await self._flush()

    def ready(self) -> bool:
        return not self._state.queue.empty()

    async def next_event(self) -> Event:
        event = await self._state.queue.get()
        if isinstance(event, Body):
            self._c.conn.acknowledge(self._sid, len(event.data))
        elif isinstance(event, ConnectionEnded):
            raise UpstreamError("UC", event.reason)
        elif isinstance(event, StreamReset):
            raise UpstreamError("UC", f"upstream reset the stream (error code {event.error_code})")
        elif isinstance(event, ResponseHead):
            self.response_started = True
        return event

    def finish(self, ok: bool) -> None:
        if self._finished:
            return
        self._finished = True
        c = self._c
        if self._sid:
            if not ok and not c.closed and not self._state.reset:
                c.conn.reset(self._sid)
                c.owner._spawn_flush(c)
            c.stream_finished(self._sid)


class Upstreams:
    """Opens exchanges to upstream endpoints (see the module docstring)."""

    def __init__(self, pool: UpstreamPool, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        self.pool = pool
        self.limits = limits
        self._h2: dict[Hashable, list[_H2Connection]] = {}
        self._h2_opening: dict[Hashable, asyncio.Future[_H2Connection]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def open(self, endpoint: Hashable, protocol: HttpProtocol, label: str) -> Exchange:
        """An exchange to ``endpoint``; raises ``UpstreamError('UF', ...)`` if no connection can be had."""
        if self._closed:
            raise UpstreamError("UF", "upstreams are closed (waypoint shutting down)")
        if protocol is HttpProtocol.HTTP1:
            stream = await self._acquire(endpoint)
            return _H1Exchange(self.pool, endpoint, stream, self.limits, label)
        return _H2Exchange(await self._h2_connection(endpoint), label)

    async def _acquire(self, endpoint: Hashable) -> ByteStream:
        try:
            return await self.pool.acquire(endpoint)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise UpstreamError("UF", f"upstream connect error: {exc!r}") from exc

    async def _h2_connection(self, endpoint: Hashable) -> _H2Connection:
        for connection in self._h2.get(endpoint, ()):
            if connection.conn.can_open():
                return connection
        opening = self._h2_opening.get(endpoint)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[_H2Connection] = asyncio.get_running_loop().create_future()
        self._h2_opening[endpoint] = future
        try:
            stream = await self._acquire(endpoint)
            connection = _H2Connection(self, endpoint, stream, self.limits)
            connection.reader = self._spawn(connection.run())
            self._h2.setdefault(endpoint, []).append(connection)
            future.set_result(connection)
            return connection
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else UpstreamError("UF", "cancelled"))
            future.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            self._h2_opening.pop(endpoint, None)

    def _forget(self, connection: _H2Connection) -> None:
        connections = self._h2.get(connection.endpoint)
        if connections and connection in connections:
            connections.remove(connection)
            if not connections:
                del self._h2[connection.endpoint]

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_close(self, endpoint: Hashable, stream: ByteStream) -> None:
        self.pool.release(endpoint, stream, reusable=False)

    def _spawn_flush(self, connection: _H2Connection) -> None:
        async def flush() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                await connection.flush()
        self._spawn(flush())

    async def aclose(self) -> None:
        """Close every HTTP/2 connection and end the reader tasks."""
        self._closed = True
        for connections in list(self._h2.values()):
            for connection in list(connections):
                connection.conn.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await connection.flush()
                connection._end("waypoint closing")
                self.pool.release(connection.endpoint, connection.stream, reusable=False)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class TcpUpstreamPool:
    """``UpstreamPool`` over plain TCP: endpoints are ``(host, port)``; idle keep-alive connections are
    kept per endpoint up to ``max_idle`` (LIFO) and closed by ``aclose``."""

    def __init__(self, *, max_idle: int = 16, connect_timeout: float = 5.0) -> None:
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self._idle: dict[Hashable, list[TcpStream]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0  # connections opened so far (what tests and benchmarks look at)

    async def acquire(self, endpoint: Hashable) -> ByteStream:
        idle = self._idle.get(endpoint)
        while idle:
            stream = idle.pop()
            if not stream.transport.is_closing():
                return stream  # may still have been closed by the peer a moment ago: the engine retries once
            stream.abort()
        host, port = endpoint  # type: ignore[misc]
        async with asyncio.timeout(self.connect_timeout):
            stream = await TcpStream.open(host, port)
        self.opened += 1
        return stream

    def release(self, endpoint: Hashable, stream: ByteStream, *, reusable: bool) -> None:
        assert isinstance(stream, TcpStream)
        idle = self._idle.setdefault(endpoint, [])
        if reusable and len(idle) < self.max_idle and not stream.transport.is_closing():
            idle.append(stream)
            return
        stream.close()

    def idle_count(self, endpoint: Hashable) -> int:
        return len(self._idle.get(endpoint, ()))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for streams in idle.values():
            for stream in streams:
                await stream.aclose()

"""HBONE server: accept mTLS on a port (15008), verify the client, hand each CONNECT to a callback.

``serve_hbone`` listens; per connection it runs the TLS handshake itself (so a failure reaches our code,
gets counted and logged once, instead of vanishing into asyncio's handler), checks ALPN ``h2`` and calls
``verify_client`` on the client's leaf certificate (ztunnel: the client's trust domain must be ours).
Then one ``HboneServerConn`` per connection; every valid ``CONNECT`` becomes a ``TunnelRequest`` passed
to ``await on_tunnel(request)`` in its own task, which must ``accept()`` (200, after its upstream
connected) or ``reject(status)``. A handler that returns without answering gets 503, one that raises
is counted and logged; its tunnel is reset, never the listener. A handler may return the future of a
relay that carries the tunnel on with callbacks: its task ends there, the future stays with the
connection (cancelled if the connection ends first). Bad peers (garbage, failed handshakes,
wrong identity, HTTP/2 violations) cost only their own connection; their log lines are rate-limited to
one per cause per ``REFUSAL_LOG_INTERVAL``, carrying ``repeated=N`` (the counters count every one). ``close`` stops accepting;
``drain(deadline)`` sends GOAWAY, lets live tunnels finish, and closes what is left at the deadline.
Connections held and TLS handshakes in progress are bounded per listener (``max_connections``,
``max_pending_handshakes``): past the first, a new connection is reset at accept (``connections_refused``);
at the second, the oldest unfinished handshake is dropped to admit the newcomer (``handshakes_evicted``),
so idle connections cannot lock out a client that handshakes at once. Logged once per interval with totals.

A tunnel the client resets before it was answered cancels its handler (and so the upstream dial) at
once, with the reason as the cancellation message. Tunnels waiting for an answer are bounded per
connection (the advertised stream limit): past it a CONNECT is refused with RST_STREAM(REFUSED_STREAM),
so resets can never pile up dials; a client resetting faster than the connection's reset budget gets
GOAWAY(ENHANCE_YOUR_CALM) (``meshcore.hbone.conn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from meshcore.aio.hbone_conn import ENHANCE_YOUR_CALM, Address, HboneDriver, HboneStream, adopt_streams
from meshcore.aio.listener import ConnectionTasks
from meshcore.hbone import (
    SERVER_SETTINGS,
    Authority,
    ConnectionClosed,
    HboneEvent,
    HboneServerConn,
    HboneSettings,
    Headers,
    LocalHboneError,
    TunnelRequested,
    TunnelRequestRefused,
    TunnelResetError,
)
from meshcore.identity import SpiffeId
from meshcore.logs import RateLimitedLog

log = structlog.get_logger("meshcore.hbone.server")

HANDSHAKE_TIMEOUT = 10.0
# Per-listener limits (Envoy's overload manager bounds downstream connections the same way): past them a
# new TCP connection is closed at once (RST) and counted, and the served ones carry on.
MAX_CONNECTIONS = 16384  # TCP connections held by the listener (handshaking or served)
MAX_PENDING_HANDSHAKES = 1024  # of which still in the TLS handshake (~70 KB each)
REFUSAL_LOG_INTERVAL = 10.0  # seconds between "connection refused" log lines (each carries the total)
ACCEPT_BACKOFF = 0.1  # seconds to wait after accept() fails (e.g. out of file descriptors)
ALPN_H2 = "h2"
REFUSED_STREAM = 0x7  # HTTP/2 error code: the stream was not processed, the client may retry it

VerifyClient = Callable[[bytes | None], SpiffeId]
"""Given the client's DER leaf certificate, return its identity or raise (wrong trust domain...)."""


@dataclass(slots=True)
class HboneServerCounters:
    """What the listener saw; plain ints the caller can export as metrics."""

    connections_accepted: int = 0  # TCP connections accepted
    connections_open: int = 0  # HTTP/2 connections currently served
    handshake_failures: int = 0  # TLS handshake failed or timed out (non-TLS clients land here)
    connections_refused: int = 0  # reset at accept: over max_connections
    handshakes_evicted: int = 0  # oldest unfinished TLS handshake dropped to admit a new connection
    untrusted_peers: int = 0  # handshake fine but ALPN or client identity refused
    connection_errors: int = 0  # HTTP/2 connections ended by a protocol error
    tunnels_requested: int = 0  # valid CONNECTs handed to on_tunnel
    tunnels_refused: int = 0  # invalid requests answered 400 by the connection itself
    handler_errors: int = 0  # on_tunnel raised
    tunnels_cancelled: int = 0  # the client reset a tunnel before it was answered (its handler cancelled)
    tunnels_over_limit: int = 0  # CONNECTs refused (REFUSED_STREAM): too many waiting for an answer
    abusive_connections: int = 0  # ended with ENHANCE_YOUR_CALM (rapid reset, CONTINUATION or control flood)


class TunnelRequest:
    """A valid CONNECT waiting for an answer. ``accept`` once the upstream is connected, else ``reject``."""

    def __init__(self, driver: _ServerDriver, stream: HboneStream, event: TunnelRequested) -> None:
        self.stream_id = event.stream_id
        self.authority = event.authority  # canonical ip:port
        self.target: Authority = event.target
        self.headers: Headers = event.headers
        self.peer_identity: SpiffeId = driver.peer_identity
        self.peer_address: Address | None = driver.peer_address
        self.local_address: Address | None = driver.local_address  # the TCP destination the client dialled
        self.answered = False
        self._driver = driver
        self._stream = stream

    async def accept(self, headers: Iterable[tuple[str, str]] = ()) -> HboneStream:
        """Answer 200 (with optional headers, e.g. ``baggage``) and return the tunnel stream."""
        if self.answered:
            raise LocalHboneError(f"tunnel {self.authority} was already answered")
        self.answered = True
        self._driver.answered(self.stream_id)
        if self._stream._error is not None:
            raise self._stream._error  # the client reset it, or the connection died, meanwhile
        self._driver.conn.accept(self.stream_id, headers)
        self._driver.flush()
        return self._stream

    async def reject(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer ``status`` (400 bad request, 401 denied by policy, 503 upstream unreachable...)."""
        if self.answered:
            raise LocalHboneError(f"tunnel {self.authority} was already answered")
        self.answered = True
        self._driver.answered(self.stream_id)
        if self._stream.finished or self._driver.closed:
            return  # nobody left to tell
        self._driver.conn.reject(self.stream_id, status, headers)
        self._driver.flush()
        self._stream._fail(ConnectionRefusedError(f"tunnel rejected with {status}"))


OnTunnel = Callable[[TunnelRequest], Awaitable["asyncio.Future[Any] | None"]]
"""Serves one tunnel. May end by returning a future that carries the tunnel on (a relay spliced with
callbacks): the server then leaves the stream to it, keeps the future with the connection's handlers
and cancels it when the connection ends."""


class _ServerDriver(HboneDriver):
    conn: HboneServerConn

    def __init__(
        self,
        conn: HboneServerConn,
        *,
        peer_identity: SpiffeId | None,
        on_tunnel: OnTunnel,
        counters: HboneServerCounters,
        limiter: RateLimitedLog | None = None,
    ) -> None:
        super().__init__(conn, peer_identity=peer_identity)
        self._on_tunnel = on_tunnel
        self._counters = counters
        self._limiter = limiter if limiter is not None else RateLimitedLog()
        self._handlers: set[asyncio.Future[Any]] = set()  # handler tasks, and relays they handed over
        self._pending: dict[int, asyncio.Task[None]] = {}  # handlers of tunnels not answered yet
        self._max_pending = conn.settings.max_concurrent_streams

    async def run(self) -> None:
        """Serve until the connection ends; then stop the handlers still running. Owns them all."""
        self._counters.connections_open += 1
        try:
            self.start()
            await self.wait_closed()
        finally:
            self._counters.connections_open -= 1
            for task in list(self._handlers):
                task.cancel()
            if self._handlers:
                await asyncio.wait(set(self._handlers))
                await asyncio.sleep(0)  # a cancelled relay's done callbacks (its tunnel's close) run now
            await self.aclose()

    def dispatch(self, events: Iterable[HboneEvent]) -> None:
        for event in events:
            if isinstance(event, ConnectionClosed) and event.error_code != 0:
                self._counters.connection_errors += 1
                if event.error_code == ENHANCE_YOUR_CALM and not event.by_peer:
                    self._counters.abusive_connections += 1
                self._limiter.log(
                    log, "warning", "hbone.connection_error", f"connection_error:{event.error_code}",
                    peer=str(self.peer_identity), addr=self.peer_address, reason=event.reason,
                )
        super().dispatch(events)

    def _on_tunnel_requested(self, event: TunnelRequested) -> None:
        if len(self._pending) >= self._max_pending:
            self._counters.tunnels_over_limit += 1
            self.conn.reset(event.stream_id, REFUSED_STREAM)
            return
        self._counters.tunnels_requested += 1
        stream_id = event.stream_id
        stream = HboneStream(self, stream_id, authority=event.authority, request_headers=event.headers)
        self._streams[stream_id] = stream
        self._notify()
        task = asyncio.create_task(self._run_handler(TunnelRequest(self, stream, event)))
        self._handlers.add(task)
        self._pending[stream_id] = task
        task.add_done_callback(self._handlers.discard)
        task.add_done_callback(lambda _: self._pending.pop(stream_id, None))

    def _on_control_flood(self) -> None:
        self._counters.abusive_connections += 1
        super()._on_control_flood()

    def answered(self, stream_id: int) -> None:
        """The tunnel's handler answered it: no longer pending."""
        self._pending.pop(stream_id, None)

    def _on_stream_failed(self, stream_id: int, error: BaseException) -> None:
        task = self._pending.pop(stream_id, None)
        if task is None or task.done():
            return
        self._counters.tunnels_cancelled += 1
        if isinstance(error, TunnelResetError) and error.by_peer:
            why = "the client reset the stream before the tunnel was established"
        else:
            why = f"the HBONE connection ended before the tunnel was established: {error}"
        task.cancel(why)

    def _on_tunnel_refused(self, event: TunnelRequestRefused) -> None:
        self._counters.tunnels_refused += 1
        self._limiter.log(
            log, "info", "hbone.request_refused", f"request_refused:{event.status}", peer=str(self.peer_identity), addr=self.peer_address,
            status=event.status, reason=event.reason,
        )

    async def _run_handler(self, request: TunnelRequest) -> None:
        handed_over = False
        try:
            outcome = await self._on_tunnel(request)
            if isinstance(outcome, asyncio.Future) and not outcome.done():
                self._handlers.add(outcome)  # the tunnel lives on with it: no task, no frame
                outcome.add_done_callback(self._handlers.discard)
                handed_over = True
        except ConnectionError as exc:  # the tunnel or its upstream broke: the handler did nothing wrong
            log.debug("hbone.tunnel_ended_with_error", authority=request.authority, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one tunnel's failure must not reach the listener
            self._counters.handler_errors += 1
            self._limiter.log(
                log, "warning", "hbone.tunnel_handler_failed", f"handler_failed:{type(exc).__name__}", peer=str(self.peer_identity), authority=request.authority,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            if not handed_over:
                if not request.answered and not self.closed:
                    with contextlib.suppress(Exception):
                        await request.reject(503)
                await request._stream.aclose()


async def serve_hbone_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    peer_identity: SpiffeId,
    on_tunnel: OnTunnel,
    counters: HboneServerCounters,
    settings: HboneSettings = SERVER_SETTINGS,
) -> None:
    """Serve HBONE on one already secured (or, in tests, plaintext) connection until it ends; the server
    takes over the pair's transport."""
    conn = HboneServerConn(settings, now=asyncio.get_running_loop().time())
    driver = _ServerDriver(conn, peer_identity=peer_identity, on_tunnel=on_tunnel, counters=counters)
    adopt_streams(driver, reader, writer)
    await driver.run()


class HboneServer:
    """A listening HBONE server. Build with ``serve_hbone``.

    It accepts sockets itself and runs the TLS handshake with ``loop.connect_accepted_socket``, so the
    handshake is secured from the first byte (no plaintext read can race it, with asyncio or uvloop)
    and its failures are ours to count and log.
    """

    def __init__(
        self,
        listener: socket.socket,
        ssl_context: ssl.SSLContext,
        verify_client: VerifyClient,
        on_tunnel: OnTunnel,
        *,
        counters: HboneServerCounters,
        settings: HboneSettings,
        handshake_timeout: float,
        max_connections: int = MAX_CONNECTIONS,
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
    ) -> None:
        self.counters = counters
        self._max_connections = max_connections
        self._max_pending_handshakes = max_pending_handshakes
        self._held = 0  # accepted TCP connections not yet closed
        self._pending: dict[asyncio.Task[None], None] = {}  # handshakes in progress, oldest first
        self._limiter = RateLimitedLog(REFUSAL_LOG_INTERVAL)
        self._listener = listener
        self._address = listener.getsockname()
        self._ssl_context = ssl_context
        self._verify_client = verify_client
        self._on_tunnel = on_tunnel
        self._settings = settings
        self._handshake_timeout = handshake_timeout
        self._drivers: set[_ServerDriver] = set()
        self._tasks = ConnectionTasks()
        self._accepting: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_loop(), name="hbone-accept")

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._listener,) if self._listener.fileno() >= 0 else ()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._address[1])

    @property
    def connections(self) -> int:
        return len(self._drivers)

    def close(self) -> None:
        """Stop accepting connections; served ones carry on."""
        if self._accepting is not None:
            self._accepting.cancel()
        self._listener.close()

    async def drain(self, deadline: float) -> None:
        """Stop accepting, GOAWAY every connection, let tunnels finish until ``deadline`` (event loop
        time, as ``loop.time() + grace_seconds``), then close whatever is left."""
        self.close()
        for driver in list(self._drivers):
            driver.drain()
        await self._tasks.wait(deadline)
        await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting and close every connection now."""
        self.close()
        for driver in list(self._drivers):
            driver.close("server shutting down")
        if self._accepting is not None:
            await asyncio.wait([self._accepting])  # cancelled by close(): it starts no connection after this
        await self._tasks.cancel()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self._listener)
            except OSError as exc:  # EMFILE and friends: keep the listener, back off briefly
                self._limiter.log(log, "error", "hbone.accept_failed", "accept_failed", reason=_describe(exc))
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            if self._held >= self._max_connections:
                self._refuse(sock, addr)
                continue
            if len(self._pending) >= self._max_pending_handshakes:
                self._evict_oldest_handshake()
            self._held += 1
            task = self._tasks.spawn(self._handle(sock, addr))
            self._pending[task] = None
            task.add_done_callback(self._pending_done)

    def _pending_done(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)

    def _evict_oldest_handshake(self) -> None:
        """At the pending-handshake limit, the connection that has waited longest without completing its
        handshake makes room (a flood of idle connections then cannot lock out a client that handshakes
        at once, as refusing the newcomer would)."""
        oldest = next(iter(self._pending))
        self._pending.pop(oldest, None)
        oldest.cancel("evicted: the oldest pending TLS handshake, at the listener's pending-handshake limit")
        self.counters.handshakes_evicted += 1
        self._limiter.log(
            log, "warning", "hbone.handshake_evicted", "handshake_evicted",
            max_pending_handshakes=self._max_pending_handshakes, evicted_total=self.counters.handshakes_evicted,
            reason="pending-handshake limit reached: the oldest unfinished handshake was dropped",
        )

    def _refuse(self, sock: socket.socket, addr: object) -> None:
        self.counters.connections_refused += 1
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no TIME_WAIT
        sock.close()
        self._limiter.log(
            log, "warning", "hbone.connection_refused", "connection_refused", addr=addr, held=self._held,
            handshaking=len(self._pending), max_connections=self._max_connections,
            refused_total=self.counters.connections_refused, reason="listener at its connection limit",
        )

    async def _handle(self, sock: socket.socket, addr: object) -> None:
        try:
            self.counters.connections_accepted += 1
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            conn = HboneServerConn(self._settings, now=loop.time())
            driver = _ServerDriver(
                conn, peer_identity=None, on_tunnel=self._on_tunnel, counters=self.counters, limiter=self._limiter
            )
            try:
                async with asyncio.timeout(self._handshake_timeout + 1):
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: driver, sock, ssl=self._ssl_context, ssl_handshake_timeout=self._handshake_timeout
                    )
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                # The socket belongs to the loop's transport from the moment it was handed over, and the
                # loop closes that transport on any failure (also on our timeout's cancellation). Closing
                # ``sock`` here as well would free its fd number while the transport's deferred cleanup
                # still refers to it: a connection accepted meanwhile can reuse the number and be closed.
                self.counters.handshake_failures += 1
                self._limiter.log(
                    log, "warning", "hbone.handshake_failed", f"handshake:{type(exc).__name__}", addr=addr,
                    reason=_describe(exc),
                )
                return
            task = asyncio.current_task()
            if task is not None:
                self._pending.pop(task, None)  # handshake done: no longer evictable
            try:
                await self._serve(driver, transport, addr)
            finally:
                if not transport.is_closing():
                    transport.abort()
        finally:
            self._held -= 1

    async def _serve(self, driver: _ServerDriver, transport: asyncio.BaseTransport, addr: object) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN_H2:
                raise ValueError("the client did not negotiate ALPN h2")
            driver.peer_identity = self._verify_client(ssl_object.getpeercert(binary_form=True))
        except Exception as exc:  # noqa: BLE001 - any verification failure refuses this peer only
            self.counters.untrusted_peers += 1
            self._limiter.log(
                log, "warning", "hbone.peer_rejected", "peer_rejected", addr=addr, reason=_describe(exc)
            )
            return
        self._drivers.add(driver)
        try:
            await driver.run()
        finally:
            self._drivers.discard(driver)


def _describe(exc: BaseException) -> str:
    if str(exc):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ConnectionError):
        return f"{type(exc).__name__}: the client closed the connection during the TLS handshake"
    if isinstance(exc, TimeoutError):
        return "TimeoutError: the client did not complete the TLS handshake in time"
    return type(exc).__name__


def _listen(host: str | None, port: int, backlog: int) -> socket.socket:
    if host is None:  # every address, IPv6 and IPv4 on one socket where the kernel allows it (ztunnel: [::])
        if socket.has_dualstack_ipv6():
            return socket.create_server(
                ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=backlog, reuse_port=False
            )
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


async def serve_hbone(
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext,
    verify_client: VerifyClient,
    on_tunnel: OnTunnel,
    *,
    counters: HboneServerCounters | None = None,
    settings: HboneSettings = SERVER_SETTINGS,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    sock: socket.socket | None = None,
    backlog: int = 1024,
    max_connections: int = MAX_CONNECTIONS,
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
) -> HboneServer:
    """Listen on ``host:port`` (``host=None``: every address) or on the bound, listening ``sock``
    (e.g. made inside a pod's network namespace; the server then owns and closes it) and serve HBONE;
    see the module docstring."""
    listener = sock if sock is not None else _listen(host, port, backlog)
    server = HboneServer(
        listener, ssl_context, verify_client, on_tunnel,
        counters=counters if counters is not None else HboneServerCounters(),
        settings=settings, handshake_timeout=handshake_timeout,
        max_connections=max_connections, max_pending_handshakes=max_pending_handshakes,
    )
    server._start()
    return server

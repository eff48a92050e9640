"""Outbound: a local workload's connection carried to its destination, and the SOCKS5 front (15080).

``serve_outbound`` is the mode-independent core (in-pod mode's 15001 capture listener will call it with
the original destination; dedicated mode's ``Socks5Listener`` calls it with the SOCKS5 request):
decide with the pure ``build_route`` on one snapshot, then carry the ``Route`` out: HBONE through the
pool (``PoolKey(source identity, expected identities, next hop, source ip)``, CONNECT authority = the
chosen pod's ``ip:port``, Istio's ``baggage`` / ``forwarded`` / ``traceparent`` headers) or plain TCP
passthrough. The client is told it is connected only once the upstream is (the tunnel answered 200,
or TCP connected); every failure is classified once (``classify_outbound_failure``: metric reason,
SOCKS5 reply code, response flag) and logged once. Then relay with byte counters, metrics with
reporter=source, and one access-log line. The relay runs on callbacks: ``serve_outbound`` returns its
future and the connection's task ends (``_Outbound.relay_done`` closes the books when it completes).
Outbound connections are tracked for ``/connections`` but never re-authorized here: policy is enforced
at the destination.

SOCKS5 in dedicated mode identifies the source by address: the app connects from its own IP, and a
client whose address is not a mesh workload served by this ztunnel is refused with reply 0x02 and an
early-deny log line, never proxied under some other identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from meshcore.aio.listener import TcpListener
from meshcore.aio.pool import PoolKey
from meshcore.aio.relay import start_relay
from meshcore.aio.secrets import SecretError
from meshcore.aio.streams import ByteStream, TcpStream
from meshcore.hbone import (
    HboneConnectionError,
    PeerNotTrusted,
    TunnelRefused,
    TunnelResetError,
    build_forwarded,
    build_traceparent,
)
from meshcore.identity import SpiffeId
from meshcore.model import Workload
from meshcore.telemetry import (
    BoundTcpMetrics,
    ConnectionLabels,
    Reporter,
    ResponseFlags,
    access_log_fields,
    build_connection_labels,
    early_deny_fields,
    log_connection,
    log_early_deny,
)
from ztunnel.proxy import tcp
from ztunnel.proxy.connections import Direction, TrackedConnection, close_now
from ztunnel.proxy.errors import (
    InvalidDestination,
    NoHealthyUpstream,
    ProxyError,
    RouteError,
    SelfCall,
    Socks5Error,
    Socks5Reply,
    UnknownServicePort,
    UnknownSource,
    UnknownWaypoint,
    UpstreamConnectFailed,
)
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.proxy.routing import Protocol as RouteProtocol
from ztunnel.proxy.routing import Route, SockAddr, build_route
from ztunnel.proxy.socks5 import ConnectRequested, Socks5Server
from ztunnel.proxy.telemetry import describe_error, workload_baggage

log = structlog.get_logger("ztunnel.outbound")

HANDSHAKE_TIMEOUT = 10.0  # seconds a SOCKS5 client gets to send its greeting and request
READ_SIZE = 4096


# ------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class OutboundFailure:
    """How one outbound failure is reported."""

    # Label for ztunnel_connection_failures_total (a fixed vocabulary).
    reason: str
    # The SOCKS5 reply the client gets.
    reply: Socks5Reply
    # Istio's response_flags on the connection's metrics.
    flags: ResponseFlags
    # The access-log ``error`` text.
    message: str


def classify_outbound_failure(exc: BaseException) -> OutboundFailure:
    """Map an outbound failure to its metric reason, SOCKS5 reply and response flag (pure)."""
    msg = str(exc) or type(exc).__name__
    F = OutboundFailure  # noqa: N806 - local alias keeps the table readable
    if isinstance(exc, (SelfCall, UnknownSource)):
        return F(exc.reason, Socks5Reply.NOT_ALLOWED_BY_RULESET, ResponseFlags.NONE, msg)
    if isinstance(exc, InvalidDestination):
        return F(exc.reason, Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED, ResponseFlags.NONE, msg)
    if isinstance(exc, UnknownServicePort):
        return F(exc.reason, Socks5Reply.CONNECTION_REFUSED, ResponseFlags.NONE, msg)
    if isinstance(exc, (NoHealthyUpstream, UnknownWaypoint)):
        return F(exc.reason, Socks5Reply.HOST_UNREACHABLE, ResponseFlags.NONE, msg)
    if isinstance(exc, RouteError):
        return F(exc.reason, Socks5Reply.GENERAL_FAILURE, ResponseFlags.NONE, msg)
    if isinstance(exc, TunnelRefused):
        if exc.status == 401:
            return F("TunnelDenied", Socks5Reply.NOT_ALLOWED_BY_RULESET, ResponseFlags.DENY, msg)
        if exc.status == 503:
            return F("TunnelUpstreamUnavailable", Socks5Reply.CONNECTION_REFUSED, ResponseFlags.CONNECT, msg)
        return F("TunnelRefused", Socks5Reply.GENERAL_FAILURE, ResponseFlags.CONNECT, msg)
    if isinstance(exc, PeerNotTrusted):
        return F("PeerNotTrusted", Socks5Reply.NOT_ALLOWED_BY_RULESET, ResponseFlags.TLS_FAILURE, msg)
    if isinstance(exc, HboneConnectionError):
        return F("HboneConnectFailed", Socks5Reply.HOST_UNREACHABLE, ResponseFlags.CONNECT, msg)
    if isinstance(exc, SecretError):
        return F("CertificateUnavailable", Socks5Reply.GENERAL_FAILURE, ResponseFlags.IDENTITY_ERROR, msg)
    if isinstance(exc, UpstreamConnectFailed):
        if exc.refused:
            return F(exc.reason, Socks5Reply.CONNECTION_REFUSED, ResponseFlags.CONNECT, msg)
        if exc.timed_out:
            return F(exc.reason, Socks5Reply.TTL_EXPIRED, ResponseFlags.CONNECT, msg)
        return F(exc.reason, Socks5Reply.HOST_UNREACHABLE, ResponseFlags.CONNECT, msg)
    if isinstance(exc, ProxyError):
        return F(exc.reason, Socks5Reply.GENERAL_FAILURE, ResponseFlags.CONNECT, msg)
    return F("IoError", Socks5Reply.GENERAL_FAILURE, ResponseFlags.CONNECT, describe_error(exc))


def build_hbone_headers(src: Workload, client: SockAddr, route: Route, random_bytes: bytes) -> list[tuple[str, str]]:
    """Istio's CONNECT headers: who the source is (baggage), who the client was (forwarded, with the
    service host when a service was dialled) and a fresh trace id (24 random bytes)."""
    host = route.destination_service.hostname if route.destination_service is not None else None
    return [
        ("baggage", workload_baggage(src)),
        ("forwarded", build_forwarded(client.ip, client.port, host)),
        ("traceparent", build_traceparent(random_bytes)),
    ]


# ---------------------------------------------------------------------------------------- execution


@dataclass(frozen=True, slots=True)
class Upstream:
    """A connected upstream for one route."""

    stream: ByteStream
    route: Route
    # The server's verified identity (HBONE), None for TCP.
    peer_identity: SpiffeId | None
    # Our address on the connection toward the next hop, when known (SOCKS5's BND.ADDR).
    local: tuple[str, int] | None


class OutboundFront(Protocol):
    """What the listener in front tells its client."""

    async def connected(self, upstream: Upstream) -> bytes:
        """The upstream is up: tell the client; return bytes it already sent (relayed first)."""
        ...

    async def failed(self, failure: OutboundFailure) -> None:
        """The connection cannot be made: tell the client (it is closed afterwards)."""
        ...


async def open_upstream(inputs: ProxyInputs, src: Workload, client: SockAddr, route: Route) -> Upstream:
    """Carry out ``route``: a pooled HBONE tunnel or a TCP connection. Raises what dialling raises."""
    hop = route.next_hop
    if route.protocol is RouteProtocol.HBONE:
        assert route.authority is not None
        key = PoolKey(src.identity, frozenset(route.upstream_ids), (hop.ip, hop.port), src_ip=client.ip)
        headers = build_hbone_headers(src, client, route, inputs.random_bytes(24))
        stream = await inputs.pool.open_tunnel(key, route.authority, headers)
        return Upstream(stream, route, stream.peer_identity, stream.local_address)
    tcp_stream = await tcp.dial(inputs.sockets, hop.ip, hop.port, source_ip=client.ip)
    local = tcp_stream.get_extra_info("sockname")
    return Upstream(tcp_stream, route, None, (str(local[0]), int(local[1])) if local else None)


async def refuse_outbound(
    inputs: ProxyInputs,
    exc: Exception,
    client: TcpStream,
    client_addr: SockAddr,
    dst: SockAddr,
    front: OutboundFront,
) -> None:
    """Refuse a connection before any upstream was tried: classify ``exc`` once, count it, log its one
    early-deny line, tell the client through ``front`` and close it."""
    failure = classify_outbound_failure(exc)
    inputs.metrics.connection_failed(failure.reason)
    log_early_deny(
        inputs.access_log,
        early_deny_fields(src_addr=client_addr, dst_addr=dst, reporter=Reporter.SOURCE, error=failure.message),
    )
    await front.failed(failure)
    await client.aclose()


async def serve_outbound(
    inputs: ProxyInputs,
    src: Workload,
    client: TcpStream,
    client_addr: SockAddr,
    local_addr: SockAddr,
    dst: SockAddr,
    front: OutboundFront,
) -> asyncio.Future[tuple[int, int]] | None:
    """Route, connect, relay and account for one outbound connection (see the module docstring).

    Once the relay runs, the connection is handed over to it: the returned future (cancel it to end the
    connection) completes when the relay does, and its callback closes the streams, counts and logs.
    The caller's task can end there (an idle connection then costs no task or frame)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        route = build_route(inputs.cell.current(), src, dst.ip, dst.port, hbone_port=inputs.config.hbone_port)
    except RouteError as exc:
        await refuse_outbound(inputs, exc, client, client_addr, dst, front)
        return None

    hbone = route.protocol is RouteProtocol.HBONE
    dst_identity = None
    if route.destination_workload is None and route.upstream_ids:
        dst_identity = route.upstream_ids[0]  # a waypoint, or a service behind one
    labels = build_connection_labels(
        Reporter.SOURCE,
        source=src,
        destination=route.destination_workload,
        destination_service=route.destination_service,
        source_identity=src.identity,
        destination_identity=dst_identity,
        mtls=hbone,
    )
    metrics = inputs.metrics.bind(labels)
    metrics.opened()
    books = _Outbound(inputs, labels, metrics, route, client_addr, src.name, started)
    finish = books.finish

    try:
        upstream = await open_upstream(inputs, src, client_addr, route)
    except asyncio.CancelledError:
        finish("connection cancelled while connecting upstream (ztunnel is stopping)", ResponseFlags.CONNECT)
        raise
    except Exception as exc:  # anything dialling raises ends this connection only, classified once
        failure = classify_outbound_failure(exc)
        inputs.metrics.connection_failed(failure.reason)
        finish(failure.message, failure.flags)
        await front.failed(failure)
        await client.aclose()
        return None

    conn = books.conn = inputs.connections.track(
        workload=src,
        direction=Direction.OUTBOUND,
        local=str(local_addr),
        remote=str(client_addr),
        target=str(route.next_hop),
        original_dst=str(dst),
        protocol=route.protocol.value,
        identity=upstream.peer_identity,
        metrics=metrics,
    )
    books.client, books.upstream = client, upstream.stream
    try:
        early = await front.connected(upstream)
        if early:
            await upstream.stream.send_all(early)
            conn.counters.a_to_b += len(early)
    except asyncio.CancelledError:
        if not conn.closed_by_us():
            books.end("connection cancelled: its HBONE connection closed or ztunnel is stopping")
            raise
        inputs.metrics.connection_failed("Shutdown")
        books.end(conn.close_reason)
        return None
    except (ConnectionError, OSError) as exc:
        inputs.metrics.connection_failed("StreamReset" if isinstance(exc, TunnelResetError) else "IoError")
        books.end(describe_error(exc))
        return None
    relaying = asyncio.ensure_future(start_relay(client, upstream.stream, conn.counters))
    conn.task = relaying  # ``conn.close`` cancels the relay from now on
    relaying.add_done_callback(books.relay_done)
    return relaying


class _Outbound:
    """What one outbound connection needs once it is relaying: how it ends (``relay_done``: classify,
    close both streams, count) and its books (metrics and the access-log line). A small object that
    lives as long as the connection, instead of a task and its frames."""

    __slots__ = (
        "client", "client_addr", "conn", "inputs", "labels", "metrics", "route", "src_name", "started",
        "upstream",
    )

    def __init__(
        self, inputs: ProxyInputs, labels: ConnectionLabels, metrics: BoundTcpMetrics, route: Route,
        client_addr: SockAddr, src_name: str, started: float,
    ) -> None:
        self.inputs = inputs
        self.labels = labels
        self.metrics = metrics
        self.route = route
        self.client_addr = client_addr
        self.src_name = src_name
        self.started = started
        self.conn: TrackedConnection | None = None
        self.client: TcpStream | None = None
        self.upstream: ByteStream | None = None

    def relay_done(self, relaying: asyncio.Future[tuple[int, int]]) -> None:
        """The relay ended: on its own, failed, or cancelled (``conn.close``, or the listener closing)."""
        conn = self.conn
        assert conn is not None
        error: str | None = None
        if relaying.cancelled():
            if conn.close_reason is not None:
                error = conn.close_reason
                self.inputs.metrics.connection_failed("Shutdown")
            else:
                error = "connection cancelled: its HBONE connection closed or ztunnel is stopping"
        elif (exc := relaying.exception()) is not None:
            error = describe_error(exc)
            self.inputs.metrics.connection_failed(
                "StreamReset" if isinstance(exc, TunnelResetError) else "IoError"
            )
            if not isinstance(exc, (ConnectionError, OSError)):  # a bug: this connection only
                log.error("outbound relay failed", error=error, exc_info=exc)
        self.end(error)

    def end(self, error: str | None) -> None:
        """Stop tracking the connection, close both streams (reset them on an error), count and log."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.__exit__(None, None, None)
        client, upstream = self.client, self.upstream
        self.client = self.upstream = None
        if client is not None:
            if error is None:
                client.close()
            else:
                client.abort()
        if upstream is not None:
            close_now(upstream, reset=error is not None)
        self.finish(error)

    def finish(self, error: str | None, flags: ResponseFlags = ResponseFlags.NONE) -> None:
        metrics, route = self.metrics, self.route
        metrics.closed(flags)
        dst_wl = route.destination_workload
        fields = access_log_fields(
            self.labels, src_addr=self.client_addr, dst_addr=route.next_hop, hbone_addr=route.hbone_target,
            src_workload=self.src_name, dst_workload=dst_wl.name if dst_wl is not None else None,
            request_bytes=metrics.received, response_bytes=metrics.sent,
            duration=asyncio.get_running_loop().time() - self.started, error=error,
        )
        log_connection(self.inputs.access_log, fields)


# ------------------------------------------------------------------------------------------- SOCKS5


SourceLookup = Callable[[str], Workload | None]
"""The local mesh workload at a client IP, or None (dedicated mode: served by this ztunnel)."""


class _Socks5Front:
    __slots__ = ("_client", "_server")

    def __init__(self, server: Socks5Server, client: TcpStream) -> None:
        self._server = server
        self._client = client

    async def connected(self, upstream: Upstream) -> bytes:
        ip, port = upstream.local or ("0.0.0.0", 0)
        self._server.reply_success(ip, port)
        await self._client.send_all(self._server.data_to_send())
        return self._server.take_leftover()

    async def failed(self, failure: OutboundFailure) -> None:
        self._server.reply_failure(failure.reply)
        with contextlib.suppress(ConnectionError, OSError):
            await self._client.send_all(self._server.data_to_send())


class Socks5Listener(TcpListener):
    """Dedicated mode's outbound listener (ztunnel's SOCKS5 on 15080): one for the whole node."""

    def __init__(self, inputs: ProxyInputs, listener: socket.socket, source_for: SourceLookup) -> None:
        super().__init__(listener)
        self._inputs = inputs
        self._source_for = source_for
        self._local = SockAddr(*super().address)

    @property
    def address(self) -> SockAddr:
        """Where SOCKS5 clients connect; ``str()`` is ``ip:port``."""
        return self._local

    def _log_failure(self) -> None:
        log.exception("socks5 connection failed")

    async def _serve(self, client: TcpStream) -> Awaitable[object] | None:
        inputs = self._inputs
        peer = client.get_extra_info("peername")
        client_addr = SockAddr(str(peer[0]), int(peer[1]))
        server = Socks5Server()
        try:
            request = await _handshake(server, client)
        except Socks5Error as exc:
            inputs.metrics.connection_failed(exc.reason)
            log.warning("socks5 handshake refused", client=str(client_addr), error=str(exc))
            with contextlib.suppress(ConnectionError, OSError):
                await client.send_all(server.data_to_send())
            await client.aclose()
            return None
        except (TimeoutError, ConnectionError, OSError) as exc:
            inputs.metrics.connection_failed("Socks5HandshakeAborted")
            log.warning("socks5 handshake did not complete", client=str(client_addr), error=describe_error(exc))
            client.abort()
            return None
        dst = SockAddr(request.host, request.port)
        front = _Socks5Front(server, client)
        src = self._source_for(client_addr.ip)
        if src is None:
            await refuse_outbound(inputs, UnknownSource(client_addr.ip), client, client_addr, dst, front)
            return None
        # Handed back for the listener to await: this frame ends instead of idling with the connection.
        return serve_outbound(inputs, src, client, client_addr, self.address, dst, front)


async def _handshake(server: Socks5Server, client: TcpStream) -> ConnectRequested:
    """Run the SOCKS5 greeting and request; returns the CONNECT request. Raises ``Socks5Error``."""
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        while True:
            data = await client.receive_some(READ_SIZE)
            events = server.receive_data(data)
            out = server.data_to_send()
            if out:
                await client.send_all(out)
            for event in events:
                if isinstance(event, ConnectRequested):
                    return event

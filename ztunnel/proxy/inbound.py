"""Inbound: a connection arriving for a local workload, in ztunnel's phases (reference §4, style §7.5).

1. context (pure, ``build_inbound_context``): the destination workload must still be served (else 503),
   the requested IP must be one of its addresses (else 400 ``ip mismatch``), and the port must not be one
   of ztunnel's own (400, a loop). Failures here are early denies: one "connection failed" line.
2. authorize (pure, ``evaluate_l4`` on the workload's policies and the connection's ``ConnFacts``):
   a denial answers 401 and logs "connection complete" with the deciding policy's message.
3. dial the application through the proxy's ``SocketFactory``: failure answers 503.
4. only now answer 200 (``baggage`` describing the destination), then relay with byte counters while the
   connection is registered with the ``ConnectionManager`` (so the PolicyWatcher can close it). The
   relay runs on callbacks: its future is handed back and the handler's task ends.
5. metrics (reporter=destination) and one access-log line, whatever happened (for a relaying
   connection, from the relay's done callback).

``serve_inbound`` is shared by the HBONE listener (15008: identity from the verified client certificate)
and the plaintext one (15006: no identity); a front only says how to answer (``InboundAnswer``). Every
outcome is counted and logged once; nothing a peer sends can raise out of a handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog

from meshcore.aio.hbone_server import OnTunnel, TunnelRequest
from meshcore.aio.relay import start_relay
from meshcore.aio.streams import ByteStream, TcpStream
from meshcore.hbone import Headers, TunnelResetError, find_header, parse_forwarded
from meshcore.identity import SpiffeId
from meshcore.model import Service, Workload
from meshcore.policy import POLICY_CHANGE_MESSAGE, ConnFacts, Decision, DenyReason, evaluate_l4
from meshcore.routing import canonical_ip
from meshcore.state import ProxyState
from meshcore.telemetry import (
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
    InboundAddressMismatch,
    InboundError,
    InboundSelfCall,
    InboundWorkloadUnknown,
    UpstreamConnectFailed,
)
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.proxy.routing import ILLEGAL_PORTS, SockAddr
from ztunnel.proxy.telemetry import describe_error, workload_baggage, workload_from_baggage
from ztunnel.sockets import SocketFactory, upstream_sockets

log = structlog.get_logger("ztunnel.inbound")

BAGGAGE = "baggage"
FORWARDED = "forwarded"

# Failure reasons for ztunnel_connection_failures_total beyond the InboundError reasons.
REASON_DENIED = "PolicyDenied"
REASON_POLICY_CHANGE = "PolicyChange"
REASON_RESET = "StreamReset"
REASON_IO = "IoError"
REASON_SHUTDOWN = "Shutdown"


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """What arrived, before any decision."""

    # The client as seen on the socket (for HBONE: the peer of the TLS connection).
    src: SockAddr
    # Where the client asked to go: the CONNECT authority, or for plaintext the workload address and port.
    dst: SockAddr
    # The verified identity of the TLS peer; None on plaintext.
    identity: SpiffeId | None
    # True for HBONE (mTLS), False for plaintext.
    hbone: bool
    # ztunnel's listening address the client reached, when known (ip:15008 or ip:15006).
    local: SockAddr | None = None
    # The CONNECT request headers (baggage, forwarded, traceparent); empty on plaintext.
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class InboundContext:
    """Everything the later phases need, decided from one snapshot."""

    # The destination workload as the current snapshot has it.
    workload: Workload
    # Where ztunnel connects: the workload address and port as requested.
    upstream: SockAddr
    # What L4 authorization sees (and re-sees when policies change).
    facts: ConnFacts
    # The client's workload: found by source IP, else described by its baggage (labels only), else None.
    source: Workload | None
    # The service the client addressed, when it can be told (``forwarded;host=``, or the only one).
    service: Service | None




def guess_inbound_service(
    state: ProxyState, workload: Workload, port: int, forwarded_host: str | None
) -> Service | None:
    """The service a connection to ``workload:port`` was for: the one ``forwarded;host=`` names, else
    the only one of the workload's services that targets ``port`` (ambiguous or none: None)."""
    services = [s for key in workload.services if (s := state.find_service(key)) is not None]
    if forwarded_host:
        named = next((s for s in services if s.hostname == forwarded_host), None)
        if named is not None:
            return named
    matching = []
    for svc in services:
        own = workload.services.get(svc.key, ())
        for p in svc.ports:
            mapped = next((o.target_port for o in own if o.service_port == p.service_port and o.target_port), 0)
            if (mapped or p.target_port or p.service_port) == port:
                matching.append(svc)
                break
    return matching[0] if len(matching) == 1 else None


def build_inbound_context(
    state: ProxyState,
    served: Workload,
    request: InboundRequest,
    *,
    own_ports: frozenset[int] = ILLEGAL_PORTS,
) -> InboundContext:
    """Phase 1 (pure): raises an ``InboundError`` with the status to answer when the request cannot be served."""
    workload = state.find_workload(served.uid)
    if workload is None:
        raise InboundWorkloadUnknown(served.uid)
    requested = canonical_ip(request.dst.ip)
    if requested not in {canonical_ip(a) for a in workload.addresses}:
        here = request.local.ip if request.local is not None else ", ".join(workload.addresses) or "no address"
        raise InboundAddressMismatch(requested, here)
    if request.dst.port in own_ports:
        raise InboundSelfCall(str(request.dst))
    facts = ConnFacts(
        src_ip=request.src.ip,
        src_port=request.src.port,
        dst_ip=requested,
        dst_port=request.dst.port,
        src_identity=request.identity,
        dst_network=workload.network,
    )
    source = state.find_workload_by_addr(request.src.ip, workload.network)
    if source is None:
        source = workload_from_baggage(find_header(request.headers, BAGGAGE))
    forwarded = find_header(request.headers, FORWARDED)
    parsed = parse_forwarded(forwarded) if forwarded else None
    service = guess_inbound_service(state, workload, request.dst.port, parsed.host if parsed else None)
    return InboundContext(workload, SockAddr(requested, request.dst.port), facts, source, service)


def authorize(state: ProxyState, ctx: InboundContext) -> Decision:
    """Phase 2 (pure): the workload's policies (global, namespace, selected) against the facts.

    Fail closed: while a policy the workload names has not arrived (xDS delivers workloads and policies
    separately), the connection is refused naming it; the policy watcher re-checks nothing is lost, and
    new connections are decided as soon as it arrives."""
    missing = state.missing_policies(ctx.workload)
    if missing:
        return Decision.deny(DenyReason.POLICY_PENDING, policy=missing[0])
    return evaluate_l4(state.policies_for(ctx.workload), ctx.facts)


class InboundAnswer(Protocol):
    """How a front answers its client: HBONE sends a status, plaintext can only accept or reset."""

    async def accept(self, headers: Iterable[tuple[str, str]]) -> ByteStream: ...

    async def reject(self, status: int) -> None: ...


def serve_inbound(
    inputs: ProxyInputs,
    served: Workload,
    sockets: SocketFactory,
    request: InboundRequest,
    answer: InboundAnswer,
) -> Awaitable[asyncio.Future[tuple[int, int]] | None]:
    """Run the phases for one inbound connection (see the module docstring): ``await`` what this returns.
    Never raises for peer input. The awaited result is the relay's future once the connection relays
    (it then carries on without the caller's task), else None.

    Phase 1 runs now; the rest is the returned coroutine, handed back rather than awaited here so an
    idle connection's task holds one frame less."""
    state = inputs.cell.current()
    own_ports = ILLEGAL_PORTS | {inputs.config.hbone_port, inputs.config.inbound_plaintext_port}
    try:
        ctx = build_inbound_context(state, served, request, own_ports=own_ports)
    except InboundError as exc:
        inputs.metrics.connection_failed(exc.reason)
        log_early_deny(
            inputs.access_log,
            early_deny_fields(
                src_addr=request.src, dst_addr=request.dst, reporter=Reporter.DESTINATION, error=str(exc)
            ),
        )
        return answer.reject(exc.status_hint)
    return _InboundConnection(inputs, ctx, request).run(state, sockets, answer)


class _InboundConnection:
    """Phases 2-5 of one connection whose context is known: it has labels and an access-log line."""

    __slots__ = (
        "conn", "ctx", "downstream", "inputs", "labels", "loop", "metrics", "request", "started", "upstream",
    )

    def __init__(self, inputs: ProxyInputs, ctx: InboundContext, request: InboundRequest) -> None:
        self.inputs = inputs
        self.ctx = ctx
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.labels = build_connection_labels(
            Reporter.DESTINATION,
            source=ctx.source,
            destination=ctx.workload,
            destination_service=ctx.service,
            source_identity=request.identity,
            destination_identity=ctx.workload.identity,
            mtls=request.hbone,
        )
        self.metrics = inputs.metrics.bind(self.labels)
        self.metrics.opened()
        self.conn: TrackedConnection | None = None
        self.downstream: ByteStream | None = None
        self.upstream: TcpStream | None = None

    async def run(
        self, state: ProxyState, sockets: SocketFactory, answer: InboundAnswer
    ) -> asyncio.Future[tuple[int, int]] | None:
        """Phases 2-4, then hand the connection to its relay (phase 5): the returned future completes
        when the relay does and ``relay_done`` closes the books; the caller's task can end meanwhile."""
        inputs, ctx, request = self.inputs, self.ctx, self.request
        try:
            decision = authorize(state, ctx)
            if not decision.allowed:
                inputs.metrics.connection_failed(REASON_DENIED)
                self.finish(decision.message, ResponseFlags.DENY, policy=decision.policy)
                await answer.reject(401)
                return None
            dialer = upstream_sockets(sockets, request.src.ip)  # in-pod: the app sees the client's address
            try:
                upstream = await tcp.dial(dialer, ctx.upstream.ip, ctx.upstream.port)
            except UpstreamConnectFailed as exc:
                inputs.metrics.connection_failed(exc.reason)
                self.finish(str(exc), ResponseFlags.CONNECT)
                await answer.reject(503)
                return None
            try:
                downstream = await answer.accept([(BAGGAGE, workload_baggage(ctx.workload))])
            except (ConnectionError, OSError) as exc:  # the client reset or left while we dialled
                upstream.abort()
                inputs.metrics.connection_failed(REASON_RESET)
                self.finish(f"the client went away before the tunnel was established: {describe_error(exc)}")
                return None
        except asyncio.CancelledError as exc:
            if not self.metrics.is_closed:  # cancelled before the relay took over the accounting
                # The HBONE server cancels with the reason (the client reset the stream...); a bare
                # cancellation is ztunnel stopping.
                why = exc.args[0] if exc.args and isinstance(exc.args[0], str) else (
                    "connection cancelled before it was established: ztunnel is stopping"
                )
                inputs.metrics.connection_failed(REASON_RESET if exc.args else REASON_SHUTDOWN)
                self.finish(why)
            raise
        del state, sockets, answer, decision, dialer
        conn = self.conn = inputs.connections.track(
            workload=ctx.workload,
            direction=Direction.INBOUND,
            local=str(request.local) if request.local is not None else str(request.dst),
            remote=str(request.src),
            target=str(ctx.upstream),
            original_dst=ctx.service.hostname if ctx.service is not None else "",
            protocol="HBONE" if request.hbone else "TCP",
            identity=request.identity,
            facts=ctx.facts,
            metrics=self.metrics,
        )
        self.downstream, self.upstream = downstream, upstream
        relaying = asyncio.ensure_future(start_relay(downstream, upstream, conn.counters))
        conn.task = relaying  # ``conn.close`` (a policy change, a drain) cancels the relay from now on
        relaying.add_done_callback(self.relay_done)
        return relaying

    def relay_done(self, relaying: asyncio.Future[tuple[int, int]]) -> None:
        """Phase 5's end: classify how the relay ended, stop tracking, close both sides, count, log."""
        inputs, conn = self.inputs, self.conn
        assert conn is not None
        error: str | None = None
        flags = ResponseFlags.NONE
        policy: str | None = None
        if relaying.cancelled():
            if conn.close_reason is not None:
                error, policy = conn.close_reason, conn.close_policy
                if error == POLICY_CHANGE_MESSAGE:
                    flags = ResponseFlags.DENY
                    inputs.metrics.connection_failed(REASON_POLICY_CHANGE)
                else:
                    inputs.metrics.connection_failed(REASON_SHUTDOWN)
            else:
                error = "connection cancelled: its HBONE connection closed or ztunnel is stopping"
                inputs.metrics.connection_failed(REASON_SHUTDOWN)
        elif (exc := relaying.exception()) is not None:
            error = describe_error(exc)
            inputs.metrics.connection_failed(REASON_RESET if isinstance(exc, TunnelResetError) else REASON_IO)
            if not isinstance(exc, (ConnectionError, OSError)):  # a bug: this connection only
                log.error("inbound relay failed", error=error, exc_info=exc)
        self.conn = None
        conn.__exit__(None, None, None)
        downstream, upstream = self.downstream, self.upstream
        self.downstream = self.upstream = None
        if upstream is not None:
            if error is None:
                upstream.close()
            else:
                upstream.abort()
        if downstream is not None:
            close_now(downstream, reset=False)  # a tunnel still open is reset; a TCP client gets a FIN
        self.finish(error, flags, policy=policy)

    def finish(self, error: str | None, flags: ResponseFlags = ResponseFlags.NONE, **extra: object) -> None:
        """Count the close and write the access-log line (once per connection)."""
        self.metrics.closed(flags)
        source = self.ctx.source
        fields = access_log_fields(
            self.labels,
            src_addr=self.request.src,
            dst_addr=self.ctx.upstream,
            hbone_addr=self.request.dst if self.request.hbone else None,
            src_workload=source.name if source is not None and source.uid else None,
            dst_workload=self.ctx.workload.name,
            request_bytes=self.metrics.received,
            response_bytes=self.metrics.sent,
            duration=self.loop.time() - self.started,
            error=error,
        )
        fields.update((k, v) for k, v in extra.items() if v is not None)
        log_connection(self.inputs.access_log, fields)


class _TunnelAnswer:
    """Answers an HBONE CONNECT with a status."""

    __slots__ = ("_request",)

    def __init__(self, request: TunnelRequest) -> None:
        self._request = request

    async def accept(self, headers: Iterable[tuple[str, str]]) -> ByteStream:
        return await self._request.accept(headers)

    async def reject(self, status: int) -> None:
        await self._request.reject(status)


def hbone_request(request: TunnelRequest) -> InboundRequest:
    """The ``InboundRequest`` of a CONNECT (authority already validated as ``ip:port`` by the HBONE layer)."""
    peer = request.peer_address or ("0.0.0.0", 0)
    local = request.local_address
    return InboundRequest(
        src=SockAddr(canonical_ip(peer[0]), peer[1]),
        dst=SockAddr(request.target.host, request.target.port),
        identity=request.peer_identity,
        hbone=True,
        local=SockAddr(canonical_ip(local[0]), local[1]) if local is not None else None,
        headers=request.headers,
    )


def hbone_handler(inputs: ProxyInputs, served: Workload, sockets: SocketFactory) -> OnTunnel:
    """The ``on_tunnel`` callback of ``served``'s 15008 listener."""

    def on_tunnel(request: TunnelRequest) -> Awaitable[asyncio.Future[tuple[int, int]] | None]:
        return serve_inbound(inputs, served, sockets, hbone_request(request), _TunnelAnswer(request))

    return on_tunnel

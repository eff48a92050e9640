"""Errors of ztunnel's proxy package: routing refusals and SOCKS5 protocol errors.

Every class has a message an operator can act on and a ``reason``: a short, stable name (ztunnel's
error enum names) for metrics labels and access-log ``error`` fields. Remote misbehaviour (a SOCKS5
client sending garbage, a destination that cannot be routed) is an ordinary, expected error: the
connection is refused, logged once and counted, and nothing else is affected. ``Socks5UsageError`` is
the exception: it means our own shell called the SOCKS5 core out of order (a bug), never peer input.
"""

from __future__ import annotations

import enum


class ProxyError(Exception):
    """Base class of every error raised by ``ztunnel.proxy``."""

    reason = "ProxyError"


# ------------------------------------------------------------------------------------------ routing


class RouteError(ProxyError):
    """``build_route`` cannot send this connection anywhere it is allowed to go; refuse the connection.

    ``destination`` is the ``ip:port`` the application dialled.
    """

    reason = "RouteError"

    def __init__(self, destination: str, message: str) -> None:
        super().__init__(f"no route to {destination}: {message}")
        self.destination = destination


class InvalidDestination(RouteError):
    """The destination is not an IP literal and a port in 1..65535 (a shell bug or a bad SOCKS5 request)."""

    reason = "InvalidDestination"


class SelfCall(RouteError):
    """A connection to one of ztunnel's own listener ports on a loopback address: refused to avoid a loop."""

    reason = "SelfCall"


class UnknownServicePort(RouteError):
    """The destination is a service VIP but the service does not expose that port.

    Istio refuses these too (ztunnel reports them as ``NoHealthyUpstream``): passing them through would
    send mesh-bound traffic around the mesh.
    """

    reason = "UnknownServicePort"


class NoHealthyUpstream(RouteError):
    """The service has no endpoint this proxy may send to (none, all unhealthy, or none serving the port)."""

    reason = "NoHealthyUpstream"


class UnknownWaypoint(RouteError):
    """The destination has a waypoint this proxy cannot resolve to a reachable waypoint workload.

    Fails closed: skipping the waypoint would bypass the L7 policy it enforces.
    """

    reason = "UnknownWaypoint"


# ------------------------------------------------------------------------------------------- SOCKS5


class Socks5Reply(enum.IntEnum):
    """RFC 1928 §6 reply codes (the REP field)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED_BY_RULESET = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks5Error(ProxyError):
    """The SOCKS5 client sent something this server does not accept; the handshake is over.

    The server has already queued its answer (method refusal or a failure reply, when RFC 1928 has one
    for the case) in ``data_to_send()``: send it, then close the connection. ``reply`` is the REP code
    queued, or ``None`` when the protocol has no reply for this case (bad version, early close).
    """

    reason = "Socks5Error"
    reply: Socks5Reply | None = None


class Socks5ProtocolError(Socks5Error):
    """Bytes that are not a SOCKS5 greeting or request (wrong version, reserved byte set, bad lengths)."""

    reason = "Socks5ProtocolError"

    def __init__(self, message: str, reply: Socks5Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class Socks5NoAcceptableMethod(Socks5Error):
    """The client offered no authentication method we support (only 0x00, no authentication)."""

    reason = "Socks5NoAcceptableMethod"

    def __init__(self, offered: tuple[int, ...]) -> None:
        shown = ", ".join(f"0x{m:02x}" for m in offered) or "none"
        super().__init__(
            f"SOCKS5 client offered authentication methods [{shown}]; this server only accepts 0x00 "
            "(no authentication): configure the client without a username/password"
        )
        self.offered = offered


class Socks5CommandNotSupported(Socks5Error):
    """BIND or UDP ASSOCIATE (or an unknown command): only CONNECT is served."""

    reason = "Socks5CommandNotSupported"
    reply = Socks5Reply.COMMAND_NOT_SUPPORTED

    def __init__(self, command: int) -> None:
        names = {0x02: "BIND", 0x03: "UDP ASSOCIATE"}
        name = names.get(command, f"unknown command 0x{command:02x}")
        super().__init__(f"SOCKS5 {name} is not supported; only CONNECT (0x01) is")
        self.command = command


class Socks5AddressTypeNotSupported(Socks5Error):
    """An address type we do not accept: an unknown ATYP, or a domain name when names are not enabled."""

    reason = "Socks5AddressTypeNotSupported"
    reply = Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Socks5ConnectionClosed(Socks5Error):
    """The client closed the connection before finishing its CONNECT request."""

    reason = "Socks5ConnectionClosed"


class Socks5UsageError(ProxyError):
    """Our own code called the SOCKS5 core out of order (e.g. replied twice): a bug, not peer input."""

    reason = "Socks5UsageError"


# ----------------------------------------------------------------------------- inbound and upstream


class UpstreamConnectFailed(ProxyError):
    """The TCP connection to the application (inbound) or a passthrough destination (outbound) failed."""

    reason = "ConnectionFailed"

    def __init__(self, target: str, detail: str, *, timed_out: bool = False, refused: bool = False) -> None:
        super().__init__(f"cannot connect to {target}: {detail}")
        self.target = target
        self.timed_out = timed_out
        self.refused = refused


class UnknownSource(ProxyError):
    """An outbound connection from an address that is not a mesh workload served by this ztunnel.

    Refused rather than proxied under some other identity: the source identity is what the destination
    authorizes.
    """

    reason = "UnknownSource"

    def __init__(self, source: str) -> None:
        super().__init__(
            f"connection from {source}, which is not a mesh workload served by this ztunnel; only local "
            "workloads in the mesh may use it (check the workload's node and that its namespace is enrolled)"
        )
        self.source = source


class InboundError(ProxyError):
    """An inbound connection cannot be served; ``status_hint`` is the HBONE status to answer with."""

    reason = "InboundError"
    status_hint = 400


class InboundWorkloadUnknown(InboundError):
    """The destination workload is not (or no longer) known to this proxy; ztunnel answers 503."""

    reason = "UnknownDestination"
    status_hint = 503

    def __init__(self, workload: str) -> None:
        super().__init__(f"workload {workload} is not served here any more (it left the mesh or this node)")
        self.workload = workload


class InboundAddressMismatch(InboundError):
    """The CONNECT authority names an IP that is not the destination workload's (ztunnel: ``ip mismatch``)."""

    reason = "IPMismatch"
    status_hint = 400

    def __init__(self, requested: str, served: str) -> None:
        super().__init__(
            f"ip mismatch: {requested} != {served}; this listener serves only its own workload's addresses"
        )
        self.requested = requested
        self.served = served


class InboundSelfCall(InboundError):
    """The connection targets one of ztunnel's own ports on the workload (a loop)."""

    reason = "SelfCall"
    status_hint = 400

    def __init__(self, target: str) -> None:
        super().__init__(f"{target} is one of ztunnel's own listener ports; refusing a loop")
        self.target = target

"""Events an HBONE connection reports after ``receive_data`` or ``handle_timer``: facts, past tense.

Every event is a frozen value. Stream-scoped events carry ``stream_id``; ``stream_id == 0`` in
``WindowOpened`` means the connection window (every blocked stream may resume). Nothing here holds a
reference to a connection, a socket or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.hbone.headers import Authority

Headers = tuple[tuple[str, str], ...]
"""Regular (non-pseudo) header fields in wire order, names lower case, values decoded as latin-1."""


@dataclass(frozen=True, slots=True)
class TunnelRequested:
    """Server side: a valid CONNECT arrived; answer with ``accept`` or ``reject``."""

    stream_id: int
    authority: str  # canonical ``ip:port`` / ``[ipv6]:port`` form of ``target``
    target: Authority  # the parsed authority: where the client wants to go
    headers: Headers  # baggage, forwarded, traceparent...


@dataclass(frozen=True, slots=True)
class TunnelRequestRefused:
    """Server side: a request was invalid and the connection already answered it with ``status``.

    The shell only logs and counts it; the stream is finished.
    """

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class TunnelAccepted:
    """Client side: the server answered 200; data may flow both ways."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class TunnelRejected:
    """Client side: the server answered with a status other than 200; the stream is finished."""

    stream_id: int
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Tunnel bytes arrived. Call ``acknowledge(stream_id, len(data))`` once the app consumed them.

    ``data`` is often a read-only view into the bytes the connection received (not a copy): it stays
    valid, but take ``bytes(data)`` where a ``bytes`` object is needed."""

    stream_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class EofReceived:
    """The peer half-closed its sending direction (END_STREAM); our direction stays open."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class TunnelReset:
    """The tunnel ended abruptly (RST_STREAM), by the peer or by this connection on a protocol error."""

    stream_id: int
    error_code: int
    by_peer: bool


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """The send window grew: a ``send`` that returned less than asked can be retried."""

    stream_id: int  # 0: the connection window, i.e. every stream


@dataclass(frozen=True, slots=True)
class ConnectionDraining:
    """The peer sent a graceful GOAWAY: open no new tunnels; tunnels up to ``last_stream_id`` carry on."""

    last_stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is unusable (peer garbage, protocol error, GOAWAY with an error, keepalive
    timeout). Flush ``data_to_send()`` one last time, then close the transport."""

    reason: str
    error_code: int
    by_peer: bool


@dataclass(frozen=True, slots=True)
class PingAcked:
    """The peer answered a PING sent at ``sent_at`` (the ``now`` given to ``ping``)."""

    sent_at: float


HboneEvent = (
    TunnelRequested
    | TunnelRequestRefused
    | TunnelAccepted
    | TunnelRejected
    | DataReceived
    | EofReceived
    | TunnelReset
    | WindowOpened
    | ConnectionDraining
    | ConnectionClosed
    | PingAcked
)

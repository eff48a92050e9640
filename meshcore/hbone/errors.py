"""Errors of the HBONE layer (sans-IO core and its asyncio shells).

Two families, as in h11: ``LocalHboneError`` means *we* misused the API (a bug or a lost race; fix the
caller), ``RemoteHboneError`` means the *peer* misbehaved and carries ``status_hint``, the HTTP status
the server answers with. Errors that end a tunnel or a connection also subclass ``ConnectionError`` so
relay code can treat them like any broken socket. Peer garbage never surfaces as an exception from
``receive_data``: it becomes a ``ConnectionClosed`` or ``TunnelRequestRefused`` event instead.
"""

from __future__ import annotations


class HboneError(Exception):
    """Base class of every HBONE error."""


class LocalHboneError(HboneError):
    """We called the HBONE API in a way it does not allow (wrong state, bad argument, limit reached)."""


class StreamLimitReached(LocalHboneError):
    """The peer's SETTINGS_MAX_CONCURRENT_STREAMS is used up; open the tunnel on another connection."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the peer allows at most {limit} concurrent HBONE streams on this connection and all are in "
            "use; open a new connection (the pool does this automatically)"
        )
        self.limit = limit


class RemoteHboneError(HboneError):
    """The peer sent something HBONE does not allow; ``status_hint`` is the HTTP status to answer with."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class InvalidAuthority(RemoteHboneError, ValueError):
    """A CONNECT ``:authority`` that is not ``<ip>:<port>`` with an IP literal and a port in 1..65535."""

    def __init__(self, authority: str, reason: str) -> None:
        super().__init__(
            f"invalid HBONE :authority {authority!r}: {reason} (expected <ipv4>:<port> or [<ipv6>]:<port>)",
            status_hint=400,
        )
        self.authority = authority
        self.reason = reason


class InvalidTunnelRequest(RemoteHboneError):
    """A request on the HBONE port that is not a plain HTTP/2 CONNECT to ``ip:port``."""


class HboneConnectionError(HboneError, ConnectionError):
    """The HBONE connection is gone or going away; no tunnel on it can make progress."""


class ConnectionDrained(HboneConnectionError):
    """The connection is draining (GOAWAY sent or received): it accepts no new tunnels."""


class TunnelRefused(HboneError, ConnectionError):
    """The server answered the CONNECT with a status other than 200 (400 bad request, 401 denied by
    policy, 503 upstream unreachable...)."""

    def __init__(self, status: int, authority: str = "") -> None:
        target = f" to {authority}" if authority else ""
        super().__init__(f"HBONE tunnel{target} refused by the server with HTTP status {status}")
        self.status = status
        self.authority = authority


class TunnelResetError(HboneError, ConnectionResetError):
    """The tunnel was reset (RST_STREAM) before both sides finished; ``error_code`` is the HTTP/2 code."""

    def __init__(self, error_code: int, *, by_peer: bool) -> None:
        who = "the peer" if by_peer else "this side"
        super().__init__(f"HBONE tunnel reset by {who} with HTTP/2 error code {error_code}")
        self.error_code = error_code
        self.by_peer = by_peer


class PeerNotTrusted(HboneError, ConnectionError):
    """The TLS peer's certificate did not carry an identity we accept; the connection was closed before
    any tunnel was opened on it."""

"""Errors of the delta-xDS client protocol.

``ProtocolError`` subclasses describe a control plane that broke the delta-ADS contract (the shell logs
them and reconnects). ``ProtocolMisuse`` subclasses are bugs in the caller (ACKing a nonce never received)
and should fail loudly in tests. Per-resource problems are never exceptions: they are NACKed by name.
"""

from __future__ import annotations


class XdsError(Exception):
    """Base class for errors raised by ``meshcore.xds``."""


class ProtocolError(XdsError):
    """The control plane sent something the delta-ADS protocol does not allow; the stream should be reset."""


class UnknownTypeUrl(ProtocolError):
    def __init__(self, type_url: str, subscribed: tuple[str, ...]) -> None:
        super().__init__(
            f"control plane sent a response of type {type_url!r}, which this client never subscribed to "
            f"(subscribed: {', '.join(subscribed)}); check the server's type URLs"
        )
        self.type_url = type_url


class ResponseOutOfOrder(ProtocolError):
    """A response arrived when none could: before the stream's initial requests, or before the previous
    response of the same type was ACKed/NACKed."""


class MalformedResponse(ProtocolError):
    """A response missing something every response must carry (e.g. the nonce)."""


class ProtocolMisuse(XdsError, AssertionError):
    """A bug in the code driving the protocol (not the control plane's fault)."""


class AckMismatch(ProtocolMisuse):
    def __init__(self, type_url: str, nonce: str, pending: str | None) -> None:
        super().__init__(
            f"ACK/NACK for {type_url!r} nonce {nonce!r}, but the response awaiting a reply has nonce {pending!r}"
        )

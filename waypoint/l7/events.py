"""Events the sans-IO HTTP sessions (``http1``, ``http2``) report, one vocabulary for both versions.

Headers travel as lists of ``(name, value)`` ``str`` pairs, names lowercase, values latin-1 decoded
(so every byte round-trips). ``stream_id`` is 1 for HTTP/1 (one message at a time on the wire).
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class RequestHead:
    stream_id: int
    method: str
    scheme: str
    authority: str
    path: str
    headers: Headers  # without pseudo-headers and without host (that is ``authority``)
    http_version: str  # "1.0", "1.1" or "2"
    end_stream: bool  # no body follows
    keep_alive: bool = True  # HTTP/1: the client allows another request after this one
    expect_continue: bool = False  # HTTP/1 ``Expect: 100-continue``
    upgrade: str | None = None  # HTTP/1 upgrade we may pass through (``websocket``)
    content_length: int | None = None
    user_agent: str = ""


@dataclass(slots=True)
class ResponseHead:
    stream_id: int
    status: int
    headers: Headers  # without pseudo-headers
    end_stream: bool
    keep_alive: bool = True  # HTTP/1: the server allows another request on this connection
    content_length: int | None = None


@dataclass(slots=True)
class Informational:
    """A 1xx response other than 101 (100 Continue, 103 Early Hints)."""

    stream_id: int
    status: int
    headers: Headers


@dataclass(slots=True)
class Body:
    stream_id: int
    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    stream_id: int
    trailers: Headers


@dataclass(slots=True)
class Upgraded:
    """HTTP ended (after a 101): ``data`` is the first opaque bytes that followed."""

    data: bytes


@dataclass(slots=True)
class StreamReset:
    """HTTP/2: the peer reset ``stream_id`` (``premature``: before we answered it)."""

    stream_id: int
    error_code: int
    premature: bool = False


@dataclass(slots=True)
class WindowOpened:
    """HTTP/2: more may be sent (stream_id 0: the connection window)."""

    stream_id: int


@dataclass(slots=True)
class Refusal:
    """The peer's bytes are malformed or over a limit. HTTP/1: answer ``status`` (if a response can still
    be sent) and close; HTTP/2 stream-level: answer ``status`` on ``stream_id``."""

    status: int
    reason: str  # short, for the response body and Envoy-like details (e.g. "http1.headers_too_large")
    detail: str  # actionable, for the log
    stream_id: int = 1


@dataclass(slots=True)
class ConnectionEnded:
    """The connection is over: the peer closed it, went away (GOAWAY) or we ended it for abuse/protocol
    errors (``error_code`` > 0, ``reason`` says why)."""

    reason: str
    error_code: int = 0
    last_stream_id: int | None = None


Event = (
    RequestHead | ResponseHead | Informational | Body | EndOfMessage | Upgraded | StreamReset | WindowOpened
    | Refusal | ConnectionEnded
)

"""The values the waypoint's HTTP engine and the waypoint process exchange (no I/O, no parsing here).

``HttpLimits`` are the per-listener settings; ``Request`` is what a ``RequestHandler`` decides on;
it answers with a ``LocalResponse`` (403 ``RBAC: access denied``, 503 ``no healthy upstream``...) or a
``Forward`` naming an upstream endpoint the process's ``UpstreamPool`` can connect to. After the
response completes the engine reports a ``RequestRecord`` (the waypoint turns it into Istio's request
metrics and one access-log line).

Invariants: every value here is immutable; header names are lowercase ``str`` (HTTP/2 requires it and
Envoy lowercases HTTP/1 names too), values are ``str`` decoded as latin-1 (bytes round-trip exactly).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from meshcore.aio.streams import ByteStream
from meshcore.identity import SpiffeId
from waypoint.resilience.retry import RetryPolicy

HeaderList = tuple[tuple[str, str], ...]


class HttpProtocol(enum.Enum):
    """The HTTP version spoken on one side of the proxy."""

    HTTP1 = "HTTP/1.1"
    HTTP2 = "HTTP/2"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Limits of one downstream connection (defaults follow Envoy's where Istio users meet them).

    Every limit is enforced on its own connection only: past it the offending request is refused
    (HTTP/1: 400/414/431 then close; HTTP/2: 431 on the stream, or GOAWAY for connection abuse).
    """

    max_header_bytes: int = 60 * 1024  # request line + headers (Envoy max_request_headers_kb = 60)
    max_header_count: int = 100  # Envoy max_headers_count
    max_request_line: int = 16 * 1024  # HTTP/1 request line; longer: 414
    max_concurrent_streams: int = 100  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS we advertise
    max_header_block_bytes: int = 64 * 1024  # raw HEADERS+CONTINUATION bytes (CONTINUATION flood bound)
    reset_burst: int = 200  # HTTP/2 streams the client may reset before we answered: a burst...
    reset_rate: float = 50.0  # ...then this many per second (rapid reset, CVE-2023-44487)
    stream_window: int = 4 * 1024 * 1024  # HTTP/2 per-stream receive window
    connection_window: int = 16 * 1024 * 1024  # HTTP/2 connection receive window (not equal: no deadlock)
    max_frame_size: int = 1024 * 1024  # HTTP/2 largest frame we accept
    request_body_buffer: int = 0  # 0: bodies stream through; >0: buffer up to this before forwarding (413 past)
    idle_timeout: float = 3600.0  # seconds a downstream connection may sit with no request (Envoy: 1 h)
    header_timeout: float = 60.0  # seconds to receive a complete request head once it began
    read_size: int = 256 * 1024

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_header_count", "max_request_line", "max_concurrent_streams",
                     "max_header_block_bytes", "reset_burst", "read_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"HttpLimits.{name} must be at least 1, got {getattr(self, name)}")
        if self.reset_rate <= 0:
            raise ValueError("HttpLimits.reset_rate must be positive")
        if self.request_body_buffer < 0:
            raise ValueError("HttpLimits.request_body_buffer must be 0 (streaming) or a byte count")
        if not 16384 <= self.max_frame_size <= 16777215:
            raise ValueError("HttpLimits.max_frame_size must be within 16384..16777215 (RFC 9113)")
        if self.stream_window >= self.connection_window:
            raise ValueError("HttpLimits.stream_window must be below connection_window (equal windows deadlock)")


DEFAULT_LIMITS = HttpLimits()


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """What the waypoint knows about the downstream connection (the HBONE tunnel) a request came on."""

    source_ip: str = ""
    source_port: int = 0
    destination: str = ""  # the HBONE CONNECT authority (original destination ip:port)
    peer_identity: SpiffeId | None = None  # the source workload's identity (HBONE client cert / baggage)
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the handler sees it. ``headers`` exclude pseudo-headers and hop-by-hop headers and
    already carry ``x-request-id`` and ``x-forwarded-proto``."""

    method: str
    scheme: str
    authority: str
    path: str
    headers: HeaderList
    http_version: str  # "1.0", "1.1" or "2"
    request_id: str
    connection: ConnectionFacts

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class LocalResponse:
    """Answer the request here (the upstream is never contacted)."""

    status: int
    body: bytes = b""
    headers: HeaderList = (("content-type", "text/plain"),)
    response_flags: str = "-"  # Envoy-style flags for the record (e.g. "NR" no route, "UH" no healthy upstream)
    close: bool = False  # close the downstream connection after this response (HTTP/1)


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream endpoint: the ``UpstreamPool`` key and how records name it."""

    endpoint: Hashable
    label: str


@dataclass(frozen=True, slots=True)
class MirrorTarget:
    """Where a fire-and-forget copy of the request goes; its authority gets ``-shadow`` (Envoy's rule)."""

    endpoint: Hashable
    label: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request to ``endpoint`` (any hashable key the ``UpstreamPool`` understands).

    With ``retry``, a failed attempt (``RetryPolicy.retry_on``) is retried on the first of
    ``alternatives`` not tried yet (then ``endpoint`` again); each attempt is bounded by
    ``retry.per_try_timeout`` and the whole request by ``timeout``. ``flags`` are response flags the
    decision already earned (``DI``: an injected delay) and are kept in the record.
    """

    endpoint: Hashable
    protocol: HttpProtocol | None = None  # None: the downstream's protocol (Envoy's use_downstream_protocol)
    label: str = ""  # how records name the upstream (e.g. "10.0.3.7:8080"); default str(endpoint)
    set_headers: HeaderList = ()  # request headers replaced/added before forwarding
    remove_headers: tuple[str, ...] = ()  # request headers removed before forwarding
    add_headers: HeaderList = ()  # request headers appended (after set/remove) before forwarding
    response_set_headers: HeaderList = ()  # response headers replaced/added before answering downstream
    response_add_headers: HeaderList = ()  # response headers appended
    response_remove_headers: tuple[str, ...] = ()  # response headers removed
    path: str | None = None  # a route's URL rewrite: the path (with query) sent upstream; None: as received
    authority: str | None = None  # a route's URL rewrite: the authority sent upstream; None: as received
    timeout: float | None = None  # whole-request timeout, retries included (504, flag UT); None: none
    retry: RetryPolicy | None = None
    alternatives: tuple[Upstream, ...] = ()  # other endpoints for retries, in preference order
    mirrors: tuple[MirrorTarget, ...] = ()
    flags: str = ""


Decision = LocalResponse | Forward


class RequestHandler(Protocol):
    """Decides per request (the waypoint: L7 policy, then route and endpoint pick)."""

    def decide(self, request: Request) -> Decision | Awaitable[Decision]: ...


class UpstreamPool(Protocol):
    """Connections to upstream endpoints (the waypoint implements it with HBONE tunnels).

    ``acquire`` returns an idle connection for ``endpoint`` or opens one (raising ``ConnectionError`` /
    ``OSError`` if it cannot); ``release`` takes it back: ``reusable`` means it sits between HTTP
    messages and may carry the next request to the same endpoint, else the pool closes it.
    """

    async def acquire(self, endpoint: Hashable) -> ByteStream: ...

    def release(self, endpoint: Hashable, stream: ByteStream, *, reusable: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream attempt of a request: where it went and how it ended (``status`` 0: no response;
    ``flags`` then say why: UF, UC, UT, UPE)."""

    upstream: str
    endpoint: Hashable
    status: int
    flags: str
    duration: float


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished (or refused) request, for metrics and the access log. ``duration`` is in seconds
    from the request head to the end of the response; bytes count bodies only (Envoy's BYTES_*)."""

    method: str
    path: str
    authority: str
    scheme: str
    protocol: str  # "HTTP/1.0", "HTTP/1.1", "HTTP/2"
    status: int  # 0: no response was sent (downstream went away first)
    response_flags: str
    request_bytes: int
    response_bytes: int
    duration: float
    upstream: str | None
    request_id: str
    user_agent: str
    connection: ConnectionFacts
    grpc_status: str | None = None
    detail: str = ""  # why a local reply or refusal happened (Envoy's response_code_details)
    attempts: tuple[Attempt, ...] = ()  # every upstream attempt, in order (retries included); () if none


@dataclass(slots=True)
class HttpCounters:
    """What the engine saw across connections; plain ints the waypoint exports as metrics."""

    connections: int = 0
    requests: int = 0
    local_responses: int = 0
    refused_requests: int = 0  # malformed or over a limit: 400/413/414/431/505 then close
    upstream_failures: int = 0  # connect failed or reset before a response (503)
    upstream_protocol_errors: int = 0  # the upstream answered with invalid HTTP (502)
    abusive_connections: int = 0  # HTTP/2 GOAWAY(ENHANCE_YOUR_CALM): rapid reset, CONTINUATION flood
    protocol_errors: int = 0  # HTTP/2 connections ended by a protocol error
    upgrades: int = 0  # connections switched to opaque bytes after a 101
    retries: int = 0  # upstream attempts after the first (Envoy's upstream_rq_retry)
    retries_exhausted: int = 0  # retriable failures answered because no retry was left or allowed
    mirrored: int = 0  # copies sent to mirror backends
    mirrors_dropped: int = 0  # copies not sent (body over the replay buffer, too many in flight, no owner)
    mirror_failures: int = 0  # copies whose upstream failed (never seen by the client)
    mirrors_in_flight: int = 0  # copies being sent now (a gauge; bounded by the engine)

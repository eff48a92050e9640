"""The waypoint's HTTP engine: protocol detection, sans-IO HTTP/1.1 (httptools) and HTTP/2 (h2) sessions,
and the asyncio shell that serves one downstream connection (``serve_http``) and forwards each request
to the upstream a ``RequestHandler`` picks.

Layering: ``detect``, ``headers``, ``events``, ``http1``, ``http2``, ``model`` do no I/O (no asyncio,
no sockets); ``upstream`` and ``session`` are the shell. The waypoint process composes them: it sniffs a
tunnel (``sniff``), relays TCP itself, and hands HTTP to ``serve_http`` with its handler (L7 policy,
routing, endpoint pick), its ``UpstreamPool`` (HBONE) and an ``on_complete`` for metrics and access logs.
"""

from waypoint.l7.detect import H2_PREFACE, Detected, detect
from waypoint.l7.model import (
    DEFAULT_LIMITS,
    ConnectionFacts,
    Decision,
    Forward,
    HttpCounters,
    HttpLimits,
    HttpProtocol,
    LocalResponse,
    Request,
    RequestHandler,
    RequestRecord,
    UpstreamPool,
)
from waypoint.l7.session import serve_http, sniff
from waypoint.l7.upstream import TcpUpstreamPool, Upstreams

__all__ = [
    "DEFAULT_LIMITS",
    "H2_PREFACE",
    "ConnectionFacts",
    "Decision",
    "Detected",
    "Forward",
    "HttpCounters",
    "HttpLimits",
    "HttpProtocol",
    "LocalResponse",
    "Request",
    "RequestHandler",
    "RequestRecord",
    "TcpUpstreamPool",
    "UpstreamPool",
    "Upstreams",
    "detect",
    "serve_http",
    "sniff",
]

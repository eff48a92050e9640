"""Sans-IO HTTP/1.1 for the waypoint: ``Http1Server`` (the downstream side) and ``Http1Client`` (an
upstream connection). Bytes in, events (``waypoint.l7.events``) out; bytes to write returned by the
``send_*`` methods. No sockets, no clock, no event loop.

Parser: httptools (llhttp, Node.js's parser) rather than h11. Measured with ``bench/l7_parse.py`` on
1 KiB keep-alive requests (24 headers), CPU per request on the 2-core dev VM: h11's server connection
84 us (parse + respond), httptools alone 3.5 us, this module's ``Http1Server`` 16 us (parse, limits,
events, response framing) and ``Http1Client`` 9 us (request + 1 KiB response). The waypoint's budget
(Envoy's published 0.25 vCPU per 1000 requests/s: 250 us per request for everything, two TLS layers,
HBONE both ways, policy, both HTTP sides) cannot spend a third of it on h11.
llhttp is also strict by default where
h11 is lenient: it refuses Content-Length together with Transfer-Encoding (h11 lets chunked win),
obs-fold continuation lines (h11 unfolds them), duplicate Content-Length, bad chunk sizes (also
overflow), invalid characters in names and values, bare-LF line endings. What llhttp does not bound we
do: request line length (414), header bytes and header count (431), HTTP versions other than 1.0/1.1
(505), a missing or repeated Host (400), CONNECT (405), transfer codings other than plain ``chunked``
(501, as Envoy), upgrades carrying a body (400).

Rules:
- A refusal is final for the connection: ``Refusal`` is the last event, later input is ignored; the
  shell answers it (if no response started) and closes. Earlier pipelined requests are unaffected.
- Requests are reported in order; a pipelined request's events follow the previous one's
  ``EndOfMessage``. The shell pulls events one request at a time (back-pressure: it reads the socket
  only when it has consumed every event).
- The pending part of a request head is bounded by ``max_header_bytes`` (a header line that never
  ends costs at most the limit plus one read).
- Responses are framed here, never by the caller's headers: ``content-length``, ``transfer-encoding``
  and ``connection`` given by the caller are replaced by ours.
- ``websocket`` upgrades (``Connection: upgrade``) are passed through: after the request the server
  reports ``Upgraded`` with the opaque bytes that followed; other upgrade tokens (``h2c``) are removed
  and the request is served as plain HTTP/1.1, as Envoy does.
"""

from __future__ import annotations

import http
from collections import deque

import httptools

from waypoint.l7.events import (
    Body,
    ConnectionEnded,
    EndOfMessage,
    Event,
    Headers,
    Informational,
    Refusal,
    RequestHead,
    ResponseHead,
    Upgraded,
)
from waypoint.l7.model import DEFAULT_LIMITS, HttpLimits

_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


class _Limited(Exception):
    """Raised from a parser callback: stop parsing and refuse with this status."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def _serialize_headers(out: bytearray, headers: Headers) -> None:
    for name, value in headers:
        out += name.encode("latin-1")
        out += b": "
        out += value.encode("latin-1")
        out += b"\r\n"


class _HeadGuard:
    """Counts one head's bytes and headers against the limits, including a line that has not ended.

    Completed header lines are counted exactly (from the parser's callbacks); the unfinished last line
    is what follows the last LF of the input so far. A head is refused as soon as the sum passes
    ``max_header_bytes``, so httptools never holds more than the limit plus one read.
    """

    __slots__ = ("limits", "in_head", "partial", "exact", "count")

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.in_head = False
        self.partial = 0  # bytes of the unfinished line at the end of the input so far
        self.exact = 0  # bytes of completed header lines (from callbacks)
        self.count = 0

    def begin(self) -> None:
        self.in_head = True
        self.partial = 0
        self.exact = 0
        self.count = 0

    def after_feed(self, data: bytes, what: str) -> None:
        if not self.in_head:
            return
        newline = data.rfind(b"\n")
        self.partial = self.partial + len(data) if newline < 0 else len(data) - newline - 1
        limit = self.limits.max_header_bytes
        if self.exact + self.partial > limit:
            raise _Limited(431, "http1.headers_too_large",
                           f"{what} head is larger than max_header_bytes ({limit} bytes) and has not ended")

    def header(self, name: bytes, value: bytes, what: str) -> None:
        self.count += 1
        self.exact += len(name) + len(value) + 4
        if self.count > self.limits.max_header_count:
            raise _Limited(431, "http1.too_many_headers",
                           f"{what} has more than max_header_count ({self.limits.max_header_count}) headers")
        if self.exact > self.limits.max_header_bytes:
            raise _Limited(431, "http1.headers_too_large",
                           f"{what} headers exceed max_header_bytes ({self.limits.max_header_bytes} bytes)")


class _BodyWriter:
    """Frames an outgoing body: by length, chunked, until close, or none."""

    __slots__ = ("mode",)

    def __init__(self) -> None:
        self.mode = "none"  # none | length | chunked | close

    def data(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self.mode == "chunked":
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self.mode == "none":
            return b""
        return data

    def end(self, trailers: Headers) -> bytes:
        if self.mode != "chunked":
            return b""
        out = bytearray(b"0\r\n")
        _serialize_headers(out, trailers)
        out += b"\r\n"
        return bytes(out)


class Http1Server:
    """The downstream side of one HTTP/1.x connection (see the module docstring)."""

    def __init__(self, limits: HttpLimits = DEFAULT_LIMITS, *, scheme: str = "http") -> None:
        self.limits = limits
        self.scheme = scheme
        self._parser = httptools.HttpRequestParser(self)
        self._guard = _HeadGuard(limits)
        self._events: list[Event] = []
        self._failed = False
        self._upgraded = False
        self._url: list[bytes] = []
        self._url_len = 0
        self._headers: Headers = []
        self._trailers: Headers | None = None  # set once the head is complete
        self._strip_upgrade = False
        self._websocket = False
        # the request being answered
        self._method = "GET"
        self._request_keep_alive = True
        self._writer = _BodyWriter()
        self.keep_alive = True  # the connection may serve another request after the current response
        self.requests = 0

    # --- receiving -------------------------------------------------------------------------------

    @property
    def in_head(self) -> bool:
        """A request head has begun and not ended (for the shell's header timeout)."""
        return self._guard.in_head

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client (``b""``: it sent EOF); returns what they completed."""
        if self._failed:
            return []
        if self._upgraded:
            return [Upgraded(data)] if data else [ConnectionEnded("client closed the upgraded connection")]
        if not data:
            mid = self._guard.in_head or self._trailers is not None
            return [ConnectionEnded("client closed the connection" + (" in the middle of a request" if mid else ""))]
        events = self._events = []
        try:
            self._feed(data)
        except _Limited as exc:
            self._refuse(exc.status, exc.reason, exc.detail)
        return events

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                rest = data[exc.args[0]:]
                if self._websocket:
                    self._upgraded = True
                    self._events.append(Upgraded(rest))
                    return
                # An upgrade we do not pass through (h2c...): its headers are gone, serve it as HTTP/1.1.
                self._parser = httptools.HttpRequestParser(self)
                if not rest:
                    return
                data = rest
                continue
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, _Limited):
                    raise cause from None
                raise
            except httptools.HttpParserInvalidMethodError:
                raise _Limited(400, "http1.invalid_method", "request method is not a known HTTP method") from None
            except httptools.HttpParserError as exc:
                raise _Limited(400, "http1.codec_error", f"malformed HTTP/1 request: {exc}") from None
            self._guard.after_feed(data, "request")
            return

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self._failed = True  # requests before it are still answered normally; the shell closes after the refusal
        self._events.append(Refusal(status, reason, detail))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._guard.begin()
        self._url = []
        self._url_len = 0
        self._headers = []
        self._trailers = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_len += len(url)
        if self._url_len > self.limits.max_request_line:
            raise _Limited(414, "http1.uri_too_long",
                           f"request target is longer than max_request_line ({self.limits.max_request_line} bytes)")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._guard.header(name, value, "request")
        pair = (name.decode("latin-1").lower(), value.decode("latin-1"))
        if self._trailers is None:
            self._headers.append(pair)
        else:
            self._trailers.append(pair)

    def on_headers_complete(self) -> None:
        guard = self._guard
        guard.in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Limited(505, "http1.version", f"HTTP/{version} is not supported on an HTTP/1 connection (1.0, 1.1)")
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise _Limited(405, "http1.connect", "CONNECT is not supported by the waypoint")
        target = b"".join(self._url).decode("latin-1")
        headers = self._headers
        host: str | None = None
        content_length: int | None = None
        chunked = False
        expect = False
        upgrade: str | None = None
        user_agent = ""
        kept: Headers = []
        for name, value in headers:
            if name == "host":
                if host is not None and host != value:
                    raise _Limited(400, "http1.multiple_host", "request has two different Host headers")
                host = value
                continue
            if name == "content-length":
                content_length = int(value)  # llhttp validated the digits and refused duplicates
            elif name == "transfer-encoding":
                if value.strip().lower() != "chunked":
                    raise _Limited(501, "http1.invalid_transfer_encoding",
                                   f"Transfer-Encoding {value[:64]!r} is not supported (only 'chunked')")
                chunked = True
            elif name == "expect":
                if value.strip().lower() == "100-continue":
                    expect = True
                    continue  # answered by the shell; never forwarded
            elif name == "upgrade":
                upgrade = value.strip()
            elif name == "user-agent":
                user_agent = value
            kept.append((name, value))
        authority, path = _split_target(target, method)
        if host is None:
            if version == "1.1":
                raise _Limited(400, "http1.missing_host", "HTTP/1.1 request has no Host header")
            host = ""
        if authority is None:
            authority = host
        has_body = chunked or bool(content_length)
        self._websocket = False
        self._strip_upgrade = False
        if parser.should_upgrade():
            if upgrade is not None and upgrade.lower() == "websocket":
                if has_body:
                    raise _Limited(400, "http1.upgrade_body", "websocket upgrade request carries a body")
                self._websocket = True
            else:
                if has_body:
                    raise _Limited(400, "http1.upgrade_body",
                                   f"upgrade to {upgrade!r} with a request body is not supported")
                self._strip_upgrade = True
                upgrade = None
        else:
            upgrade = None
        self._method = method
        self._request_keep_alive = parser.should_keep_alive() and not self._websocket
        self._trailers = []
        self.requests += 1
        self._events.append(
            RequestHead(
                1, method, self.scheme, authority, path, kept, version, end_stream=not has_body,
                keep_alive=self._request_keep_alive, expect_continue=expect and has_body,
                upgrade="websocket" if self._websocket else None, content_length=content_length,
                user_agent=user_agent,
            )
        )

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(1, body))

    def on_message_complete(self) -> None:
        self._events.append(EndOfMessage(1, self._trailers or []))
        self._trailers = None

    # --- sending ---------------------------------------------------------------------------------

    def send_continue(self) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\n"

    def send_response(
        self, status: int, headers: Headers, *, content_length: int | None = None, end_stream: bool = False,
        close: bool = False,
    ) -> bytes:
        """The response head for the current request; framing and ``connection`` are ours."""
        writer = self._writer
        keep_alive = self._request_keep_alive and not close
        length_header: int | None = None
        if status == 101:
            writer.mode = "close"
            keep_alive = True  # no "connection: close" on a 101: the connection goes on as opaque bytes
        elif self._method == "HEAD" or status in (204, 304):
            writer.mode = "none"
            if status != 204 and content_length is not None:
                length_header = content_length
        elif end_stream:
            writer.mode = "none"
            length_header = 0
        elif content_length is not None:
            writer.mode = "length"
            length_header = content_length
        elif self._request_keep_alive and self._parser.get_http_version() == "1.1":
            writer.mode = "chunked"
        else:
            writer.mode = "close"
            keep_alive = False
        self.keep_alive = keep_alive and status != 101
        out = bytearray(b"HTTP/1.1 %d %b\r\n" % (status, reason_phrase(status)))
        _serialize_headers(out, [(n, v) for n, v in headers if n not in _FRAMING])
        if status == 101:
            out += b"connection: upgrade\r\n"
        elif not keep_alive:
            out += b"connection: close\r\n"
        elif self._parser.get_http_version() == "1.0":
            out += b"connection: keep-alive\r\n"
        if length_header is not None:
            out += b"content-length: %d\r\n" % length_header
        elif writer.mode == "chunked":
            out += b"transfer-encoding: chunked\r\n"
        out += b"\r\n"
        return bytes(out)

    def send_data(self, data: bytes) -> bytes:
        return self._writer.data(data)

    def send_end(self, trailers: Headers | None = None) -> bytes:
        return self._writer.end(trailers or [])


def _split_target(target: str, method: str) -> tuple[str | None, str]:
    """(authority from an absolute-form target or None, path). Refuses targets that are neither."""
    if target.startswith("/"):
        return None, target
    if target == "*" and method == "OPTIONS":
        return None, "*"
    lower = target[:8].lower()
    for prefix in ("http://", "https://"):
        if lower.startswith(prefix):
            rest = target[len(prefix):]
            slash = rest.find("/")
            if slash < 0:
                return rest, "/"
            return rest[:slash], rest[slash:]
    raise _Limited(400, "http1.invalid_target", f"request target {target[:64]!r} is not a path or an http URL")


class Http1Client:
    """One HTTP/1.1 connection to an upstream, one request at a time (no pipelining)."""

    def __init__(self, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._parser = httptools.HttpResponseParser(self)
        self._guard = _HeadGuard(limits)
        self._events: list[Event] = []
        self._methods: deque[str] = deque()
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._status = 0
        self._close_delimited = False
        self._head_only = False
        self._head_buffer = b""
        self._failed = False
        self._upgraded = False
        self._server_keep_alive = True
        self._writer = _BodyWriter()
        self._request_done = True
        self._response_done = True

    @property
    def reusable(self) -> bool:
        """Between messages, and both sides allow another request on this connection."""
        return (self._request_done and self._response_done and self._server_keep_alive and not self._failed
                and not self._upgraded and not self._methods)

    # --- sending ---------------------------------------------------------------------------------

    def send_request(
        self, method: str, path: str, authority: str, headers: Headers, *, content_length: int | None = None,
        end_stream: bool = False, upgrade: bool = False,
    ) -> bytes:
        self._methods.append(method)
        self._request_done = end_stream
        self._response_done = False
        writer = self._writer
        out = bytearray(b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (method.encode("ascii"), path.encode("latin-1"),
                                                             authority.encode("latin-1")))
        _serialize_headers(out, [(n, v) for n, v in headers if n not in _FRAMING and n != "host"])
        if upgrade:
            out += b"connection: upgrade\r\n"
            writer.mode = "none"
        elif end_stream:
            writer.mode = "none"
            if method not in _BODYLESS_METHODS:
                out += b"content-length: 0\r\n"
        elif content_length is not None:
            writer.mode = "length"
            out += b"content-length: %d\r\n" % content_length
        else:
            writer.mode = "chunked"
            out += b"transfer-encoding: chunked\r\n"
        out += b"\r\n"
        return bytes(out)

    def send_data(self, data: bytes) -> bytes:
        return self._writer.data(data)

    def send_end(self, trailers: Headers | None = None) -> bytes:
        self._request_done = True
        return self._writer.end(trailers or [])

    # --- receiving -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the upstream (``b""``: it closed)."""
        if self._failed:
            return []
        if self._upgraded:
            return [Upgraded(data)] if data else [ConnectionEnded("upstream closed the upgraded connection")]
        events = self._events = []
        if not data:
            self._server_keep_alive = False
            if self._close_delimited and self._trailers is not None:
                self._finish()
            else:
                mid = not self._response_done
                events.append(ConnectionEnded("upstream closed the connection" + (" before the response ended" if mid else "")))
            return events
        if not self._methods:
            self._fail("http1.unsolicited_response", "upstream sent bytes while no request was outstanding")
            return events
        try:
            self._feed(data)
        except _Limited as exc:
            self._fail(exc.reason, exc.detail)
        return events

    def _feed(self, data: bytes) -> None:
        while data:
            if self._methods and self._methods[0] == "HEAD" and not self._head_only:
                self._head_only = True
                self._head_buffer = b""
            if self._head_only:
                # A response to HEAD has no body whatever its Content-Length says; llhttp cannot be told
                # so through httptools, so it gets exactly the head and a fresh parser afterwards.
                buffered = self._head_buffer + data
                end = buffered.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffered) > self.limits.max_header_bytes:
                        raise _Limited(502, "http1.headers_too_large", "upstream response head is too large")
                    self._head_buffer = buffered
                    return
                head, data = buffered[: end + 4], buffered[end + 4:]
                self._head_buffer = b""
                self._parse(head)
                if self._status >= 200 and not self._response_done:
                    self._parser = httptools.HttpResponseParser(self)
                    self._finish()
                continue
            self._parse(data)
            return

    def _parse(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded = True
            self._events.append(Upgraded(data[exc.args[0]:]))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Limited):
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            raise _Limited(502, "http1.upstream_codec_error", f"malformed HTTP/1 response from upstream: {exc}") from None
        self._guard.after_feed(data, "upstream response")

    def _fail(self, reason: str, detail: str) -> None:
        self._failed = True
        self._events.append(Refusal(502, reason, detail))

    def _finish(self) -> None:
        self._response_done = True
        self._head_only = False
        self._close_delimited = False
        if self._methods:
            self._methods.popleft()
        self._events.append(EndOfMessage(1, self._trailers or []))
        self._trailers = None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._guard.begin()
        self._headers = []
        self._trailers = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self._guard.header(name, value, "upstream response")
        pair = (name.decode("latin-1").lower(), value.decode("latin-1"))
        if self._trailers is None:
            self._headers.append(pair)
        else:
            self._trailers.append(pair)

    def on_headers_complete(self) -> None:
        self._guard.in_head = False
        parser = self._parser
        status = self._status = parser.get_status_code()
        if not 100 <= status <= 599:  # llhttp takes any three digits; RFC 9110 15: others are invalid
            raise _Limited(502, "http1.invalid_status", f"upstream answered with status {status:03d}, outside 100..599")
        headers = self._headers
        if 100 <= status < 200 and status != 101:
            self._events.append(Informational(1, status, headers))
            return
        content_length: int | None = None
        chunked = False
        for name, value in headers:
            if name == "content-length":
                content_length = int(value)
            elif name == "transfer-encoding":
                chunked = True
        self._server_keep_alive = parser.should_keep_alive()
        method = self._methods[0] if self._methods else "GET"
        bodyless = method == "HEAD" or status in (101, 204, 304)
        end_stream = bodyless or (not chunked and content_length == 0)
        self._close_delimited = not bodyless and not chunked and content_length is None
        if self._close_delimited:
            self._server_keep_alive = False
        self._trailers = []
        self._events.append(ResponseHead(1, status, headers, end_stream=end_stream,
                                         keep_alive=self._server_keep_alive,
                                         content_length=None if method == "HEAD" else content_length))

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(1, body))

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200 and self._status != 101:
            return
        if self._status == 101:
            self._response_done = True
            self._methods.clear()
            self._events.append(EndOfMessage(1, []))
            return
        self._finish()

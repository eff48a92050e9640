"""Sans-IO HTTP/2 for the waypoint on h2: ``H2Server`` (h2c prior knowledge from the downstream, gRPC)
and ``H2Client`` (one multiplexed connection to an upstream). Bytes in, events
(``waypoint.l7.events``) out, ``data_to_send()`` for the bytes to write; time arrives as ``now``.

Each stream is one request. Bodies stream: received DATA holds flow-control window until the shell
``acknowledge``s it (after forwarding it), so a slow upstream slows the client instead of filling
memory; trailers (gRPC's ``grpc-status``) are reported as ``EndOfMessage.trailers``.

Limits (``HttpLimits``), each costing only the offending stream or connection:
- ``max_concurrent_streams`` and ``max_header_bytes`` are advertised (SETTINGS_MAX_CONCURRENT_STREAMS,
  SETTINGS_MAX_HEADER_LIST_SIZE); h2 enforces them (a client past either violates HTTP/2: GOAWAY).
- ``max_header_count``: a request with more headers is answered 431 on its stream (``Refusal``).
- ``max_header_block_bytes``: raw bytes of one header block (HEADERS + CONTINUATION), counted by a
  frame-header scan before h2 sees the bytes; past it GOAWAY(ENHANCE_YOUR_CALM) (CONTINUATION flood).
- rapid reset (CVE-2023-44487): streams the client resets before we answered them draw from a bucket of
  ``reset_burst`` refilled at ``reset_rate``/s; once empty, GOAWAY(ENHANCE_YOUR_CALM).
A connection ended by us reports ``ConnectionEnded`` with the reason and error code, then nothing more.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

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
    StreamReset,
    WindowOpened,
)
from waypoint.l7.model import DEFAULT_LIMITS, HttpLimits

PREFACE_LEN = 24
ENHANCE_YOUR_CALM = int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
PROTOCOL_ERROR = int(h2.errors.ErrorCodes.PROTOCOL_ERROR)
_HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x1, 0x5, 0x9
_END_HEADERS = 0x4
# Connection-specific headers never go into HTTP/2 (RFC 9113 8.2.2); the shell strips hop-by-hop anyway.
_NOT_IN_H2 = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
                        "http2-settings"})


class _HeaderBlockScanner:
    """Reads only frame headers of the inbound byte stream and sizes each header block."""

    __slots__ = ("skip", "partial", "payload_left", "block", "limit")

    def __init__(self, limit: int, skip: int) -> None:
        self.limit = limit
        self.skip = skip  # the client preface, before the first frame
        self.partial = b""  # an incomplete 9-byte frame header
        self.payload_left = 0
        self.block = -1  # bytes of the header block being received; -1: none open

    def feed(self, data: bytes) -> int:
        """-1 if fine, else the size of a header block that passed ``limit``."""
        pos, end = 0, len(data)
        if self.skip:
            step = min(self.skip, end)
            self.skip -= step
            pos = step
        while pos < end:
            if self.payload_left:
                step = min(self.payload_left, end - pos)
                self.payload_left -= step
                pos += step
                continue
            need = 9 - len(self.partial)
            if end - pos < need:
                self.partial += data[pos:end]
                return -1
            header = self.partial + data[pos:pos + need] if self.partial else data[pos:pos + 9]
            self.partial = b""
            pos += need
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            self.payload_left = length
            if kind in (_HEADERS, _PUSH_PROMISE):
                self.block = length
            elif kind == _CONTINUATION and self.block >= 0:
                self.block += length
            else:
                continue
            if self.block > self.limit:
                return self.block
            if flags & _END_HEADERS:
                self.block = -1
        return -1


def _status_code(value: str) -> int | None:
    """``:status`` as a number, or None unless it is three digits within 100..599 (RFC 9110 15)."""
    if len(value) != 3 or not value.isascii() or not value.isdigit():
        return None
    status = int(value)
    return status if 100 <= status <= 599 else None


def _decode(headers: list[tuple[bytes, bytes]]) -> Headers:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


class _H2Base:
    def __init__(self, limits: HttpLimits, *, client_side: bool, now: float) -> None:
        self.limits = limits
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                           validate_inbound_headers=True, normalize_inbound_headers=True,
                                           validate_outbound_headers=True)
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.local_settings = h2.settings.Settings(
            client=client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(limits.connection_window - 65535)
        self._scanner = _HeaderBlockScanner(limits.max_header_block_bytes, 0 if client_side else PREFACE_LEN)
        self._closed = False
        self._now = now
        self._trailers_seen: set[int] = set()
        self._dropped: set[int] = set()  # streams reset in this batch for a malformed message (see _drop_stream)

    @property
    def closed(self) -> bool:
        return self._closed

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def receive_data(self, data: bytes, now: float | None = None) -> list[Event]:
        """Feed bytes from the peer (``b""``: it closed)."""
        if self._closed:
            return []
        if now is not None:
            self._now = now
        if not data:
            self._closed = True
            return [ConnectionEnded("peer closed the connection")]
        too_big = self._scanner.feed(data)
        if too_big >= 0:
            return [self._close(ENHANCE_YOUR_CALM, b"header block too large",
                                f"peer sent a header block of {too_big} bytes or more (HEADERS + CONTINUATION), "
                                f"above max_header_block_bytes ({self.limits.max_header_block_bytes}): "
                                "CONTINUATION flood")]
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.DenialOfServiceError as exc:
            return [self._close(ENHANCE_YOUR_CALM, b"", f"peer exceeded a limit: {exc}")]
        except h2.exceptions.TooManyStreamsError as exc:
            return [self._close(PROTOCOL_ERROR, b"", f"peer opened more streams than advertised: {exc}")]
        except h2.exceptions.ProtocolError as exc:
            return [self._close(PROTOCOL_ERROR, b"", f"peer violated HTTP/2: {exc}")]
        events: list[Event] = []
        for event in h2_events:
            self._translate(event, events)
            if self._closed:
                break
        self._dropped.clear()  # h2 itself ignores later frames of a stream it reset
        return events

    def _close(self, code: int, data: bytes, reason: str) -> ConnectionEnded:
        if not self._closed:
            self._closed = True
            try:
                self._h2.close_connection(code, additional_data=data or None)
            except h2.exceptions.ProtocolError:
                pass
        return ConnectionEnded(reason, code)

    def close(self, code: int = 0, reason: str = "") -> None:
        """Send GOAWAY and stop (``code`` 0: graceful)."""
        self._close(code, reason.encode()[:128], reason)

    def _translate(self, event: h2.events.Event, events: list[Event]) -> None:
        if self._dropped and getattr(event, "stream_id", 0) in self._dropped:
            if isinstance(event, h2.events.DataReceived):  # what h2 took before the reset: give the window back
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        if isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                self.acknowledge(sid, padding)
            if event.data:
                events.append(Body(sid, bytes(event.data)))
            if event.stream_ended is not None:
                events.append(EndOfMessage(sid, []))
        elif isinstance(event, h2.events.TrailersReceived):
            self._trailers_seen.add(event.stream_id)
            events.append(EndOfMessage(event.stream_id, _decode(event.headers)))
        elif isinstance(event, h2.events.StreamEnded):
            sid = event.stream_id
            if sid in self._trailers_seen:
                self._trailers_seen.discard(sid)
            elif not events or not (isinstance(events[-1], EndOfMessage) and events[-1].stream_id == sid):
                events.append(EndOfMessage(sid, []))
        elif isinstance(event, h2.events.WindowUpdated):
            events.append(WindowOpened(event.stream_id))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                events.append(WindowOpened(0))
        elif isinstance(event, h2.events.StreamReset):
            self._trailers_seen.discard(event.stream_id)
            self._on_reset(event, events)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._closed = True
            extra = f" ({event.additional_data.decode('latin-1', 'replace')})" if event.additional_data else ""
            events.append(ConnectionEnded(f"peer sent GOAWAY error code {event.error_code}{extra}",
                                          int(event.error_code or 0), event.last_stream_id))
        else:
            self._translate_role(event, events)

    def _translate_role(self, event: h2.events.Event, events: list[Event]) -> None:
        pass

    def _on_reset(self, event: h2.events.StreamReset, events: list[Event]) -> None:
        events.append(StreamReset(event.stream_id, int(event.error_code or 0)))

    def _drop_stream(self, stream_id: int, events: list[Event]) -> None:
        """A malformed message on ``stream_id`` (RFC 9113 8.1.1): reset it (PROTOCOL_ERROR), report it as
        reset, ignore what h2 still reports for it; the connection and its other streams carry on."""
        self.reset(stream_id, PROTOCOL_ERROR)
        self._dropped.add(stream_id)
        events.append(StreamReset(stream_id, PROTOCOL_ERROR))

    # --- sending ---------------------------------------------------------------------------------

    def send_window(self, stream_id: int) -> int:
        """Bytes that may be sent on ``stream_id`` now (0 if the stream cannot take data)."""
        try:
            return min(self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size * 16)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, h2.exceptions.ProtocolError):
            return 0

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> int:
        """Send as much of ``data`` as flow control allows; returns how many bytes went. ``end_stream`` is
        sent only with the last byte (or alone for empty ``data``)."""
        h2conn = self._h2
        if not data:
            h2conn.send_data(stream_id, b"", end_stream=end_stream)
            return 0
        window = h2conn.local_flow_control_window(stream_id)
        frame = h2conn.max_outbound_frame_size
        total = min(len(data), window)
        view = memoryview(data)
        sent = 0
        while sent < total:
            step = min(frame, total - sent)
            last = sent + step == len(data)
            h2conn.send_data(stream_id, view[sent:sent + step], end_stream=end_stream and last)
            sent += step
        return sent

    def end_stream(self, stream_id: int, trailers: Headers | None = None) -> None:
        if trailers:
            self._h2.send_headers(stream_id, _encode(trailers), end_stream=True)
        else:
            self._h2.end_stream(stream_id)

    def reset(self, stream_id: int, error_code: int = int(h2.errors.ErrorCodes.CANCEL)) -> None:
        try:
            self._h2.reset_stream(stream_id, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, h2.exceptions.ProtocolError):
            pass  # already closed: nothing to abort
        self._trailers_seen.discard(stream_id)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The shell consumed ``size`` received bytes of ``stream_id``: give the window back."""
        if size <= 0 or self._closed:
            return
        try:
            self._h2.acknowledge_received_data(size, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, h2.exceptions.ProtocolError):
            pass

    @property
    def open_streams(self) -> int:
        return self._h2.open_inbound_streams + self._h2.open_outbound_streams


class H2Server(_H2Base):
    """The downstream side of one h2c connection (the client preface is part of the input)."""

    def __init__(self, limits: HttpLimits = DEFAULT_LIMITS, *, scheme: str = "http", now: float = 0.0) -> None:
        super().__init__(limits, client_side=False, now=now)
        self.scheme = scheme
        self._answered: set[int] = set()  # streams whose response head went out (not premature if reset)
        self._reset_tokens = float(limits.reset_burst)
        self._refilled_at = now
        self.premature_resets = 0

    def _translate_role(self, event: h2.events.Event, events: list[Event]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event, events)

    def _on_request(self, event: h2.events.RequestReceived, events: list[Event]) -> None:
        sid = event.stream_id
        method = scheme = authority = path = ""
        host = ""
        headers: Headers = []
        user_agent = ""
        content_length: int | None = None
        for raw_name, raw_value in event.headers:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name[0] == ":":
                if name == ":method":
                    method = value
                elif name == ":scheme":
                    scheme = value
                elif name == ":authority":
                    authority = value
                elif name == ":path":
                    path = value
                continue
            if name == "host":
                host = value
                continue
            if name == "user-agent":
                user_agent = value
            elif name == "content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
            headers.append((name, value))
        end = event.stream_ended is not None
        if len(headers) > self.limits.max_header_count:
            events.append(Refusal(431, "http2.too_many_headers",
                                  f"request has more than max_header_count ({self.limits.max_header_count}) headers",
                                  sid))
            return
        if method == "CONNECT":
            events.append(Refusal(405, "http2.connect", "CONNECT is not supported by the waypoint", sid))
            return
        events.append(RequestHead(sid, method, scheme or self.scheme, authority or host, path, headers, "2",
                                  end_stream=end, content_length=content_length, user_agent=user_agent))
        if end:
            events.append(EndOfMessage(sid, []))

    def _on_reset(self, event: h2.events.StreamReset, events: list[Event]) -> None:
        sid = event.stream_id
        premature = sid not in self._answered
        self._answered.discard(sid)
        events.append(StreamReset(sid, int(event.error_code or 0), premature))
        if not premature:
            return
        self.premature_resets += 1
        limits = self.limits
        elapsed = max(0.0, self._now - self._refilled_at)
        self._refilled_at = self._now
        self._reset_tokens = min(float(limits.reset_burst), self._reset_tokens + elapsed * limits.reset_rate) - 1.0
        if self._reset_tokens < 0:
            events.append(self._close(ENHANCE_YOUR_CALM, b"too many stream resets",
                                      f"client reset {self.premature_resets} streams before they were answered, "
                                      f"faster than {limits.reset_rate:g}/s after a burst of {limits.reset_burst}: "
                                      "HTTP/2 rapid reset"))

    def send_response(self, stream_id: int, status: int, headers: Headers, *, end_stream: bool = False) -> None:
        self._answered.add(stream_id)
        block = [(b":status", str(status).encode())]
        block += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers if n not in _NOT_IN_H2]
        self._h2.send_headers(stream_id, block, end_stream=end_stream)

    def stream_done(self, stream_id: int) -> None:
        """Forget per-stream bookkeeping once the shell finished the exchange."""
        self._answered.discard(stream_id)
        self._trailers_seen.discard(stream_id)


class H2Client(_H2Base):
    """One HTTP/2 connection to an upstream; many concurrent requests."""

    def __init__(self, limits: HttpLimits = DEFAULT_LIMITS, *, now: float = 0.0) -> None:
        super().__init__(limits, client_side=True, now=now)

    def can_open(self) -> bool:
        """Another stream fits under the server's SETTINGS_MAX_CONCURRENT_STREAMS."""
        h2conn = self._h2
        return not self._closed and h2conn.open_outbound_streams < h2conn.remote_settings.max_concurrent_streams

    def send_request(self, method: str, scheme: str, authority: str, path: str, headers: Headers, *,
                     end_stream: bool = False) -> int:
        sid = self._h2.get_next_available_stream_id()
        block = [(b":method", method.encode("ascii")), (b":scheme", scheme.encode("ascii")),
                 (b":authority", authority.encode("latin-1")), (b":path", path.encode("latin-1"))]
        block += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers if n not in _NOT_IN_H2]
        self._h2.send_headers(sid, block, end_stream=end_stream)
        return sid

    def _translate_role(self, event: h2.events.Event, events: list[Event]) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            status: int | None = 0
            headers: Headers = []
            content_length: int | None = None
            for raw_name, raw_value in event.headers:
                name = raw_name.decode("latin-1")
                value = raw_value.decode("latin-1")
                if name == ":status":
                    status = _status_code(value)
                elif name[0] != ":":
                    if name == "content-length" and value.isdigit():
                        content_length = int(value)
                    headers.append((name, value))
            if status is None:
                self._drop_stream(event.stream_id, events)
                return
            end = event.stream_ended is not None
            events.append(ResponseHead(event.stream_id, status, headers, end_stream=end,
                                       content_length=content_length))
            if end:
                events.append(EndOfMessage(event.stream_id, []))
        elif isinstance(event, h2.events.InformationalResponseReceived):
            headers = _decode(event.headers)
            status = _status_code(next((v for n, v in headers if n == ":status"), ""))
            if status is None:
                self._drop_stream(event.stream_id, events)
                return
            events.append(Informational(event.stream_id, status, [(n, v) for n, v in headers if n[0] != ":"]))

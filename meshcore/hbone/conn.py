"""Sans-IO HBONE connections: HTTP/2 CONNECT tunnels on h2, bytes in, events out.

``HboneClientConn`` / ``HboneServerConn`` wrap one ``H2Connection``. The caller owns the transport: it
feeds ``receive_data`` (which returns events), writes ``data_to_send()`` after every call, and drives
time through ``next_deadline()`` / ``handle_timer(now)``. No asyncio, socket, ssl or time here.
Invariants:
- Windows: stream 4 MiB < connection 16 MiB (equal windows deadlock, ztunnel #1538), frames up to
  1 MiB. Received bytes hold window until ``acknowledge``; padding and bytes of reset or refused
  tunnels are released here, so an app that acknowledges what it consumed never leaks window.
- ``send`` never exceeds the window: it queues what fits and returns the count.
- Tunnel DATA bypasses h2's frame objects both ways (the hot path): ``send`` writes the 9-byte header and
  the payload itself and charges h2's outbound windows; received DATA is lifted out by the frame
  scanner (``_frames``) and this class does the inbound flow control (WINDOW_UPDATE once half a window
  is consumed, as h2 would), so h2 handles only HEADERS, SETTINGS, PING, RST_STREAM and GOAWAY.
  Output is kept as a list of chunks (``take_output``) so a payload reaches the transport uncopied.
- A request that is not a plain CONNECT to ``ip:port`` is answered 400 here (as ztunnel does) and
  reported as ``TunnelRequestRefused``; it never ends the connection. Framing errors do (GOAWAY).
- Peer bytes never raise (garbage becomes ``ConnectionClosed``); our misuse raises ``LocalHboneError``.
- A peer's graceful GOAWAY (NO_ERROR) drains instead of killing live tunnels (see ``_frames``).
- Abuse ends the connection with GOAWAY(ENHANCE_YOUR_CALM) and a reason (``ConnectionClosed``):
  a header block past ``max_header_block_size`` (CONTINUATION flood; refused before h2 buffers more),
  and, on the server, streams reset by the peer before they were answered faster than
  ``reset_rate``/s beyond a burst of ``reset_burst`` (HTTP/2 rapid reset, CVE-2023-44487; nghttp2's
  token bucket), and SETTINGS/PING frames (each makes us queue an ACK) faster than ``control_rate``/s
  beyond a burst of ``control_burst`` (a PING flood costs the event loop even when the peer reads).
  Time for the buckets arrives as ``receive_data(data, now=...)``.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.events import (
    DataReceived as H2DataReceived,
)
from h2.events import (
    Event as H2Event,
)
from h2.exceptions import H2Error, NoSuchStreamError, ProtocolError, StreamIDTooLowError, TooManyStreamsError
from h2.settings import SettingCodes, Settings
from h2.utilities import HeaderValidationFlags, validate_headers
from hyperframe.frame import GoAwayFrame

from meshcore.hbone import _h2_speedups
from meshcore.hbone._frames import (
    FrameError,
    FrameScanner,
    FrameTooLarge,
    Goaway,
    HeaderBlockTooLarge,
    Padding,
)
from meshcore.hbone.errors import (
    ConnectionDrained,
    HboneConnectionError,
    InvalidAuthority,
    LocalHboneError,
    StreamLimitReached,
)
from meshcore.hbone.events import (
    ConnectionClosed,
    ConnectionDraining,
    DataReceived,
    EofReceived,
    HboneEvent,
    Headers,
    PingAcked,
    TunnelAccepted,
    TunnelRejected,
    TunnelRequested,
    TunnelRequestRefused,
    TunnelReset,
    WindowOpened,
)
from meshcore.hbone.headers import parse_authority

_h2_speedups.install()

MiB = 1 << 20
KiB = 1 << 10
_H2_DEFAULT_WINDOW = 65535
_MAX_WINDOW = (1 << 31) - 1
_REQUEST_FLAGS = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_DATA_HEADER = struct.Struct(">IBI")  # length << 8 | type DATA (0), flags, stream id
_WINDOW_UPDATE = struct.Struct(">IBII")  # 4 << 8 | type WINDOW_UPDATE (8), flags, stream id, increment
_WINDOW_UPDATE_TYPE = (4 << 8) | 0x8
# A payload up to this size is copied behind its frame header: one buffer, so one TLS record, not two.
_JOIN_BELOW = 16 * KiB


@dataclass(frozen=True, slots=True)
class HboneSettings:
    """HTTP/2 tuning for one HBONE connection (defaults: ztunnel's, reference §4 "HTTP/2 tuning")."""

    max_frame_size: int = 1 * MiB  # SETTINGS_MAX_FRAME_SIZE we advertise; we send what the peer allows
    stream_window: int = 4 * MiB  # SETTINGS_INITIAL_WINDOW_SIZE
    connection_window: int = 16 * MiB  # stream 0 window, opened with a WINDOW_UPDATE at start
    max_concurrent_streams: int = 100  # inbound streams we allow (what a server advertises)
    max_header_list_size: int = 64 * KiB  # SETTINGS_MAX_HEADER_LIST_SIZE; clients use 16 KiB
    ping_interval: float | None = 10.0  # keepalive PING period; None disables keepalive
    ping_timeout: float = 20.0  # no PING ACK within this long: the connection is dead
    # Raw bytes of one header block (HEADERS + CONTINUATION), refused past this (Envoy's default for
    # max request headers is 60 KiB; ours matches max_header_list_size).
    max_header_block_size: int = 64 * KiB
    # Streams the peer may reset before we answered them (rapid reset): a burst, then this rate.
    reset_burst: int = 200
    reset_rate: float = 50.0
    # SETTINGS and PING frames the peer may send (each answered with an ACK): a burst, then this rate.
    # Keepalives and gRPC's BDP pings stay far below it.
    control_burst: int = 1000
    control_rate: float = 100.0

    def __post_init__(self) -> None:
        if not 16384 <= self.max_frame_size <= (1 << 24) - 1:
            raise ValueError(f"max_frame_size {self.max_frame_size} must be within 16384..16777215")
        if not _H2_DEFAULT_WINDOW <= self.stream_window <= _MAX_WINDOW:
            raise ValueError(f"stream_window {self.stream_window} must be within 65535..2**31-1")
        if not self.stream_window < self.connection_window <= _MAX_WINDOW:
            raise ValueError(
                f"connection_window {self.connection_window} must exceed stream_window "
                f"{self.stream_window} (equal windows can deadlock, ztunnel #1538) and be below 2**31"
            )
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if self.max_header_list_size < 1024:
            raise ValueError("max_header_list_size below 1 KiB cannot carry a CONNECT request")
        if self.ping_interval is not None and (self.ping_interval <= 0 or self.ping_timeout <= 0):
            raise ValueError("ping_interval and ping_timeout must be positive")
        if self.max_header_block_size < 1024:
            raise ValueError("max_header_block_size below 1 KiB cannot carry a CONNECT request")
        if self.reset_burst < 1 or self.reset_rate <= 0:
            raise ValueError("reset_burst must be at least 1 and reset_rate positive")
        if self.control_burst < 1 or self.control_rate <= 0:
            raise ValueError("control_burst must be at least 1 and control_rate positive")


CLIENT_SETTINGS = HboneSettings(max_header_list_size=16 * KiB)
SERVER_SETTINGS = HboneSettings()


class _Tunnel:
    """Per-stream bookkeeping; lives until the stream is finished and every received byte acknowledged."""

    __slots__ = ("accepted", "consumed", "eof_received", "eof_sent", "unacked")

    def __init__(self) -> None:
        self.accepted = False
        self.eof_sent = False
        self.eof_received = False
        self.unacked = 0  # received bytes the app has not acknowledged yet
        # Received bytes consumed (acknowledged, or padding) but not yet given back in a WINDOW_UPDATE;
        # the peer may send ``stream_window - unacked - consumed`` more.
        self.consumed = 0


class _HboneConn:
    """What both roles share: flow control, half-close, reset, keepalive, drain, close."""

    _client_side: bool

    def __init__(self, settings: HboneSettings, *, now: float) -> None:
        self.settings = settings
        self._h2 = H2Connection(
            H2Configuration(
                client_side=self._client_side,
                header_encoding=None,
                # The server validates requests itself (same h2 rules) so that a malformed request is
                # answered 400 on its own stream instead of ending the whole connection.
                validate_inbound_headers=self._client_side,
            )
        )
        initial: dict[SettingCodes, int] = {
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            SettingCodes.ENABLE_PUSH: 0,
        }
        self._h2.local_settings = Settings(client=self._client_side, initial_values=initial)
        self._h2.max_inbound_frame_size = settings.max_frame_size
        self._h2.decoder.max_header_list_size = settings.max_header_list_size
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(settings.connection_window - _H2_DEFAULT_WINDOW)
        self._scanner = FrameScanner(
            skip_preface=not self._client_side, max_frame_size=settings.max_frame_size,
            take_data=self._take_data, max_header_block=settings.max_header_block_size,
        )
        # Output in order: h2's bytes (moved here before any frame of ours is added), our DATA, WINDOW_UPDATE
        # and graceful GOAWAY frames.
        self._out: list[bytes | memoryview] = []
        self._recv_window = settings.connection_window  # connection-level bytes the peer may still send
        self._stream_window = settings.stream_window
        self._stream_window_half = settings.stream_window // 2  # WINDOW_UPDATE once this much is consumed
        self._connection_window_half = settings.connection_window // 2
        self._recv_consumed = 0  # consumed connection-level bytes not yet given back
        self._events: list[HboneEvent] = []  # the list ``receive_data`` is filling (for ``_take_data``)
        # Set by a driver to take tunnel bytes by call instead of ``DataReceived`` (the hot path): used
        # only while nothing precedes them in the events of the same ``receive_data`` call.
        self.data_handler: Callable[[int, bytes | memoryview], None] | None = None
        self._tunnels: dict[int, _Tunnel] = {}
        self._decoded: dict[bytes, str] = {}  # see _decode
        self._closed = False
        self._draining = False  # GOAWAY sent or received: no new tunnels
        self._goaway_sent_last_id: int | None = None
        self._pings: dict[bytes, float] = {}
        self._ping_counter = 0
        self._keepalive_ping: bytes | None = None
        self._keepalive_sent_at = 0.0
        self._next_ping_at = now + settings.ping_interval if settings.ping_interval else None
        self._now = now  # the latest time a caller gave us
        self._reset_tokens = float(settings.reset_burst)  # rapid-reset bucket (server side)
        self._control_tokens = float(settings.control_burst)  # SETTINGS/PING bucket
        self._control_refilled_at = now
        self._control_seen = 0
        self._reset_refilled_at = now
        self.premature_resets = 0  # streams the peer reset before we answered them

    # --- state -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The connection is unusable: nothing more will be sent or received."""
        return self._closed

    @property
    def draining(self) -> bool:
        """A GOAWAY was sent or received: no new tunnels; existing ones carry on."""
        return self._draining

    @property
    def peer_control_frames(self) -> int:
        """SETTINGS and PING frames received so far that each made us queue an ACK."""
        return self._scanner.control_frames

    @property
    def open_tunnels(self) -> int:
        """Tunnels not yet finished (including ones still holding unacknowledged bytes)."""
        return len(self._tunnels)

    def local_window(self, stream_id: int) -> int:
        """How many bytes ``send`` would accept on ``stream_id`` right now."""
        tunnel = self._tunnel(stream_id)
        if not tunnel.accepted or tunnel.eof_sent:
            return 0
        return self._h2.local_flow_control_window(stream_id)

    # --- I/O boundary ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> list[HboneEvent]:
        """Feed bytes from the transport; returns what happened. Never raises for peer input.

        ``now`` (the caller's clock, as given to ``handle_timer``) times the rapid-reset bucket; without
        it the last known time is used. ``DataReceived.data`` may be a view into ``data`` (kept alive by
        the view, never copied)."""
        if self._closed:
            return []
        if now is not None:
            self._now = now
        if type(data) is not bytes:
            data = bytes(data)  # payload views must not see the caller reuse its buffer
        events: list[HboneEvent] = []
        self._events = events
        tunnels = self._tunnels
        scanner = self._scanner
        handler = self.data_handler
        for segment in self._scanner.feed(data):
            if self._closed:  # _take_data can end the connection (flow-control violation)
                break
            if type(segment) is tuple:
                stream_id, payload = segment
                # Charged to ``unacked`` with its frame header; a tunnel reset meanwhile released it all.
                if stream_id in tunnels:
                    if handler is not None and not events:
                        handler(stream_id, payload)
                    else:
                        events.append(DataReceived(stream_id, payload))
            elif isinstance(segment, (memoryview, bytes)):
                self._receive_h2(segment, events)
            elif isinstance(segment, Padding):
                tunnel = tunnels.get(segment.stream_id)
                if tunnel is not None:
                    tunnel.unacked -= segment.size
                    self._consume(segment.stream_id, segment.size)
            elif isinstance(segment, Goaway):
                self._on_graceful_goaway(segment, events)
            elif isinstance(segment, HeaderBlockTooLarge):
                self._h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"header block too large")
                reason = (
                    f"peer sent a header block of {segment.size} bytes or more (HEADERS + CONTINUATION), "
                    f"above our limit of {segment.limit} (max_header_block_size): CONTINUATION flood"
                )
                events.append(self._mark_closed(reason, int(ErrorCodes.ENHANCE_YOUR_CALM)))
                self._drop_h2_header_buffer()
            elif isinstance(segment, FrameTooLarge):
                self._h2.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
                reason = (
                    f"peer sent a {segment.length}-byte frame, above our limit of "
                    f"{self.settings.max_frame_size}: not HTTP/2, or a broken peer"
                )
                events.append(self._mark_closed(reason, int(ErrorCodes.FRAME_SIZE_ERROR)))
            elif isinstance(segment, FrameError):
                self._h2.close_connection(ErrorCodes.PROTOCOL_ERROR)
                events.append(self._mark_closed(f"peer violated HTTP/2: {segment.reason}", 1))
        if scanner.control_frames != self._control_seen and not self._closed:
            self._charge_control_frames(scanner.control_frames - self._control_seen, events)
            self._control_seen = scanner.control_frames
        return events

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now (possibly empty)."""
        out = self.take_output()
        if len(out) == 1:
            return bytes(out[0]) if type(out[0]) is not bytes else out[0]
        return b"".join(out)

    def take_output(self) -> list[bytes | memoryview]:
        """What to write to the transport now, as chunks in order (for ``writelines``; possibly empty).

        Payloads of large DATA frames are views of what was passed to ``send``, never copied."""
        if self._h2._data_to_send:  # noqa: SLF001 - checked first: data_to_send() allocates even when empty
            self._out.append(self._h2.data_to_send())
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    # --- commands on tunnels ---------------------------------------------------------------------

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the flow-control windows allow; return how many bytes.

        Fewer than ``len(data)`` means the window is full: wait for ``WindowOpened`` and send the rest.
        The queued frames refer to ``data`` (large payloads are not copied): do not change it until it
        has been written.
        """
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None or not tunnel.accepted or tunnel.eof_sent:
            tunnel = self._tunnel(stream_id)  # raises the right error
            if not tunnel.accepted:
                raise LocalHboneError(f"stream {stream_id}: cannot send before the tunnel is accepted")
            raise LocalHboneError(f"stream {stream_id}: cannot send after send_eof")
        if self._closed:
            raise HboneConnectionError("the HBONE connection is closed")
        h2 = self._h2
        stream = h2.streams.get(stream_id)
        if stream is None:  # pragma: no cover - h2 keeps a stream we may still send on
            raise LocalHboneError(f"stream {stream_id} is closed in HTTP/2")
        size = min(len(data), h2.outbound_flow_control_window, stream.outbound_flow_control_window)
        if size <= 0:
            return 0
        out = self._out
        if h2._data_to_send:  # noqa: SLF001 - h2's queued frames (HEADERS, WINDOW_UPDATE...) go first
            out.append(h2.data_to_send())
        frame = h2.max_outbound_frame_size
        view = data if size == len(data) and type(data) is bytes else memoryview(data)[:size]
        offset = 0
        pack = _DATA_HEADER.pack
        while offset < size:
            end = min(offset + frame, size)
            n = end - offset
            piece = view if n == size else view[offset:end]
            if n < _JOIN_BELOW:
                out.append(pack(n << 8, 0, stream_id) + piece)
            else:
                out.append(pack(n << 8, 0, stream_id))
                out.append(piece)
            offset = end
        h2.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        return size

    def send_eof(self, stream_id: int) -> None:
        """Half-close our direction (END_STREAM); the peer's direction stays open."""
        tunnel = self._tunnel(stream_id)
        if not tunnel.accepted:
            raise LocalHboneError(f"stream {stream_id}: cannot half-close before the tunnel is accepted")
        if tunnel.eof_sent:
            return
        tunnel.eof_sent = True
        self._h2.end_stream(stream_id)
        self._maybe_forget(stream_id, tunnel)

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort the tunnel both ways (RST_STREAM). Idempotent: a finished tunnel is left alone."""
        tunnel = self._tunnels.pop(stream_id, None)
        if tunnel is None or self._closed:
            return
        self._rst(stream_id, error_code)
        self._release(stream_id, tunnel)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The app consumed ``size`` received bytes of ``stream_id``: let the peer send that much more."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None or size <= 0 or self._closed:
            return  # already released when the tunnel was reset or refused
        if size > tunnel.unacked:
            raise LocalHboneError(
                f"stream {stream_id}: acknowledged {size} bytes but only {tunnel.unacked} are outstanding"
            )
        tunnel.unacked -= size
        if not tunnel.eof_received:
            tunnel.consumed += size
            if tunnel.consumed >= self._stream_window_half:
                self._append(_WINDOW_UPDATE.pack(_WINDOW_UPDATE_TYPE, 0, stream_id, tunnel.consumed))
                tunnel.consumed = 0
        self._recv_consumed += size
        if self._recv_consumed >= self._connection_window_half:
            self._consume_connection(0)
        if tunnel.eof_sent:
            self._maybe_forget(stream_id, tunnel)

    # --- connection-level commands ---------------------------------------------------------------

    def ping(self, now: float) -> None:
        """Send a PING; ``PingAcked(sent_at=now)`` reports the answer."""
        self._check_open()
        self._ping_counter += 1
        opaque = self._ping_counter.to_bytes(8, "big")
        self._pings[opaque] = now
        self._h2.ping(opaque)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next be called (keepalive), or None."""
        if self._closed or self._next_ping_at is None:
            return None
        if self._keepalive_ping is not None:
            return self._keepalive_sent_at + self.settings.ping_timeout
        return self._next_ping_at

    def handle_timer(self, now: float) -> list[HboneEvent]:
        """Run keepalive: send a PING when due; declare the connection dead when one goes unanswered."""
        if self._closed or self._next_ping_at is None:
            return []
        if self._keepalive_ping is not None:
            if now >= self._keepalive_sent_at + self.settings.ping_timeout:
                self._h2.close_connection(ErrorCodes.NO_ERROR, additional_data=b"keepalive timeout")
                reason = f"keepalive: no PING ACK within {self.settings.ping_timeout:g}s"
                return [self._mark_closed(reason, int(ErrorCodes.NO_ERROR))]
        elif now >= self._next_ping_at:
            self.ping(now)
            self._keepalive_ping = self._ping_counter.to_bytes(8, "big")
            self._keepalive_sent_at = now
        return []

    def drain(self) -> None:
        """Graceful GOAWAY (NO_ERROR): no new tunnels; live ones finish. Idempotent."""
        if self._closed or self._goaway_sent_last_id is not None:
            return
        self._draining = True
        last = self._h2.highest_inbound_stream_id
        self._goaway_sent_last_id = last
        # Sent outside h2 (whose GOAWAY is terminal); h2's queued bytes go first to keep frame order.
        self._append(GoAwayFrame(0, last_stream_id=last, error_code=0).serialize())

    def close(self, error_code: int = ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """End the connection now (terminal GOAWAY). Flush ``data_to_send()`` then close the transport."""
        if self._closed:
            return
        self._h2.close_connection(error_code, additional_data=reason.encode("utf-8", "replace")[:256])
        self._mark_closed(reason or "closed by this side", int(error_code))

    # --- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise HboneConnectionError("the HBONE connection is closed")

    def _tunnel(self, stream_id: int) -> _Tunnel:
        self._check_open()
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None:
            raise LocalHboneError(f"stream {stream_id} is not an open HBONE tunnel (finished, reset or unknown)")
        return tunnel

    def _mark_closed(self, reason: str, error_code: int, *, by_peer: bool = False) -> ConnectionClosed:
        self._closed = True
        self._draining = True
        self._tunnels.clear()
        self._pings.clear()
        return ConnectionClosed(reason=reason, error_code=error_code, by_peer=by_peer)

    def _rst(self, stream_id: int, error_code: int) -> None:
        try:
            self._h2.reset_stream(stream_id, error_code)
        except (NoSuchStreamError, ProtocolError, KeyError):
            pass  # h2 already considers it closed (both END_STREAMs seen, or reset): nothing to abort

    def _release(self, stream_id: int, tunnel: _Tunnel) -> None:
        """Give back window for bytes the app will never acknowledge (tunnel reset or refused)."""
        if tunnel.unacked:
            self._consume_connection(tunnel.unacked)
            tunnel.unacked = 0

    def _receive_h2(self, segment: bytes | memoryview, events: list[HboneEvent]) -> None:
        try:
            h2_events = self._h2.receive_data(segment)
        except ProtocolError as exc:  # h2 has queued GOAWAY with the matching error code
            events.append(self._mark_closed(f"peer violated HTTP/2: {exc}", int(exc.error_code)))
            return
        except Exception as exc:  # noqa: BLE001 - any h2/hpack failure on peer bytes ends only this connection
            self._h2.close_connection(ErrorCodes.INTERNAL_ERROR)
            reason = f"could not process peer bytes: {type(exc).__name__}: {exc}"
            events.append(self._mark_closed(reason, int(ErrorCodes.INTERNAL_ERROR)))
            return
        for event in h2_events:
            if self._closed:  # ended by an event of this batch (rapid reset): the rest is moot
                break
            self._translate(event, events)

    # --- inbound flow control (DATA never reaches h2) --------------------------------------------

    def _take_data(self, stream_id: int, flags: int, length: int) -> bool:
        """The scanner met a DATA frame header: charge the windows, say whether a tunnel takes it."""
        self._recv_window -= length
        if self._recv_window < 0:
            self._h2.close_connection(ErrorCodes.FLOW_CONTROL_ERROR)
            reason = f"peer sent {length} bytes of DATA beyond the connection flow-control window"
            self._events.append(self._mark_closed(reason, int(ErrorCodes.FLOW_CONTROL_ERROR)))
            return False
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None or tunnel.eof_received or self._closed:
            self._consume_connection(length)  # refused, rejected, reset or unknown: h2 judges the stream
            return False
        if self._client_side and not tunnel.accepted:
            self._fail_stream(stream_id, ErrorCodes.PROTOCOL_ERROR, self._events, by_peer=False)
            self._consume_connection(length)
            return False
        if length > self._stream_window - tunnel.unacked - tunnel.consumed:
            self._fail_stream(stream_id, ErrorCodes.FLOW_CONTROL_ERROR, self._events, by_peer=False)
            self._consume_connection(length)
            return False
        tunnel.unacked += length  # the whole frame, as it arrives; its padding is given back when seen
        return True

    def _consume(self, stream_id: int, size: int) -> None:
        """``size`` received bytes of ``stream_id`` are done with: give window back when half is used."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is not None and not tunnel.eof_received:
            tunnel.consumed += size
            if tunnel.consumed >= self.settings.stream_window // 2:
                self._append(_WINDOW_UPDATE.pack(_WINDOW_UPDATE_TYPE, 0, stream_id, tunnel.consumed))
                tunnel.consumed = 0
        self._consume_connection(size)

    def _consume_connection(self, size: int) -> None:
        self._recv_consumed += size
        if self._recv_consumed >= self.settings.connection_window // 2 and not self._closed:
            self._append(_WINDOW_UPDATE.pack(_WINDOW_UPDATE_TYPE, 0, 0, self._recv_consumed))
            self._recv_window += self._recv_consumed
            self._recv_consumed = 0

    def _append(self, frame: bytes) -> None:
        """Queue a frame of ours after whatever h2 has queued so far."""
        if self._h2._data_to_send:  # noqa: SLF001 - see take_output
            self._out.append(self._h2.data_to_send())
        self._out.append(frame)

    def _maybe_forget(self, stream_id: int, tunnel: _Tunnel) -> None:
        if tunnel.eof_sent and tunnel.eof_received and not tunnel.unacked:
            self._tunnels.pop(stream_id, None)

    def _on_graceful_goaway(self, goaway: Goaway, events: list[HboneEvent]) -> None:
        self._draining = True
        events.append(ConnectionDraining(goaway.last_stream_id))
        # Our streams above last_stream_id were never processed by the peer (RFC 9113 §6.8): safe to retry.
        outbound_parity = 1 if self._client_side else 0
        for stream_id in sorted(self._tunnels):
            if stream_id % 2 == outbound_parity and stream_id > goaway.last_stream_id:
                self._fail_stream(stream_id, ErrorCodes.REFUSED_STREAM, events, by_peer=True)

    def _fail_stream(self, stream_id: int, code: int, events: list[HboneEvent], *, by_peer: bool) -> None:
        tunnel = self._tunnels.pop(stream_id, None)
        if tunnel is None:
            return
        self._rst(stream_id, code)
        self._release(stream_id, tunnel)
        events.append(TunnelReset(stream_id, int(code), by_peer=by_peer))

    def _translate(self, event: H2Event, events: list[HboneEvent]) -> None:
        if isinstance(event, H2DataReceived):
            self._on_data(event, events)
        elif isinstance(event, WindowUpdated):
            if event.stream_id == 0 or event.stream_id in self._tunnels:
                events.append(WindowOpened(event.stream_id or 0))
        elif isinstance(event, StreamEnded):
            tunnel = self._tunnels.get(event.stream_id or 0)
            if tunnel is not None:
                tunnel.eof_received = True
                events.append(EofReceived(event.stream_id or 0))
                self._maybe_forget(event.stream_id or 0, tunnel)
        elif isinstance(event, StreamReset):
            stream_id = event.stream_id or 0
            tunnel = self._tunnels.pop(stream_id, None)
            if tunnel is not None:
                self._release(stream_id, tunnel)
                events.append(TunnelReset(stream_id, int(event.error_code or 0), by_peer=True))
                if not self._client_side and not tunnel.accepted:
                    self._on_premature_reset(events)
        elif isinstance(event, RequestReceived):
            self._on_request(event, events)
        elif isinstance(event, ResponseReceived):
            self._on_response(event, events)
        elif isinstance(event, TrailersReceived):
            # RFC 9113 §8.5: only DATA and stream management frames may follow a CONNECT's headers.
            self._fail_stream(event.stream_id or 0, ErrorCodes.PROTOCOL_ERROR, events, by_peer=False)
        elif isinstance(event, RemoteSettingsChanged):
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                events.append(WindowOpened(0))
        elif isinstance(event, PingAckReceived):
            self._on_ping_ack(event.ping_data or b"", events)
        elif isinstance(event, ConnectionTerminated):
            code = int(event.error_code or 0)
            detail = (event.additional_data or b"").decode("utf-8", "replace")
            reason = f"peer sent GOAWAY with error code {code}" + (f": {detail}" if detail else "")
            events.append(self._mark_closed(reason, code, by_peer=True))
        # Everything else (SETTINGS ACKs, PINGs h2 answers itself, PRIORITY, unknown frames) needs nothing.

    def _on_premature_reset(self, events: list[HboneEvent]) -> None:
        """The peer reset a stream we had not answered yet: charge the rapid-reset bucket."""
        self.premature_resets += 1
        settings = self.settings
        elapsed = max(0.0, self._now - self._reset_refilled_at)
        self._reset_refilled_at = self._now
        self._reset_tokens = min(float(settings.reset_burst), self._reset_tokens + elapsed * settings.reset_rate)
        self._reset_tokens -= 1.0
        if self._reset_tokens < 0 and not self._closed:
            self._h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"too many stream resets")
            reason = (
                f"peer reset {self.premature_resets} streams before they were answered, faster than "
                f"{settings.reset_rate:g}/s after a burst of {settings.reset_burst}: HTTP/2 rapid reset"
            )
            events.append(self._mark_closed(reason, int(ErrorCodes.ENHANCE_YOUR_CALM)))

    def _charge_control_frames(self, count: int, events: list[HboneEvent]) -> None:
        settings = self.settings
        elapsed = max(0.0, self._now - self._control_refilled_at)
        self._control_refilled_at = self._now
        self._control_tokens = min(
            float(settings.control_burst), self._control_tokens + elapsed * settings.control_rate
        ) - count
        if self._control_tokens < 0:
            self._h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"too many control frames")
            reason = (
                f"peer sent SETTINGS/PING frames faster than {settings.control_rate:g}/s after a burst of "
                f"{settings.control_burst} ({self._scanner.control_frames} so far): control frame flood"
            )
            events.append(self._mark_closed(reason, int(ErrorCodes.ENHANCE_YOUR_CALM)))

    def _drop_h2_header_buffer(self) -> None:
        """Free the partial header block h2 holds (the connection is over; nothing will decode it)."""
        buffer = getattr(self._h2, "incoming_buffer", None)
        if buffer is not None and hasattr(buffer, "_headers_buffer"):
            buffer._headers_buffer = []  # noqa: SLF001 - h2 has no public way to drop it
            buffer._data = bytearray()  # noqa: SLF001

    def _on_data(self, event: H2DataReceived, events: list[HboneEvent]) -> None:
        # h2 only ever sees the scanner's empty DATA frames (the bytes never reach it): nothing to report.
        pass

    def _on_ping_ack(self, opaque: bytes, events: list[HboneEvent]) -> None:
        sent_at = self._pings.pop(opaque, None)
        if sent_at is None:
            return
        if opaque == self._keepalive_ping:
            self._keepalive_ping = None
            assert self.settings.ping_interval is not None
            self._next_ping_at = sent_at + self.settings.ping_interval
        events.append(PingAcked(sent_at))

    def _on_request(self, event: RequestReceived, events: list[HboneEvent]) -> None:
        raise NotImplementedError  # pragma: no cover - servers override

    def _on_response(self, event: ResponseReceived, events: list[HboneEvent]) -> None:
        raise NotImplementedError  # pragma: no cover - clients override


_DECODED_LIMIT = 16  # header strings remembered per connection (unique ones keep evicting the rest)


def _decode(cache: dict[bytes, str], raw: bytes) -> str:
    """``raw`` as latin-1 text, the same ``str`` object as last time when it was seen before: every
    tunnel keeps its headers, and names and a peer's ``baggage`` repeat on every one of them."""
    text = cache.get(raw)
    if text is None:
        text = raw.decode("latin-1")
        if len(cache) >= _DECODED_LIMIT:
            cache.clear()
        cache[raw] = text
    return text


def _regular_headers(headers: Iterable[tuple[bytes, bytes]], cache: dict[bytes, str]) -> Headers:
    return tuple(
        (_decode(cache, name), _decode(cache, value)) for name, value in headers if not name.startswith(b":")
    )


def _encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    try:
        return [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers]
    except UnicodeEncodeError as exc:
        raise LocalHboneError(f"header not encodable for HTTP/2 (names ASCII, values latin-1): {exc}") from exc


class HboneClientConn(_HboneConn):
    """The originating side: opens CONNECT tunnels, learns whether each was accepted."""

    _client_side = True

    def __init__(self, settings: HboneSettings = CLIENT_SETTINGS, *, now: float) -> None:
        super().__init__(settings, now=now)

    @property
    def max_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (very large until its SETTINGS arrive)."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def available_streams(self) -> int:
        """How many more tunnels ``open_tunnel`` would accept now."""
        if self._draining:
            return 0
        return max(0, self.max_streams - self._h2.open_outbound_streams)

    def open_tunnel(self, authority: str, headers: Iterable[tuple[str, str]] = ()) -> int:
        """Send ``CONNECT authority`` with extra ``headers``; returns the stream id.

        ``TunnelAccepted`` or ``TunnelRejected`` follows. Raises ``StreamLimitReached`` when the peer's
        stream limit is used up and ``ConnectionDrained`` after a GOAWAY.
        """
        self._check_open()
        if self._draining:
            raise ConnectionDrained("the HBONE connection is draining (GOAWAY): open the tunnel elsewhere")
        try:
            target = parse_authority(authority)
        except InvalidAuthority as exc:
            raise LocalHboneError(str(exc)) from exc
        block = [(b":method", b"CONNECT"), (b":authority", str(target).encode("ascii"))]
        block += _encode_headers(headers)
        stream_id = self._h2.get_next_available_stream_id()
        try:
            self._h2.send_headers(stream_id, block)
        except TooManyStreamsError:
            raise StreamLimitReached(self.max_streams) from None
        except H2Error as exc:
            raise LocalHboneError(f"cannot send CONNECT {authority}: {exc}") from exc
        self._tunnels[stream_id] = _Tunnel()
        return stream_id

    def _on_response(self, event: ResponseReceived, events: list[HboneEvent]) -> None:
        stream_id = event.stream_id or 0
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None or tunnel.accepted:
            return
        raw = event.headers or []
        status_text = next((bytes(v) for k, v in raw if k == b":status"), b"")
        status = int(status_text) if status_text.isdigit() else 0
        headers = _regular_headers(raw, self._decoded)
        if status == 200:
            tunnel.accepted = True
            events.append(TunnelAccepted(stream_id, headers))
            return
        # Istio: anything but 200 is a failure. The stream is over; make sure h2 frees it.
        del self._tunnels[stream_id]
        self._rst(stream_id, ErrorCodes.CANCEL)
        events.append(TunnelRejected(stream_id, status, headers))


class HboneServerConn(_HboneConn):
    """The terminating side: validates CONNECT requests, accepts or rejects each tunnel."""

    _client_side = False

    def __init__(self, settings: HboneSettings = SERVER_SETTINGS, *, now: float) -> None:
        super().__init__(settings, now=now)

    def accept(self, stream_id: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer 200: the upstream is connected, data may flow.

        Raises ``LocalHboneError`` if the tunnel is gone (e.g. a ``TunnelReset`` for it came in the same
        batch of events): check the events before answering, or treat the error as a lost race.
        """
        tunnel = self._tunnel(stream_id)
        if tunnel.accepted:
            raise LocalHboneError(f"stream {stream_id} was already accepted")
        self._h2.send_headers(stream_id, [(b":status", b"200"), *_encode_headers(headers)])
        tunnel.accepted = True

    def reject(self, stream_id: int, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer ``status`` (400 bad request, 401 denied, 503 unreachable...) and end the tunnel."""
        if not 400 <= status <= 599:
            raise LocalHboneError(f"reject needs a 4xx or 5xx status, got {status}")
        tunnel = self._tunnel(stream_id)
        if tunnel.accepted:
            raise LocalHboneError(f"stream {stream_id} was already accepted; use reset to abort it")
        del self._tunnels[stream_id]
        self._answer_and_end(stream_id, status, _encode_headers(headers))
        self._release(stream_id, tunnel)

    def _answer_and_end(self, stream_id: int, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            self._h2.send_headers(stream_id, [(b":status", str(status).encode()), *headers], end_stream=True)
        except (NoSuchStreamError, StreamIDTooLowError):
            # The stream ended in the same read (the client reset it, or h2 closed it for a protocol
            # error and forgot it when a later stream opened): there is nobody to answer.
            return
        # RFC 9113 §8.1: after a complete response, RST_STREAM(NO_ERROR) tells the client to stop
        # sending the request body (here: tunnel bytes) without signalling an error.
        self._rst(stream_id, ErrorCodes.NO_ERROR)

    def _on_request(self, event: RequestReceived, events: list[HboneEvent]) -> None:
        stream_id = event.stream_id or 0
        if self._goaway_sent_last_id is not None and stream_id > self._goaway_sent_last_id:
            self._rst(stream_id, ErrorCodes.REFUSED_STREAM)  # crossed our GOAWAY: the client may retry
            return
        raw = [(bytes(k), bytes(v)) for k, v in event.headers or []]
        reason = _request_problem(raw)
        if reason is not None:
            self._answer_and_end(stream_id, 400, [])
            events.append(TunnelRequestRefused(stream_id, 400, reason))
            return
        authority = next(v for k, v in raw if k == b":authority").decode("latin-1")
        try:
            target = parse_authority(authority)
        except InvalidAuthority as exc:
            self._answer_and_end(stream_id, exc.status_hint, [])
            events.append(TunnelRequestRefused(stream_id, exc.status_hint, str(exc)))
            return
        self._tunnels[stream_id] = _Tunnel()
        events.append(TunnelRequested(stream_id, str(target), target, _regular_headers(raw, self._decoded)))


def _request_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request block is not a plain HBONE CONNECT, or None. Same rules as h2 plus HBONE's."""
    try:
        for _ in validate_headers(headers, _REQUEST_FLAGS):
            pass
    except ProtocolError as exc:
        return f"malformed HTTP/2 request: {exc}"
    pseudo = {k: v for k, v in headers if k.startswith(b":")}
    method = pseudo.get(b":method", b"")
    if method != b"CONNECT":
        return f"method {method.decode('latin-1')!r} is not allowed: HBONE accepts only CONNECT"
    if b":protocol" in pseudo:
        return "extended CONNECT (:protocol) is not HBONE: send a plain CONNECT"
    if b":authority" not in pseudo:
        return "CONNECT without :authority: HBONE needs the target as ip:port"
    return None

"""Frame-boundary scanner that lifts graceful GOAWAY frames out of the inbound bytes before h2 sees them.

Why: h2 ends the connection on *any* received GOAWAY (it drops queued output and refuses every later
send), but RFC 9113 §6.8 lets a peer drain gracefully: GOAWAY(NO_ERROR, last_stream_id) means "open no
new streams; streams up to last_stream_id carry on". ztunnel and Envoy drain that way, so treating it as
fatal would cut live tunnels. The scanner reads only the 9-byte frame headers (bodies are skipped by
length, so it costs a few integer operations per frame), passes every other byte to h2 unchanged and in
order, and reports a well-formed NO_ERROR GOAWAY on stream 0 as a ``Goaway`` value. Anything unusual (an
error code, a bad length, a GOAWAY inside a header block) is handed to h2 untouched so h2 enforces the
rules. A partial frame header is held back, never half-passed, so a GOAWAY split across reads is seen.
"""

from __future__ import annotations

from dataclasses import dataclass

_FRAME_HEADER_LEN = 9
_GOAWAY = 0x7
_HEADER_BLOCK_TYPES = frozenset({0x1, 0x5, 0x9})  # HEADERS, PUSH_PROMISE, CONTINUATION
_END_HEADERS = 0x4
CLIENT_PREFACE_LEN = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; validated by h2


@dataclass(frozen=True, slots=True)
class Goaway:
    """A graceful GOAWAY (error code NO_ERROR) taken out of the byte stream."""

    last_stream_id: int
    debug_data: bytes


@dataclass(frozen=True, slots=True)
class FrameTooLarge:
    """A frame header announcing more than our SETTINGS_MAX_FRAME_SIZE: a connection error
    (FRAME_SIZE_ERROR, RFC 9113 §4.2), detected from the header alone so garbage such as an HTTP/1.1
    response (whose first bytes read as a 4.7 MB length) is refused without buffering it first."""

    length: int


Segment = memoryview | bytes | Goaway | FrameTooLarge


class GoawayScanner:
    """Splits inbound bytes into runs for h2 and graceful ``Goaway`` values, preserving order."""

    def __init__(self, *, skip_preface: bool, max_frame_size: int) -> None:
        self._preface_left = CLIENT_PREFACE_LEN if skip_preface else 0
        self._max_frame_size = max_frame_size
        self._body_left = 0  # bytes of the current passed-through frame body still to come
        self._held = bytearray()  # an incomplete frame header, held back until it is whole
        self._goaway: bytearray | None = None  # a GOAWAY frame (header and body) being collected
        self._goaway_left = 0
        self._in_header_block = False  # HEADERS without END_HEADERS seen: only CONTINUATION may follow
        self._broken = False  # an oversized frame was seen: the connection is over, stop scanning

    def feed(self, data: bytes | bytearray | memoryview) -> list[Segment]:
        """Scan ``data``; return what h2 must receive, in order, with graceful GOAWAYs lifted out."""
        out: list[Segment] = []
        if self._broken:
            return out
        view = memoryview(data)
        n = len(view)
        pos = 0
        start = 0  # first byte of ``view`` not yet emitted to h2
        while pos < n:
            if self._preface_left:
                take = min(self._preface_left, n - pos)
                pos += take
                self._preface_left -= take
            elif self._body_left:
                take = min(self._body_left, n - pos)
                pos += take
                self._body_left -= take
            elif self._goaway is not None:
                take = min(self._goaway_left, n - pos)
                self._goaway += view[pos : pos + take]
                pos += take
                start = pos
                self._goaway_left -= take
                if not self._goaway_left:
                    out.append(self._finish_goaway(self._goaway))
                    self._goaway = None
            else:
                pos, start = self._frame_header(view, pos, start, out)
                if self._broken:
                    return out
        if start < n:
            out.append(view[start:n])
        return out

    def _frame_header(self, view: memoryview, pos: int, start: int, out: list[Segment]) -> tuple[int, int]:
        """At a frame boundary: classify the next frame. Returns the new (pos, start)."""
        need = _FRAME_HEADER_LEN - len(self._held)
        if len(view) - pos < need:
            if pos > start:
                out.append(view[start:pos])
            self._held += view[pos:]
            return len(view), len(view)
        if self._held:
            header = bytes(self._held) + bytes(view[pos : pos + need])
            self._held.clear()
        else:
            header = bytes(view[pos : pos + need])
        header_start, pos = pos - (_FRAME_HEADER_LEN - need), pos + need
        length = int.from_bytes(header[0:3], "big")
        frame_type, flags = header[3], header[4]
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        if length > self._max_frame_size:
            if header_start > start:
                out.append(view[start:header_start])
            out.append(FrameTooLarge(length))
            self._broken = True
            return pos, pos
        if (
            frame_type == _GOAWAY
            and stream_id == 0
            and length >= 8
            and not self._in_header_block
        ):
            if header_start > start:
                out.append(view[start:header_start])
            self._goaway = bytearray(header)
            self._goaway_left = length
            return pos, pos
        if need < _FRAME_HEADER_LEN:  # part of this header came from an earlier read: emit it whole
            out.append(header)
            start = pos
        if frame_type in _HEADER_BLOCK_TYPES:
            self._in_header_block = not flags & _END_HEADERS
        self._body_left = length
        return pos, start

    @staticmethod
    def _finish_goaway(frame: bytearray) -> Segment:
        body = frame[_FRAME_HEADER_LEN:]
        error_code = int.from_bytes(body[4:8], "big")
        if error_code != 0:
            return bytes(frame)  # an error GOAWAY ends the connection: h2 handles it
        last_stream_id = int.from_bytes(body[0:4], "big") & 0x7FFFFFFF
        return Goaway(last_stream_id, bytes(body[8:]))

"""Frame-boundary scanner in front of h2: lifts graceful GOAWAYs and tunnel DATA out of the inbound bytes.

Why GOAWAY: h2 ends the connection on *any* received GOAWAY (it drops queued output and refuses every
later send), but RFC 9113 §6.8 lets a peer drain gracefully: GOAWAY(NO_ERROR, last_stream_id) means
"open no new streams; streams up to last_stream_id carry on". ztunnel and Envoy drain that way, so
treating it as fatal would cut live tunnels. A well-formed NO_ERROR GOAWAY on stream 0 becomes a
``Goaway`` value; anything unusual (an error code, a GOAWAY inside a header block) is h2's to judge.

Why DATA: tunnel bytes are the hot path, and h2 parses every DATA frame into objects and copies its
payload several times. With ``take_data`` set, the scanner asks it about each DATA frame header
(``take_data(stream_id, flags, length) -> bool``) *after* every earlier byte has been consumed (``feed``
is a generator, so the caller has handed the previous segments to h2 by then and h2's state is
current). Taken frames come out as ``(stream_id, memoryview)`` payload pieces as they arrive (a 1 MiB
frame spread over several reads is delivered piece by piece, never reassembled), their padding as a
``Padding`` value, and an END_STREAM flag as a zero-length DATA frame for h2 (which keeps h2's stream
states right at no flow-control cost). A frame not taken is dropped and only its zero-length copy goes
to h2, so h2 still answers a DATA frame on an idle or closed stream as the RFC says. The caller does
all DATA flow control then (h2 never sees the bytes).

Only the 9-byte frame headers are read; bodies are skipped by length. A partial frame header is held
back, never half-passed. A frame longer than our SETTINGS_MAX_FRAME_SIZE is reported as
``FrameTooLarge`` from its header alone, and broken padding as ``FrameError``: both end the connection.

Header blocks (HEADERS or PUSH_PROMISE plus their CONTINUATIONs) are bounded by ``max_header_block``:
h2 buffers a whole block until END_HEADERS, so a peer that never ends one (the CONTINUATION flood) would
make it hold up to 64 frames of ``max_frame_size`` each. The frame header that would take the block past
the bound is reported as ``HeaderBlockTooLarge`` before its body is passed on (so at most
``max_header_block`` bytes were ever buffered), and the connection is over. SETTINGS and PING frames
that ask for an ACK are counted (``control_frames``) so a shell can bound the answers queued for a peer
that does not read.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

_FRAME_HEADER_LEN = 9
_HEADER = struct.Struct(">BHBBI")  # length (3 bytes as 1 + 2), type, flags, stream id (with reserved bit)
_DATA = 0x0
_GOAWAY = 0x7
_HEADER_BLOCK_TYPES = frozenset({0x1, 0x5, 0x9})  # HEADERS, PUSH_PROMISE, CONTINUATION
_ANSWERED_TYPES = frozenset({0x4, 0x6})  # SETTINGS, PING: each one (without ACK) makes us send an ACK
_ACK = 0x1
END_STREAM = 0x1
_END_HEADERS = 0x4
PADDED = 0x8
CLIENT_PREFACE_LEN = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; validated by h2

TakeData = Callable[[int, int, int], bool]
"""``take_data(stream_id, flags, length)``: True to have the frame's payload lifted out for the caller."""


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


@dataclass(frozen=True, slots=True)
class HeaderBlockTooLarge:
    """A header block grew past ``max_header_block`` bytes (CONTINUATION flood): the connection ends."""

    size: int  # the block's size had the frame been accepted
    limit: int


@dataclass(frozen=True, slots=True)
class FrameError:
    """A taken DATA frame is malformed (padding longer than the frame): a connection PROTOCOL_ERROR."""

    reason: str


@dataclass(frozen=True, slots=True)
class Padding:
    """``size`` bytes of a taken DATA frame (its pad-length byte and padding) that carry no payload."""

    stream_id: int
    size: int


Segment = (
    memoryview | bytes | tuple[int, memoryview] | Goaway | FrameTooLarge | HeaderBlockTooLarge | FrameError
    | Padding
)


def end_stream_frame(stream_id: int) -> bytes:
    """A zero-length DATA frame with END_STREAM: how h2 learns a taken frame ended its stream."""
    return _HEADER.pack(0, 0, _DATA, END_STREAM, stream_id)


class FrameScanner:
    """Splits inbound bytes into runs for h2, lifted GOAWAYs and (with ``take_data``) tunnel payload."""

    def __init__(
        self,
        *,
        skip_preface: bool,
        max_frame_size: int,
        take_data: TakeData | None = None,
        max_header_block: int | None = None,
    ) -> None:
        self._preface_left = CLIENT_PREFACE_LEN if skip_preface else 0
        self._max_frame_size = max_frame_size
        self._max_header_block = max_header_block if max_header_block is not None else 1 << 62
        self._header_block = 0  # bytes of the header block being received (frame bodies)
        self.control_frames = 0  # SETTINGS and PING frames received that we must answer (flood guard)
        self._take_data = take_data
        self._body_left = 0  # bytes of the current passed-through frame body still to come
        self._held = bytearray()  # an incomplete frame header, held back until it is whole
        self._goaway: bytearray | None = None  # a GOAWAY frame (header and body) being collected
        self._goaway_left = 0
        self._in_header_block = False  # HEADERS without END_HEADERS seen: only CONTINUATION may follow
        self._broken = False  # an oversized or malformed frame was seen: the connection is over
        # The taken DATA frame being read: payload still to deliver, bytes to drop after it (padding or
        # a frame not taken), whether its pad-length byte is still to come, and its END_STREAM flag.
        self._data_stream = 0
        self._data_left = 0
        self._drop_left = 0
        self._pad_pending = False
        self._data_end = False
        # At a frame boundary with nothing held or pending (where the hot path may start). Preface
        # skipping is not clean; every full scan recomputes it when it ends.
        self._clean = not skip_preface

    def feed(self, data: bytes | bytearray | memoryview) -> Iterable[Segment]:
        """Scan ``data``; return what h2 must receive and what was lifted out, in order.

        Consume each segment before asking for the next: ``take_data`` is called between them."""
        if self._clean and self._take_data is not None:
            whole, rest = self._whole_data_frames(data)
            if whole:
                return itertools.chain(whole, self._scan(rest)) if rest else whole
        return self._scan(data)

    def _whole_data_frames(self, data: bytes | bytearray | memoryview) -> tuple[list[Segment], memoryview | None]:
        """The hot path: ``data`` starts with complete, unpadded DATA frames (a busy tunnel's usual
        read). Lift them out without the general scan; return them and what is left (None: nothing)."""
        out: list[Segment] = []
        view = memoryview(data)
        n = len(view)
        pos = 0
        take_data = self._take_data
        assert take_data is not None
        while n - pos >= _FRAME_HEADER_LEN:
            length_hi, length_lo, frame_type, flags, stream_id = _HEADER.unpack_from(view, pos)
            length = (length_hi << 16) | length_lo
            end = pos + _FRAME_HEADER_LEN + length
            if frame_type != _DATA or flags & ~END_STREAM or end > n or length > self._max_frame_size:
                break
            stream_id &= 0x7FFFFFFF
            if not stream_id:
                break
            if take_data(stream_id, flags, length):
                if length:
                    out.append((stream_id, view[pos + _FRAME_HEADER_LEN : end]))
                if flags:  # END_STREAM: h2 must see it before any later frame is judged
                    out.append(end_stream_frame(stream_id))
            else:
                out.append(_HEADER.pack(0, 0, _DATA, flags, stream_id))
            pos = end
            if flags:
                break
        return out, (view[pos:] if pos < n else None)

    def _scan(self, data: bytes | bytearray | memoryview) -> Iterator[Segment]:
        self._clean = False
        try:
            yield from self._scan_all(data)
        finally:
            self._clean = not (
                self._body_left or self._data_left or self._drop_left or self._pad_pending or self._held
                or self._preface_left or self._in_header_block or self._broken or self._goaway is not None
            )

    def _scan_all(self, data: bytes | bytearray | memoryview) -> Iterator[Segment]:
        if self._broken:
            return
        view = memoryview(data)
        n = len(view)
        pos = 0
        start = 0  # first byte of ``view`` not yet yielded (or dropped)
        while pos < n:
            if self._body_left:
                take = min(self._body_left, n - pos)
                pos += take
                self._body_left -= take
            elif self._pad_pending:
                pad = view[pos]
                pos += 1
                start = pos
                self._pad_pending = False
                if pad > self._data_left:
                    self._broken = True
                    yield FrameError(f"DATA frame padding of {pad} bytes is longer than the frame")
                    return
                self._data_left -= pad
                self._drop_left = pad
                yield Padding(self._data_stream, pad + 1)
                if not self._data_left and not self._drop_left:
                    yield from self._end_data()
            elif self._data_left:
                take = min(self._data_left, n - pos)
                yield (self._data_stream, view[pos : pos + take])
                pos += take
                start = pos
                self._data_left -= take
                if not self._data_left and not self._drop_left:
                    yield from self._end_data()
            elif self._drop_left:
                take = min(self._drop_left, n - pos)
                pos += take
                start = pos
                self._drop_left -= take
                if not self._drop_left:
                    yield from self._end_data()
            elif self._preface_left:
                take = min(self._preface_left, n - pos)
                pos += take
                self._preface_left -= take
            elif self._goaway is not None:
                take = min(self._goaway_left, n - pos)
                self._goaway += view[pos : pos + take]
                pos += take
                start = pos
                self._goaway_left -= take
                if not self._goaway_left:
                    yield self._finish_goaway(self._goaway)
                    self._goaway = None
            else:
                # At a frame boundary: classify the next frame.
                need = _FRAME_HEADER_LEN - len(self._held)
                if n - pos < need:
                    if pos > start:
                        yield view[start:pos]
                    self._held += view[pos:]
                    return
                if self._held:
                    header: bytes | memoryview = bytes(self._held) + bytes(view[pos : pos + need])
                    self._held.clear()
                    length_hi, length_lo, frame_type, flags, stream_id = _HEADER.unpack(header)
                else:
                    header = view[pos : pos + _FRAME_HEADER_LEN]
                    length_hi, length_lo, frame_type, flags, stream_id = _HEADER.unpack_from(view, pos)
                header_start = pos - (_FRAME_HEADER_LEN - need)
                pos += need
                length = (length_hi << 16) | length_lo
                stream_id &= 0x7FFFFFFF
                if length > self._max_frame_size:
                    if header_start > start:
                        yield view[start:header_start]
                    self._broken = True
                    yield FrameTooLarge(length)
                    return
                if self._in_header_block:
                    pass  # only CONTINUATION may follow: h2 rejects anything else
                elif frame_type == _DATA and stream_id and self._take_data is not None:
                    if header_start > start:
                        yield view[start:header_start]
                    start = pos
                    if self._take_data(stream_id, flags, length):
                        self._data_stream = stream_id
                        self._data_end = bool(flags & END_STREAM)
                        self._pad_pending = bool(flags & PADDED) and length > 0
                        if flags & PADDED and not length:
                            self._broken = True
                            yield FrameError("PADDED DATA frame without a pad-length byte")
                            return
                        self._data_left = length - 1 if self._pad_pending else length
                        if not length:
                            yield from self._end_data()
                    else:
                        # Dropped: h2 still sees the frame, empty, to judge the stream it names.
                        yield _HEADER.pack(0, 0, _DATA, flags & END_STREAM, stream_id)
                        self._data_stream = stream_id
                        self._data_end = False
                        self._drop_left = length
                    continue
                elif frame_type == _GOAWAY and stream_id == 0 and length >= 8:
                    if header_start > start:
                        yield view[start:header_start]
                    self._goaway = bytearray(header)
                    self._goaway_left = length
                    start = pos
                    continue
                if frame_type in _ANSWERED_TYPES and not flags & _ACK:
                    self.control_frames += 1
                if frame_type in _HEADER_BLOCK_TYPES:
                    block = self._header_block + length if self._in_header_block else length
                    if block > self._max_header_block:  # refused before its body reaches h2
                        if header_start > start:
                            yield view[start:header_start]
                        self._broken = True
                        self._header_block = 0
                        yield HeaderBlockTooLarge(block, self._max_header_block)
                        return
                    self._header_block = block
                    self._in_header_block = not flags & _END_HEADERS
                if need < _FRAME_HEADER_LEN:  # part of this header came from an earlier read: yield it whole
                    yield header
                    start = pos
                self._body_left = length
        if start < n:
            yield view[start:n]

    def _end_data(self) -> Iterator[Segment]:
        if self._data_end:
            self._data_end = False
            yield end_stream_frame(self._data_stream)

    @staticmethod
    def _finish_goaway(frame: bytearray) -> Segment:
        body = frame[_FRAME_HEADER_LEN:]
        error_code = int.from_bytes(body[4:8], "big")
        if error_code != 0:
            return bytes(frame)  # an error GOAWAY ends the connection: h2 handles it
        last_stream_id = int.from_bytes(body[0:4], "big") & 0x7FFFFFFF
        return Goaway(last_stream_id, bytes(body[8:]))


GoawayScanner = FrameScanner  # the name of its first version, which lifted GOAWAYs only

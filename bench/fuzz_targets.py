"""Fuzz targets for the parsers that take peer or user input (issue 12, "Campaigns").

Each target is ``fuzz_<name>(data: bytes) -> None``: it feeds ``data`` (arbitrary bytes, or bytes it
reads as a small program of frames/packets) to the code under test the way that code's shell does,
and raises only on a real bug: an exception the code under test should never let out, or a broken
invariant (``FuzzBug``). Expected refusals (typed errors, refusal events) are swallowed, so a fuzzer
can run any byte string through them. ``TARGETS`` maps the runner's target names to them.

Targets and what each one checks:
- ``hbone_bytes``: ``HboneServerConn`` after a valid preface/SETTINGS, arbitrary bytes in chunks whose
  size the first byte picks; ``hbone_frames``: the same, fed a frame sequence (hyperframe + HPACK)
  decoded from the input. Never raises; events well-formed (stream ids, order, nothing after
  ``ConnectionClosed``); the header block h2 buffers stays within ``max_header_block_size``; received
  bytes per tunnel within the stream window; tunnels within ``max_concurrent_streams``.
- ``zds``: ztunnel's ZDS decoder and connection state machine (and the node agent's hello/ack
  decoders); only ``ZdsProtocolError`` subclasses, a decoded request re-encodes to an equal one.
- ``xds``: ``apply_delta`` with arbitrary bodies as Address or Authorization resources and the L7
  policy kind (``l7_authorization_from_proto``); rejections only, an accepted resource re-encodes to
  an equal model and is found in the new state.
- ``cni``: the CNI plugin's ``run`` with arbitrary stdin (ADD/DEL/CHECK) and the agent's event line
  decoder: exit 0 with the prevResult or exit 1 with a CNI error JSON; ``EventMalformed`` only.
- ``yaml``: ``load_documents`` (YAML + schema validation): ``InvalidResource`` naming the document only.
- ``http1``: the waypoint's ``detect`` and ``Http1Server`` / ``Http1Client`` fed in chunks: events only
  (``Refusal`` is the last), verdicts final, the pending request head bounded.
- ``http2``: the waypoint's ``H2Server`` / ``H2Client`` with frame sequences or raw bytes: events only,
  nothing after ``ConnectionEnded``, received body within the stream window.
Nothing here does I/O; every loop is bounded by the input's length.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import hpack
import msgspec
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from meshcore.hbone import (
    ConnectionClosed,
    ConnectionDraining,
    DataReceived,
    EofReceived,
    HboneConnectionError,
    HboneServerConn,
    HboneSettings,
    TunnelRequested,
    TunnelRequestRefused,
    TunnelReset,
    WindowOpened,
    parse_authority,
)
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ConversionError,
    address_from_proto,
    address_to_proto,
    authorization_from_proto,
    authorization_to_proto,
    resource_name,
)
from meshcore.model.convert_l7 import (
    L7_AUTHORIZATION_TYPE_URL,
    l7_authorization_from_proto,
    l7_authorization_to_proto,
)
from meshcore.proto import authorization_pb2, waypoint_pb2, workload_pb2
from meshcore.state import ProxyState, apply_delta
from meshcore.state.kinds import EMPTY, map_kind
from meshcore.store.errors import InvalidResource
from meshcore.store.load import load_documents
from waypoint.l7.detect import H2_PREFACE, Detected, detect
from waypoint.l7.events import (
    Body,
    ConnectionEnded,
    EndOfMessage,
    Informational,
    Refusal,
    RequestHead,
    ResponseHead,
    StreamReset,
    Upgraded,
)
from waypoint.l7.events import WindowOpened as H2WindowOpened
from waypoint.l7.http1 import Http1Client, Http1Server
from waypoint.l7.http2 import H2Client, H2Server
from waypoint.l7.model import DEFAULT_LIMITS, HttpLimits
from ztunnel.cni.errors import EventMalformed
from ztunnel.cni.events import decode_event
from ztunnel.cni.plugin import run as cni_run
from ztunnel.inpod.errors import ZdsProtocolError
from ztunnel.inpod.protocol import (
    MAX_PACKET,
    AddWorkload,
    ZdsClientConnection,
    ZdsServerConnection,
    decode_ack,
    decode_hello,
    decode_request,
    encode_request,
)


class FuzzBug(AssertionError):
    """An invariant of the code under test broke for this input (a real bug: keep the input)."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise FuzzBug(message)


class Reader:
    """Reads an input as a little program: bytes, small integers and choices, deterministically.

    Past the end every read returns zeros (an empty choice list is never asked for), so any input is a
    complete program and a fuzzer's mutations stay meaningful."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint(self, size: int) -> int:
        raw = self.take(size)
        return int.from_bytes(raw.ljust(size, b"\0"), "big")

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + max(n, 0)]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def choice(self, options: Sequence[object]) -> object:
        return options[self.byte() % len(options)]


# Chunk sizes the first byte picks: byte by byte, across frame headers, whole frames at once.
_CHUNKS = (1, 2, 3, 5, 8, 9, 10, 16, 17, 64, 100, 1000, 4096, 16384, 65536, 1 << 30)


_MAX_FEEDS = 128  # per input: a long input is cut into fewer, bigger pieces (bounded work per input)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    size = max(size, -(-len(data) // _MAX_FEEDS))
    for start in range(0, len(data), size):
        yield data[start : start + size]


# ======================================================================================== HTTP/2 frames

H2_CLIENT_START = H2_PREFACE + SettingsFrame(0).serialize()
H2_SERVER_START = SettingsFrame(0).serialize()
_FRAME_HEADER = struct.Struct(">BHBBI")
_STREAM_IDS = (1, 1, 3, 3, 5, 7, 9, 0, 2, 4, 101, 201, 0x7FFFFFFF)
_MAX_FRAMES = 96  # per program: bounded work per input

Block = list[tuple[str, str]]


def _connect(authority: str, *extra: tuple[str, str]) -> Block:
    return [(":method", "CONNECT"), (":authority", authority), *extra]


# HBONE request blocks: valid CONNECTs, and what the server must answer 400 or refuse.
HBONE_BLOCKS: tuple[Block, ...] = (
    _connect("127.0.0.1:8080"),
    _connect("10.0.0.2:80", ("baggage", "k8s.namespace.name=default"), ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")),
    _connect("[fd00::1]:443", ("forwarded", "for=10.0.0.1")),
    _connect("127.0.0.1:0"),
    _connect("localhost:80"),
    _connect("127.0.0.1"),
    _connect("127.0.0.1:99999"),
    [(":method", "CONNECT")],
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a:1")],
    _connect("127.0.0.1:8080", (":protocol", "websocket")),
    _connect("127.0.0.1:8080", ("Upper", "x")),
    _connect("127.0.0.1:8080", ("connection", "keep-alive")),
    _connect("127.0.0.1:8080", ("x", "a" * 20000)),
    [(":authority", "127.0.0.1:1"), (":method", "CONNECT"), (":method", "CONNECT")],
    [("x", "y"), (":method", "CONNECT"), (":authority", "127.0.0.1:1")],
    _connect("1.2.3.4:5", ("te", "trailers"), ("x-\u00e9", "\u00ff")),
)

# Waypoint request blocks (h2c prior knowledge): requests, gRPC, and refusals.
WAYPOINT_BLOCKS: tuple[Block, ...] = (
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "svc.ns:80")],
    [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.Svc/Call"), (":authority", "svc"),
     ("content-type", "application/grpc"), ("te", "trailers"), ("content-length", "5")],
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), ("host", "h")],
    [(":method", "CONNECT"), (":authority", "127.0.0.1:80")],
    [(":method", "GET"), (":scheme", "http"), (":authority", "a")],
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"), ("content-length", "x")],
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a"),
     *((f"x-h{i}", "v") for i in range(120))],
    [(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "a"), ("Upper", "1")],
    [(":status", "200")],
    [("grpc-status", "0")],
)

# Response blocks for the waypoint's upstream client.
RESPONSE_BLOCKS: tuple[Block, ...] = (
    [(":status", "200"), ("content-type", "text/plain")],
    [(":status", "200"), ("content-length", "3")],
    [(":status", "100")],
    [(":status", "103"), ("link", "</a>")],
    [(":status", "204")],
    [(":status", "abc")],
    [(":status", "")],
    [(":status", "99999999999999999999")],
    [(":status", "1xx")],
    [("x", "no status")],
    [(":status", "200"), (":status", "201")],
    [("grpc-status", "0"), ("grpc-message", "ok")],
    [(":method", "GET"), (":path", "/")],
)


def _encode(encoder: hpack.Encoder, block: Block) -> bytes:
    """HPACK, Huffman-coded unless big (hpack's pure-Python Huffman coder costs ~5 ms per 20 KB)."""
    return bytes(encoder.encode(block, huffman=sum(len(n) + len(v) for n, v in block) < 1024))


def _on_stream(frame: bytes, sid: int) -> bytes:
    """``frame`` (one serialized frame) moved to stream ``sid`` (hyperframe refuses some ids itself)."""
    return frame[:5] + struct.pack(">I", sid) + frame[9:]


def frame_program(data: bytes, blocks: Sequence[Block]) -> bytes:
    """The HTTP/2 frames ``data`` describes, serialized: mostly well-formed frames of every type (HPACK
    blocks from ``blocks``, split into CONTINUATIONs, padded, on chosen streams), some broken on
    purpose (bad lengths, padding, reserved bits, unknown types, raw bytes)."""
    r = Reader(data)
    encoder = hpack.Encoder()
    out = bytearray()
    frames = 0
    while r.remaining and frames < _MAX_FRAMES:
        frames += 1
        op = r.byte() % 16
        sid = int(r.choice(_STREAM_IDS))  # type: ignore[call-overload]
        bits = r.byte()
        if op <= 3:  # HEADERS (+ CONTINUATIONs)
            block = list(blocks[r.byte() % len(blocks)])
            if bits & 0x40 and block:
                block = block[:-1] if bits & 0x80 else [*block, ("x-fuzz", r.take(r.byte() % 32).decode("latin-1"))]
            encoded = _encode(encoder, block)
            pieces = 1 + (bits >> 4 & 0x3)
            size = max(1, len(encoded) // pieces)
            first, rest = encoded[:size], encoded[size:]
            flags = set()
            if bits & 0x1:
                flags.add("END_STREAM")
            if not rest and not bits & 0x8:
                flags.add("END_HEADERS")
            headers = HeadersFrame(1, first, flags=flags)
            if bits & 0x2:
                headers.flags.add("PADDED")
                headers.pad_length = r.byte()
            if bits & 0x4:
                headers.flags.add("PRIORITY")
                headers.depends_on = int(r.choice(_STREAM_IDS))  # type: ignore[call-overload]
                headers.stream_weight = r.byte()
                headers.exclusive = bool(bits & 0x80)
            out += _on_stream(headers.serialize(), sid)
            for start in range(0, len(rest), size):
                piece = rest[start : start + size]
                last = start + size >= len(rest)
                cont_flags = {"END_HEADERS"} if last and not bits & 0x8 else set()
                out += _on_stream(ContinuationFrame(1, piece, flags=cont_flags).serialize(), sid)
        elif op <= 6:  # DATA
            length = r.uint(2) % 20000 if bits & 0x20 else r.byte()
            sample = r.take(min(length, 64)) or b"x"
            data_frame = DataFrame(1, (sample * (length // len(sample) + 1))[:length],
                                   flags={"END_STREAM"} if bits & 0x1 else set())
            if bits & 0x2:
                data_frame.flags.add("PADDED")
                data_frame.pad_length = r.byte()
            out += _on_stream(data_frame.serialize(), sid)
        elif op == 7:
            out += _on_stream(RstStreamFrame(1, error_code=r.byte() % 16).serialize(), sid)
        elif op <= 10:  # connection frames: stream 0 unless bit 0x10 asks for a wrong stream
            conn_sid = sid if bits & 0x10 else 0
            if op == 8 and bits & 0x1:
                frame: bytes = SettingsFrame(0, flags={"ACK"}).serialize()
            elif op == 8:
                settings = {r.byte() % 10: r.uint(4) for _ in range(r.byte() % 4)}
                frame = SettingsFrame(0, settings=settings).serialize()
            elif op == 9:
                opaque = r.take(8).ljust(8, b"\0")
                frame = PingFrame(0, opaque_data=opaque, flags={"ACK"} if bits & 0x1 else set()).serialize()
            else:
                last_id = int(r.choice(_STREAM_IDS))  # type: ignore[call-overload]
                frame = GoAwayFrame(0, last_stream_id=last_id, error_code=r.byte() % 16,
                                    additional_data=r.take(r.byte() % 16)).serialize()
            out += _on_stream(frame, conn_sid)
        elif op == 11:
            out += _on_stream(WindowUpdateFrame(1, window_increment=r.uint(4) & 0x7FFFFFFF).serialize(), sid)
        elif op == 12:
            depends_on = int(r.choice(_STREAM_IDS))  # type: ignore[call-overload]
            out += _on_stream(PriorityFrame(1, depends_on=depends_on, stream_weight=r.byte()).serialize(), sid)
        elif op == 13:
            block = blocks[r.byte() % len(blocks)]
            push = PushPromiseFrame(1, promised_stream_id=2, data=_encode(encoder, block), flags={"END_HEADERS"})
            out += _on_stream(push.serialize(), sid)
        elif op == 14:  # a frame header of our choosing (any type, flags, length field) and a short body
            length = r.uint(3)
            body = r.take(min(length, r.byte()))
            out += _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, r.byte(), r.byte(), sid | (bits & 0x80) << 24)
            out += body
        else:  # raw bytes
            out += r.take(r.byte() % 48)
    return bytes(out)


# ======================================================================================== HBONE server


@dataclass
class _Tunnel:
    accepted: bool = False
    eof: bool = False
    eof_sent: bool = False
    unacked: int = 0


@dataclass
class HboneDriver:
    """Drives an ``HboneServerConn`` as ``meshcore.aio.hbone_server`` does, checking every event.

    ``policy`` bits: 1 accept requested tunnels (else reject 401), 2 acknowledge received bytes,
    4 half-close after the peer did, 8 send a reply, 16 reset every third tunnel."""

    policy: int
    settings: HboneSettings = field(default_factory=HboneSettings)
    now: float = 0.0
    conn: HboneServerConn = field(init=False)
    tunnels: dict[int, _Tunnel] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
    closed: bool = False

    def __post_init__(self) -> None:
        self.conn = HboneServerConn(self.settings, now=self.now)
        self.conn.data_to_send()

    def feed(self, data: bytes) -> None:
        self.now += 0.0005
        events = self.conn.receive_data(data, now=self.now)
        if self.closed:
            check(not events, f"events after ConnectionClosed: {events[:3]!r}")
            return
        for index, event in enumerate(events):
            self._check_event(event, last=index == len(events) - 1)
        if not self.closed:
            self._respond()
        self._check_bounds()
        self.conn.take_output()

    def _check_event(self, event: object, *, last: bool) -> None:
        tunnels = self.tunnels
        if isinstance(event, TunnelRequested):
            sid = event.stream_id
            check(sid % 2 == 1 and sid not in self.seen, f"TunnelRequested on stream {sid} (new odd id expected)")
            check(event.authority == str(event.target), f"authority {event.authority!r} != {event.target}")
            check(parse_authority(event.authority) == event.target, "authority does not parse back to target")
            check(all(not n.startswith(":") and n == n.lower() for n, _ in event.headers), f"bad headers {event.headers!r}")
            self.seen.add(sid)
            tunnels[sid] = _Tunnel()
        elif isinstance(event, TunnelRequestRefused):
            check(400 <= event.status <= 599 and event.reason, f"refusal {event!r}")
            check(event.stream_id not in tunnels, f"refused stream {event.stream_id} is an open tunnel")
            self.seen.add(event.stream_id)
        elif isinstance(event, DataReceived):
            tunnel = tunnels.get(event.stream_id)
            check(tunnel is not None and not tunnel.eof, f"DataReceived on stream {event.stream_id} not open")
            assert tunnel is not None
            check(len(event.data) > 0, "empty DataReceived")
            tunnel.unacked += len(event.data)
            check(tunnel.unacked <= self.settings.stream_window,
                  f"stream {event.stream_id} holds {tunnel.unacked} unacknowledged bytes, over the window")
        elif isinstance(event, EofReceived):
            tunnel = tunnels.get(event.stream_id)
            check(tunnel is not None and not tunnel.eof, f"EofReceived on stream {event.stream_id} not open")
            assert tunnel is not None
            tunnel.eof = True
        elif isinstance(event, TunnelReset):
            check(tunnels.pop(event.stream_id, None) is not None, f"TunnelReset for unknown stream {event.stream_id}")
        elif isinstance(event, ConnectionClosed):
            check(last, "ConnectionClosed is not the last event")
            check(self.conn.closed and event.reason, "ConnectionClosed without reason or with the connection open")
            self.closed = True
        elif isinstance(event, (WindowOpened, ConnectionDraining)):
            pass
        else:
            raise FuzzBug(f"unexpected event on the server side: {event!r}")

    def _respond(self) -> None:
        conn, policy = self.conn, self.policy
        for sid, tunnel in list(self.tunnels.items()):
            if conn.closed:
                return
            if not tunnel.accepted:
                if policy & 16 and sid % 3 == 0:
                    conn.reset(sid)
                    del self.tunnels[sid]
                    continue
                if policy & 1:
                    conn.accept(sid, [("x-served-by", "fuzz")])
                    tunnel.accepted = True
                else:
                    conn.reject(sid, 401)
                    del self.tunnels[sid]
                    continue
            if policy & 8 and not tunnel.eof_sent:
                sent = conn.send(sid, b"reply")
                check(0 <= sent <= 5, f"send returned {sent}")
            if policy & 2 and tunnel.unacked:
                conn.acknowledge(sid, tunnel.unacked)
                tunnel.unacked = 0
            if policy & 4 and tunnel.eof and not tunnel.eof_sent:
                conn.send_eof(sid)
                tunnel.eof_sent = True
            if tunnel.eof and tunnel.eof_sent and not tunnel.unacked:
                del self.tunnels[sid]

    def _check_bounds(self) -> None:
        conn = self.conn
        h2 = conn._h2  # noqa: SLF001 - the bound is on what h2 buffers
        held = sum(len(f.data) for f in getattr(h2.incoming_buffer, "_headers_buffer", []))
        check(held <= self.settings.max_header_block_size,
              f"h2 buffers a {held}-byte header block, over max_header_block_size")
        check(len(h2.incoming_buffer._data) <= self.settings.max_frame_size + 9,  # noqa: SLF001
              "h2 buffers more than one frame")
        check(len(conn._scanner._held) < 9, "scanner holds a whole frame header")  # noqa: SLF001
        if self.policy & 2 and not conn.closed:
            check(conn.open_tunnels <= self.settings.max_concurrent_streams + 1,
                  f"{conn.open_tunnels} tunnels open, over max_concurrent_streams")

    def finish(self) -> None:
        """The transport ended: the shell resets what is open and takes the last output."""
        if not self.conn.closed:
            for sid in list(self.tunnels):
                self.conn.reset(sid)
            self.conn.close()
        try:
            self.conn.take_output()
        except HboneConnectionError:  # pragma: no cover - take_output never raises
            raise FuzzBug("take_output raised after close") from None


def hbone_transcript(stream: bytes, size: int) -> list[tuple[object, ...]]:
    """What a passive server (answers nothing, acknowledges nothing) reports for ``stream`` fed in
    pieces of ``size``: events as comparable tuples, a stream's consecutive payload joined, window
    events left out. How the bytes were cut must not change it."""
    conn = HboneServerConn(now=0.0)
    out: list[tuple[object, ...]] = []
    for piece in chunks(stream, size):
        for event in conn.receive_data(piece, now=0.0):
            if isinstance(event, DataReceived):
                if out and out[-1][0] == "data" and out[-1][1] == event.stream_id:
                    out[-1] = ("data", event.stream_id, out[-1][2] + bytes(event.data))  # type: ignore[operator]
                else:
                    out.append(("data", event.stream_id, bytes(event.data)))
            elif isinstance(event, TunnelRequested):
                out.append(("requested", event.stream_id, event.authority, event.headers))
            elif isinstance(event, TunnelRequestRefused):
                out.append(("refused", event.stream_id, event.status))
            elif isinstance(event, EofReceived):
                out.append(("eof", event.stream_id))
            elif isinstance(event, TunnelReset):
                out.append(("reset", event.stream_id, event.error_code, event.by_peer))
            elif isinstance(event, ConnectionDraining):
                out.append(("draining", event.last_stream_id))
            elif isinstance(event, ConnectionClosed):
                out.append(("closed", event.error_code))
    return out


def _hbone(data: bytes, stream: bytes) -> None:
    size = _CHUNKS[data[0] % len(_CHUNKS)]
    policy = data[1] if len(data) > 1 else 0
    driver = HboneDriver(policy=policy)
    for piece in chunks(stream, size):
        driver.feed(piece)
    driver.finish()
    if policy & 0x60 == 0x60 and size < len(stream):  # a quarter of the inputs: cut differently, same story
        whole, cut = hbone_transcript(stream, len(stream)), hbone_transcript(stream, size)
        if whole != cut:
            # Tolerated: stories that part where the connection ends. The server answers a refused request
            # within the read that holds it, so what a later frame on that stream means depends on whether
            # that answer went out first (RFC 9113 5.1: ignored after our RST_STREAM, a connection error
            # while the stream is open, STREAM_CLOSED after both END_STREAMs); and h2 drops every event of
            # a read that ends in a connection error. Payload, requests, refusals and resets must agree.
            at = next(i for i, (a, b) in enumerate(zip([*whole, None], [*cut, None], strict=False)) if a != b)
            diverging = whole[at:at + 1] + cut[at:at + 1]
            check(any(item[0] == "closed" for item in diverging),
                  f"fed in {size}-byte pieces the server reports {cut[at:at + 3]!r} after {cut[:at][-3:]!r}, "
                  f"at once {whole[at:at + 3]!r}")


def fuzz_hbone_bytes(data: bytes) -> None:
    """HBONE server: a valid preface and SETTINGS, then ``data[2:]`` as raw bytes."""
    if data:
        _hbone(data, H2_CLIENT_START + data[2:])


def fuzz_hbone_frames(data: bytes) -> None:
    """HBONE server: a valid preface and SETTINGS, then the frame program ``data[2:]`` describes."""
    if data:
        _hbone(data, H2_CLIENT_START + frame_program(data[2:], HBONE_BLOCKS))


# ================================================================================================ ZDS

_FDS = (100, 101, 102)


def fuzz_zds(data: bytes) -> None:
    """ZDS: packets (1-byte kind/fd count, 2-byte length, body) into ztunnel's connection and the node
    agent's decoders; typed protocol errors only."""
    r = Reader(data)
    conn = ZdsClientConnection()
    conn.hello()
    agent = ZdsServerConnection()
    packets = 0
    while r.remaining and packets < 64:
        packets += 1
        head = r.byte()
        body = r.take(r.uint(2) % (MAX_PACKET + 64))
        fds = _FDS[: head % 3]
        where = (head >> 2) % 4
        if where == 0:  # ztunnel receives a request
            try:
                msg = conn.receive_request(body, fds)
            except ZdsProtocolError as e:
                nack = conn.ack(str(e))
                check(len(nack) <= MAX_PACKET, f"nack of {len(nack)} bytes over the packet limit")
                check(decode_ack(nack).error, "nack decodes without an error")
                conn = ZdsClientConnection()
                conn.hello()
                continue
            conn.ack()
            again, again_fds = encode_request(msg)
            check(decode_request(again, again_fds) == msg, f"{msg!r} does not survive encode/decode")
            if isinstance(msg, AddWorkload):
                check(msg.netns_fd in fds, "AddWorkload's netns fd is not the one that arrived")
        elif where == 1:
            try:
                decode_request(body, fds)
            except ZdsProtocolError:
                pass
        elif where == 2:  # the node agent receives the hello (new connection each time)
            try:
                ZdsServerConnection().receive_hello(body, fds)
            except ZdsProtocolError:
                pass
            try:
                decode_hello(body, fds)
            except ZdsProtocolError:
                pass
        else:  # the node agent receives an ack with no request outstanding, then a fresh one
            try:
                agent.receive_ack(body, fds)
                raise FuzzBug("an ack with no request outstanding was accepted")
            except ZdsProtocolError:
                agent = ZdsServerConnection()
            try:
                decode_ack(body, fds)
            except ZdsProtocolError:
                pass


# ================================================================================================ xDS


def _base_state() -> ProxyState:
    wl = workload_pb2.Workload(
        uid="Kubernetes//Pod/default/a", name="a", namespace="default", addresses=[bytes([10, 0, 0, 1])],
        service_account="a", trust_domain="cluster.local", node="node-1", tunnel_protocol=1,
    )
    svc = workload_pb2.Service(
        name="s", namespace="default", hostname="s.default.svc.cluster.local",
        addresses=[workload_pb2.NetworkAddress(address=bytes([10, 96, 0, 1]))],
        ports=[workload_pb2.Port(service_port=80, target_port=8080)],
    )
    pol = authorization_pb2.Authorization(name="p", namespace="default", scope=1, action=0)
    state, rejections = apply_delta(
        ProxyState.empty(), ADDRESS_TYPE_URL,
        {"Kubernetes//Pod/default/a": workload_pb2.Address(workload=wl).SerializeToString(),
         "default/s.default.svc.cluster.local": workload_pb2.Address(service=svc).SerializeToString()}, (),
    )
    state, more = apply_delta(state, AUTHORIZATION_TYPE_URL, {"default/p": pol.SerializeToString()}, ())
    assert not rejections and not more, (rejections, more)
    return state


_STATE = _base_state()
_L7_KIND = map_kind(
    L7_AUTHORIZATION_TYPE_URL,
    lambda raw: l7_authorization_from_proto(waypoint_pb2.L7Authorization.FromString(raw)),
    lambda policy: policy.key,
)


def _content_name(decode: Callable[[bytes], object], name_of: Callable[[object], str], raw: bytes) -> str | None:
    """The name the resource gives itself, or None when it does not decode/convert (a rejection)."""
    try:
        return name_of(decode(raw))
    except Exception as e:  # noqa: BLE001 - classified: only DecodeError and ValueError are refusals
        if type(e).__name__ == "DecodeError" or isinstance(e, ValueError):
            return None
        raise


def _check_delta(updates: dict[str, bytes], rejected: list[object], good: str | None) -> None:
    for rejection in rejected:
        name, reason = rejection  # type: ignore[misc]
        check(name in updates and isinstance(reason, str) and reason, f"bad rejection {rejection!r}")
    names = {r[0] for r in rejected}  # type: ignore[index]
    if good is not None:
        check(good not in names, f"resource {good!r} converts alone but was rejected")
    check("fuzz-wrong-name" in names or "fuzz-wrong-name" not in updates, "a misnamed resource was accepted")


def fuzz_xds(data: bytes) -> None:
    """xDS: ``data[1:]`` as one Address, Authorization or L7Authorization body (``data[0]`` picks)."""
    if not data:
        return
    kind, raw = data[0] % 3, data[1:]
    if kind == 0:
        def decode(b: bytes) -> object:
            return address_from_proto(workload_pb2.Address.FromString(b))
        type_url, name_of = ADDRESS_TYPE_URL, resource_name
    elif kind == 1:
        def decode(b: bytes) -> object:
            return authorization_from_proto(authorization_pb2.Authorization.FromString(b))
        type_url, name_of = AUTHORIZATION_TYPE_URL, resource_name
    else:
        def decode(b: bytes) -> object:
            return l7_authorization_from_proto(waypoint_pb2.L7Authorization.FromString(b))
        type_url, name_of = L7_AUTHORIZATION_TYPE_URL, (lambda m: m.key)
    good = _content_name(decode, name_of, raw)  # type: ignore[arg-type]
    updates = {"fuzz-wrong-name": raw}
    if good is not None and good != "fuzz-wrong-name":
        updates[good] = raw
    if kind == 2:
        policies, rejected = _L7_KIND.start(EMPTY, updates, ["demo/absent"]).finish()
        _check_delta(updates, rejected, good)  # type: ignore[arg-type]
        if good is not None:
            model = policies[good]
            again = l7_authorization_from_proto(l7_authorization_to_proto(model))
            check(again == model, f"L7 policy {good!r} changes on a round trip")
        return
    state, rejected = apply_delta(_STATE, type_url, updates, ["absent"])
    _check_delta(updates, rejected, good)  # type: ignore[arg-type]
    if good is None:
        check(state is _STATE, "a delta with only rejections changed the state")
        return
    if kind == 0:
        model = state.find_workload(good) or state.find_service(good)
        check(model is not None, f"accepted address {good!r} is not in the new state")
        try:
            again = address_from_proto(address_to_proto(model))  # type: ignore[arg-type]
        except ConversionError as e:
            raise FuzzBug(f"accepted address {good!r} cannot be encoded again: {e}") from None
    else:
        model = state.policies.get(good)
        check(model is not None, f"accepted policy {good!r} is not in the new state")
        try:
            again = authorization_from_proto(authorization_to_proto(model))  # type: ignore[arg-type]
        except ConversionError as e:
            raise FuzzBug(f"accepted policy {good!r} cannot be encoded again: {e}") from None
    check(again == model, f"{good!r} changes on a round trip")
    # Removing it again must leave the base state's content.
    removed, _ = apply_delta(state, type_url, {}, [good])
    check(len(removed.workloads) + len(removed.services) + len(removed.policies)
          <= len(_STATE.workloads) + len(_STATE.services) + len(_STATE.policies), "removal left the resource")


# ================================================================================================ CNI

_CNI_ENV = {
    "CNI_CONTAINERID": "c0ffee",
    "CNI_IFNAME": "eth0",
    "CNI_NETNS": "/var/run/netns/fuzz",
    "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-a;K8S_POD_UID=u1;IgnoreUnknown=1",
    "CNI_PATH": "/opt/cni/bin",
}
_COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "", "add")


def _enrollment(config: object, namespace: str, name: str) -> bool | None:
    return name == "pod-a"


def _notify(config: object, event: object, timeout: float) -> object:
    from ztunnel.cni.events import EventReply

    return EventReply(ok=True, captured=True)


def fuzz_cni(data: bytes) -> None:
    """CNI: ``data[1:]`` as the plugin's stdin (``data[0]`` picks the command and CNI_ARGS), and as
    one event line for the node agent."""
    if not data:
        return
    selector, stdin = data[0], data[1:]
    env = dict(_CNI_ENV, CNI_COMMAND=_COMMANDS[selector % len(_COMMANDS)])
    if selector & 0x80:
        env["CNI_ARGS"] = stdin[:32].decode("latin-1")
    out, status = cni_run(env, stdin, enrollment=_enrollment, notify=_notify)  # type: ignore[arg-type]
    check(status in (0, 1), f"exit status {status}")
    if status == 1:
        doc = json.loads(out)
        check(isinstance(doc.get("code"), int) and doc.get("msg") and doc.get("cniVersion"), f"CNI error JSON {out!r}")
    elif out:
        msgspec.json.decode(out)  # what we print is JSON (the prevResult passed through, or ours)
    try:
        decode_event(stdin)
    except EventMalformed as e:
        check(str(e), "EventMalformed without a message")


# =============================================================================================== YAML


def fuzz_yaml(data: bytes) -> None:
    """YAML apply path: ``data`` as UTF-8 text (undecodable bytes replaced) through ``load_documents``."""
    text = data.decode("utf-8", "replace")
    try:
        resources = load_documents(text, "fuzz.yaml")
    except InvalidResource as e:
        check(e.source == "fuzz.yaml" and e.index >= 1 and e.reason, f"InvalidResource without context: {e!r}")
        check(len(str(e)) < 4096, f"an error message of {len(str(e))} characters")
        return
    for resource in resources:
        check(resource.kind and resource.name, f"resource without kind or name: {resource!r}")


# ============================================================================================= HTTP/1

_SMALL_LIMITS = HttpLimits(max_header_bytes=512, max_header_count=8, max_request_line=128)
_METHODS = ("GET", "HEAD", "POST", "PUT", "OPTIONS", "GET")


def _check_detect(data: bytes, size: int) -> None:
    verdict = Detected.NEED_MORE
    for end in range(size, len(data) + size, size):
        now = detect(data[:end], 256)
        if verdict is not Detected.NEED_MORE:
            check(now is verdict, f"detect changed its verdict from {verdict} to {now} with more bytes")
        verdict = now
    if len(data) >= 256 + 2:
        check(verdict is not Detected.NEED_MORE, "detect still needs more after max_request_line + 2 bytes")


def http1_transcript(stream: bytes, size: int, limits: HttpLimits) -> list[tuple[object, ...]]:
    """What an ``Http1Server`` reports for ``stream`` fed in pieces of ``size`` (bodies joined), up to and
    including a refusal (as its status)."""
    server = Http1Server(limits)
    out: list[tuple[object, ...]] = []
    for piece in chunks(stream, size):
        for event in server.receive_data(piece):
            if isinstance(event, Body | Upgraded):
                kind = type(event).__name__
                if out and out[-1][0] == kind:
                    out[-1] = (kind, out[-1][1] + event.data)  # type: ignore[operator]
                else:
                    out.append((kind, event.data))
            elif isinstance(event, RequestHead):
                out.append(("head", event.method, event.authority, event.path, tuple(event.headers),
                            event.http_version, event.end_stream, event.keep_alive, event.upgrade))
            elif isinstance(event, EndOfMessage):
                out.append(("end", tuple(event.trailers)))
            elif isinstance(event, Refusal):
                out.append(("refusal", event.status))
                return out
    return out


def _same_http1_story(stream: bytes, size: int, limits: HttpLimits) -> None:
    whole, cut = http1_transcript(stream, len(stream), limits), http1_transcript(stream, size, limits)
    if whole == cut:
        return
    # One tolerated difference: a head that ends past max_header_bytes only by the bytes its unfinished
    # line is counted with (``_HeadGuard`` counts a line that has not ended yet as a whole line).
    shorter = min(len(whole), len(cut))
    ends = {whole[-1], cut[-1]}
    check(whole[: shorter - 1] == cut[: shorter - 1] and ("refusal", 431) in ends,
          f"fed in {size}-byte pieces the server reports {cut[-3:]!r}, at once {whole[-3:]!r}")


def _http1_server(stream: bytes, size: int, limits: HttpLimits) -> None:
    server = Http1Server(limits)
    done = False
    pending = 0  # bytes fed while a request head is open
    bound = limits.max_header_bytes + limits.max_request_line + 64 + size
    for piece in chunks(stream, size):
        events = server.receive_data(piece)
        if done:
            check(not events or all(isinstance(e, Upgraded | ConnectionEnded) for e in events),
                  f"events after a Refusal: {events!r}")
        for index, event in enumerate(events):
            if isinstance(event, Refusal):
                check(index == len(events) - 1, "Refusal is not the last event")
                check(400 <= event.status <= 599 and event.reason and event.detail, f"bad refusal {event!r}")
                done = True
            elif isinstance(event, RequestHead):
                check(len(event.path) <= limits.max_request_line, "request target over max_request_line")
                check(len(event.headers) <= limits.max_header_count, "more headers than max_header_count")
                check(event.http_version in ("1.0", "1.1"), f"version {event.http_version}")
            elif isinstance(event, EndOfMessage):
                server.send_response(200, [("content-type", "text/plain")], content_length=2)
                server.send_data(b"ok")
                server.send_end()
            elif isinstance(event, Upgraded):
                done = True
            elif not isinstance(event, Body | ConnectionEnded):
                raise FuzzBug(f"unexpected server event {event!r}")
        pending = pending + len(piece) if server.in_head else 0
        check(pending <= bound, f"{pending} bytes of one request head held (bound {bound})")
        if done:
            break
    server.receive_data(b"")


def _http1_client(stream: bytes, size: int, limits: HttpLimits, method: str) -> None:
    client = Http1Client(limits)
    client.send_request(method, "/", "svc", [("x", "y")], end_stream=True)
    sent = 1
    failed = False
    for piece in chunks(stream, size):
        events = client.receive_data(piece)
        if failed:
            check(not events, f"events after a Refusal: {events!r}")
        for index, event in enumerate(events):
            if isinstance(event, Refusal):
                check(index == len(events) - 1, "Refusal is not the last event")
                check(event.status == 502 and event.reason, f"bad refusal {event!r}")
                failed = True
            elif isinstance(event, (ResponseHead, Informational)):
                check(100 <= event.status <= 599, f"status {event.status}")
            elif not isinstance(event, Body | EndOfMessage | Upgraded | ConnectionEnded):
                raise FuzzBug(f"unexpected client event {event!r}")
        check(len(client._head_buffer) <= limits.max_header_bytes, "client holds a response head over the limit")  # noqa: SLF001
        if client.reusable and sent < 8:
            client.send_request(method, "/next", "svc", [], end_stream=True)
            sent += 1
        if failed:
            break
    client.receive_data(b"")


def fuzz_http1(data: bytes) -> None:
    """Waypoint HTTP/1: ``data[1:]`` to ``detect`` and to a server (or, per ``data[0]``, a client)."""
    if not data:
        return
    selector, stream = data[0], data[1:]
    size = _CHUNKS[selector % len(_CHUNKS)]
    limits = _SMALL_LIMITS if selector & 0x10 else DEFAULT_LIMITS
    _check_detect(stream[:512], max(size, 7))
    if selector & 0x20:
        _http1_client(stream, size, limits, _METHODS[(selector >> 6) % len(_METHODS)])
    else:
        _http1_server(stream, size, limits)
        if selector & 0x40 and size < len(stream):
            _same_http1_story(stream, size, limits)


# ============================================================================================= HTTP/2

_H2_SMALL = HttpLimits(max_header_count=8, max_header_block_bytes=2048, reset_burst=4, reset_rate=1.0,
                       max_concurrent_streams=4, stream_window=65535, connection_window=131072)


@dataclass
class _H2Stream:
    unacked: int = 0
    ended: bool = False
    answered: bool = False


def _h2_events(events: list[object], closed_before: bool) -> bool:
    """Checks one batch; returns whether the connection is over."""
    if closed_before:
        check(not events, f"events after ConnectionEnded: {events[:3]!r}")
        return True
    for index, event in enumerate(events):
        if isinstance(event, ConnectionEnded):
            check(index == len(events) - 1, "ConnectionEnded is not the last event")
            return True
    return False


def _h2_server(stream: bytes, size: int, limits: HttpLimits, policy: int) -> None:
    server = H2Server(limits, now=0.0)
    server.data_to_send()
    streams: dict[int, _H2Stream] = {}
    refused: set[int] = set()  # answered by a Refusal: the peer's END_STREAM/DATA may still be reported
    now = 0.0
    over = False
    for piece in chunks(stream, size):
        now += 0.001
        events = server.receive_data(piece, now)
        over = _h2_events(events, over)  # type: ignore[arg-type]
        for event in events:
            if isinstance(event, RequestHead):
                check(event.stream_id % 2 == 1 and event.stream_id not in streams, f"request on stream {event.stream_id}")
                check(len(event.headers) <= limits.max_header_count, "more headers than max_header_count")
                streams[event.stream_id] = _H2Stream()
            elif isinstance(event, Body | EndOfMessage) and event.stream_id in refused:
                if isinstance(event, Body):
                    server.acknowledge(event.stream_id, len(event.data))  # as the shell does
            elif isinstance(event, Body):
                state = streams.get(event.stream_id)
                check(state is not None, f"Body on unknown stream {event.stream_id}")
                assert state is not None
                state.unacked += len(event.data)
                check(state.unacked <= limits.stream_window, "body over the stream window held")
            elif isinstance(event, EndOfMessage):
                state = streams.get(event.stream_id)
                check(state is not None, f"EndOfMessage on unknown stream {event.stream_id}")
                assert state is not None
                state.ended = True
            elif isinstance(event, StreamReset):
                streams.pop(event.stream_id, None)
                server.stream_done(event.stream_id)
            elif isinstance(event, Refusal):
                check(event.status in (405, 431), f"refusal {event!r}")
                check(event.stream_id not in streams, f"refusal of stream {event.stream_id} after its RequestHead")
                refused.add(event.stream_id)
                server.reset(event.stream_id, 0)
            elif not isinstance(event, H2WindowOpened | ConnectionEnded):
                raise FuzzBug(f"unexpected server event {event!r}")
        buffered = getattr(server._h2.incoming_buffer, "_headers_buffer", [])  # noqa: SLF001
        held = sum(len(f.data) for f in buffered)
        check(held <= limits.max_header_block_bytes, f"h2 buffers a {held}-byte header block, over the limit")
        if over:
            break
        for sid, state in list(streams.items()):
            if policy & 1 and state.unacked:
                server.acknowledge(sid, state.unacked)
                state.unacked = 0
            if not state.answered and (state.ended or policy & 2):
                server.send_response(sid, 200, [("content-type", "text/plain")])
                state.answered = True
                if policy & 4:
                    server.send_data(sid, b"hello", end_stream=False)
            if state.answered and state.ended and policy & 8:
                server.end_stream(sid, [("grpc-status", "0")] if policy & 16 else None)
                server.stream_done(sid)
                del streams[sid]
        server.data_to_send()
    server.receive_data(b"")


def _h2_client(stream: bytes, size: int, limits: HttpLimits, policy: int) -> None:
    client = H2Client(limits, now=0.0)
    client.data_to_send()
    sids = [client.send_request("GET", "http", "svc", "/", [("x", "y")], end_stream=bool(policy & 1))]
    if policy & 2:
        sids.append(client.send_request("POST", "http", "svc", "/p", [("content-type", "a/b")]))
        client.send_data(sids[-1], b"body", end_stream=True)
    client.data_to_send()
    over = False
    for piece in chunks(stream, size):
        events = client.receive_data(piece)
        over = _h2_events(events, over)  # type: ignore[arg-type]
        for event in events:
            if isinstance(event, Body):
                client.acknowledge(event.stream_id, len(event.data))
            elif isinstance(event, ResponseHead | Informational):
                check(100 <= event.status <= 599, f"status {event.status}")
            elif not isinstance(event, ResponseHead | Informational | EndOfMessage | StreamReset | H2WindowOpened
                                | ConnectionEnded):
                raise FuzzBug(f"unexpected client event {event!r}")
        if over:
            break
        client.data_to_send()
    client.receive_data(b"")


def fuzz_http2(data: bytes) -> None:
    """Waypoint HTTP/2: ``data[2:]`` as frames (or raw bytes) after the preface, to an ``H2Server`` or,
    per ``data[0]``, an ``H2Client``; ``data[1]`` is the shell's policy."""
    if len(data) < 2:
        return
    selector, policy, body = data[0], data[1], data[2:]
    size = _CHUNKS[selector % len(_CHUNKS)]
    limits = _H2_SMALL if selector & 0x10 else DEFAULT_LIMITS
    raw = bool(selector & 0x40)
    if selector & 0x20:
        frames = body if raw else frame_program(body, RESPONSE_BLOCKS)
        _h2_client(H2_SERVER_START + frames, size, limits, policy)
    else:
        frames = body if raw else frame_program(body, WAYPOINT_BLOCKS)
        _h2_server(H2_CLIENT_START + frames, size, limits, policy)


# =============================================================================================== seeds


def _hbone_stream() -> bytes:
    enc = hpack.Encoder()
    frames = [
        HeadersFrame(1, enc.encode(HBONE_BLOCKS[0]), flags={"END_HEADERS"}),
        DataFrame(1, b"hello tunnel"),
        HeadersFrame(3, enc.encode(HBONE_BLOCKS[1]), flags={"END_HEADERS"}),
        DataFrame(3, b"x" * 100, flags={"END_STREAM"}),
        PingFrame(0, opaque_data=b"12345678"),
        WindowUpdateFrame(0, window_increment=1000),
        RstStreamFrame(1, error_code=8),
        HeadersFrame(5, enc.encode(HBONE_BLOCKS[4]), flags={"END_HEADERS"}),
        GoAwayFrame(0, last_stream_id=5, error_code=0),
    ]
    return b"".join(f.serialize() for f in frames)


def _split_headers() -> bytes:
    block = hpack.Encoder().encode(HBONE_BLOCKS[2])
    return (HeadersFrame(1, block[:5]).serialize() + ContinuationFrame(1, block[5:], flags={"END_HEADERS"}).serialize()
            + DataFrame(1, b"abc", flags={"END_STREAM"}).serialize())


def _zds_packet(where: int, fds: int, body: bytes) -> bytes:
    return bytes([where << 2 | fds]) + len(body).to_bytes(2, "big") + body


def _zds_seeds() -> list[bytes]:
    from meshcore.proto import zds_pb2
    from ztunnel.inpod.protocol import (
        DelWorkload,
        KeepWorkload,
        SnapshotSent,
        WorkloadInfo,
        encode_ack,
        encode_hello,
    )

    add, _ = encode_request(AddWorkload("uid-1", WorkloadInfo("pod", "default", "sa"), 5))
    keep, _ = encode_request(KeepWorkload("uid-2"))
    delete, _ = encode_request(DelWorkload("uid-1"))
    snap, _ = encode_request(SnapshotSent())
    return [
        _zds_packet(0, 1, add) + _zds_packet(0, 0, keep) + _zds_packet(0, 0, snap) + _zds_packet(0, 0, delete),
        _zds_packet(0, 0, add) + _zds_packet(0, 1, keep) + _zds_packet(1, 2, delete),
        _zds_packet(2, 0, encode_hello()) + _zds_packet(3, 0, encode_ack("bad pod")),
        _zds_packet(0, 0, zds_pb2.WorkloadRequest().SerializeToString()) + _zds_packet(0, 1, b"\x0a\x02\x0a\x00"),
    ]


def _xds_seeds() -> list[bytes]:
    from meshcore.model.authorization import StringMatch
    from meshcore.model.l7 import L7Action, L7Authorization, L7Operation, L7Rule, L7Target, PathMatch

    out = [bytes([0]) + address_to_proto(m).SerializeToString() for m in (*_STATE.workloads.values(), *_STATE.services.values())]
    rich = authorization_pb2.Authorization(
        name="deny", namespace="default", scope=2, action=1,
        groups=[authorization_pb2.Group(rules=[authorization_pb2.Rules(matches=[authorization_pb2.Match(
            namespaces=[authorization_pb2.StringMatch(exact="demo")],
            principals=[authorization_pb2.StringMatch(prefix="spiffe://cluster.local/ns/demo/")],
            source_ips=[authorization_pb2.Address(address=bytes([10, 0, 0, 0]), length=8)],
            destination_ports=[8080],
        )])])],
    )
    out += [bytes([1]) + rich.SerializeToString(), bytes([1]) + authorization_to_proto(next(iter(_STATE.policies.values()))).SerializeToString()]
    policy = L7Authorization(
        name="p", namespace="demo", action=L7Action.DENY, dry_run=False,
        targets=(L7Target("gateway", "demo/waypoint"),),
        rules=(L7Rule((), (L7Operation(methods=(StringMatch("exact", "POST"),), paths=(PathMatch("prefix", "/admin"),)),), ()),),
    )
    out.append(bytes([2]) + l7_authorization_to_proto(policy).SerializeToString())
    return out


def _cni_seeds() -> list[bytes]:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.244.1.5/24"}]}
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni", "prevResult": prev,
            "cni_event_address": "/tmp/none.sock", "event_timeout": 0.5}
    text = json.dumps(conf).encode()
    event = json.dumps({"cmd": "add", "pod_namespace": "default", "pod_name": "a", "container_id": "c",
                        "netns": "/var/run/netns/x", "ifname": "eth0", "pod_uid": "u", "pod_ips": ["10.0.0.1"],
                        "wait": True}).encode()
    return [bytes([0]) + text, bytes([1]) + text, bytes([2]) + text, bytes([3]),
            bytes([0]) + json.dumps({"cniVersion": "0.3.1", "name": "n", "type": "t"}).encode(),
            bytes([0x80]) + text, bytes([1]) + event]


_YAML_SEEDS = (
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels: {istio.io/dataplane-mode: ambient}\n",
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: demo, labels: {app: web}}\n"
    "spec:\n  nodeName: node-1\n  serviceAccountName: web\n  containers: [{name: web, image: x, ports: [{containerPort: 80}]}]\n"
    "status: {phase: Running, podIP: 10.244.1.10}\n",
    "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n"
    "spec:\n  selector: {app: web}\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\nspec:\n"
    "  action: DENY\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n"
    "  rules:\n  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]\n"
    "    to: [{operation: {methods: [POST], paths: [/admin/*]}}]\n"
    "    when: [{key: request.headers[x-user], values: [bob]}]\n",
    "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: demo\n"
    "  labels: {istio.io/waypoint-for: service}\n  annotations: {istio.io/for-service-account: server}\n"
    "spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
    "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ServiceAccount, metadata: {name: a, namespace: d}}\n"
    "- {apiVersion: v1, kind: Namespace, metadata: {name: d}}\n---\n---\n",
    "base: &b {apiVersion: v1, kind: Namespace}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  <<: {name: m}\n",
)


def _http1_seeds() -> list[bytes]:
    requests = (
        b"GET / HTTP/1.1\r\nHost: svc\r\nUser-Agent: curl\r\n\r\nGET /b HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"PUT /p HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
        b"GET /ws HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        b"GET / HTTP/1.1\r\nHost: s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\nGET / HTTP/1.1\r\nHost: s\r\n\r\n",
        b"GET http://svc:8080/x?q=1 HTTP/1.0\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: s\r\n\r\n",
    )
    responses = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    )
    out = [bytes([sel]) + r for r in requests for sel in (2, 0x13)]
    out += [bytes([sel]) + r for r in responses for sel in (0x22, 0x62)]
    out.append(bytes([0x22 | 0x40]) + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")  # a HEAD response
    return out


def _http2_seeds() -> list[bytes]:
    program = bytes([
        0, 0, 0x01, 0,  # HEADERS stream 1, END_STREAM, block 0 (GET)
        1, 2, 0x00, 1,  # HEADERS stream 3, block 1 (gRPC POST)
        4, 2, 0x01, 5, 0, 0, 0, 0, 5,  # DATA stream 3, END_STREAM, 5 bytes
        9, 7, 0, 1, 2, 3, 4, 5, 6, 7, 8,  # PING
        7, 4, 0, 8,  # RST_STREAM stream 5 CANCEL
        0, 4, 0x09, 3,  # HEADERS stream 5 without END_HEADERS (CONNECT)
    ])
    server = [bytes([5, policy]) + program for policy in (0x0F, 0x1F, 0x00)]
    enc = hpack.Encoder()
    raw = (HeadersFrame(1, enc.encode(WAYPOINT_BLOCKS[0]), flags={"END_HEADERS", "END_STREAM"}).serialize()
           + RstStreamFrame(1, error_code=8).serialize())
    server.append(bytes([0x45, 0x0F]) + raw)
    client_program = bytes([0, 0, 0x04 & 0, 0, 4, 0, 0x01, 3, 1, 2, 3])  # response HEADERS then DATA END_STREAM
    client = [bytes([0x25, policy]) + client_program for policy in (0, 3)]
    client.append(bytes([0x65, 0]) + HeadersFrame(1, hpack.Encoder().encode([(":status", "200")]),
                                                  flags={"END_HEADERS", "END_STREAM"}).serialize())
    return server + client


def seed_inputs() -> dict[str, list[bytes]]:
    """The seed corpus of each target (``bench/fuzz.py --write-seeds`` writes it to bench/fuzz_corpus/)."""
    hbone = _hbone_stream()
    return {
        "hbone_bytes": [bytes([sel, policy]) + stream for sel in (4, 10, 15) for policy in (0x0F, 0x00, 0x1B)
                        for stream in (hbone, _split_headers())],
        "hbone_frames": [bytes([15, policy]) + bytes(program) for policy in (0x0F, 0x01) for program in (
            [0, 0, 0, 0, 4, 0, 0x01, 5, 1, 2, 3, 4, 5],
            [0, 0, 0x28, 1, 4, 0, 0x22, 0, 50, 7, 9, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 7, 0, 0, 8],
            [0, 2, 0x08, 0, 14, 2, 0, 0, 0, 9, 9, 0, 4, 8, 10, 0, 0, 0, 0],
        )],
        "zds": _zds_seeds(),
        "xds": _xds_seeds(),
        "cni": _cni_seeds(),
        "yaml": [text.encode() for text in _YAML_SEEDS],
        "http1": _http1_seeds(),
        "http2": _http2_seeds(),
    }


# ============================================================================================ registry

Target = Callable[[bytes], None]

TARGETS: dict[str, Target] = {
    "hbone_bytes": fuzz_hbone_bytes,
    "hbone_frames": fuzz_hbone_frames,
    "zds": fuzz_zds,
    "xds": fuzz_xds,
    "cni": fuzz_cni,
    "yaml": fuzz_yaml,
    "http1": fuzz_http1,
    "http2": fuzz_http2,
}

__all__ = ["TARGETS", "FuzzBug", "Reader", "Target", "check", "frame_program", "seed_inputs", *(f.__name__ for f in TARGETS.values())]

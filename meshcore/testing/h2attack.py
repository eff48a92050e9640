"""A raw HTTP/2 peer for abuse tests: mTLS to an HBONE listener, then any frames, in any order.

Real clients (``HboneClient``) cannot misbehave; this one writes exactly the frames a test builds
(hyperframe frames, HPACK-encoded CONNECT blocks) and reads what the server answers, frame by frame.
It is how the adversarial tier replays floods (rapid reset, CONTINUATION, PING) against a real
listener on loopback. Nothing here is used by production code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8


class RawH2Peer:
    """One attacking connection. ``connect`` sends the preface and an empty SETTINGS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.next_stream_id = 1

    @classmethod
    async def connect(
        cls, host: str, port: int, ssl_context: ssl.SSLContext, *, receive_buffer: int | None = None
    ) -> RawH2Peer:
        """Connect over TLS (ALPN h2). ``receive_buffer`` shrinks SO_RCVBUF (a peer that barely reads)."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, ssl=ssl_context, server_hostname="")
        except BaseException:
            sock.close()
            raise
        peer = cls(reader, writer)
        peer.write(PREFACE + SettingsFrame(0).serialize())
        return peer

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def connect_block(self, authority: str) -> bytes:
        return self.encoder.encode([(":method", "CONNECT"), (":authority", authority)])

    def take_stream_id(self) -> int:
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        return stream_id

    def request_and_reset(self, authority: str, count: int) -> bytes:
        """``count`` CONNECT + RST_STREAM(CANCEL) pairs (the rapid-reset attack), as bytes."""
        frames: list[Frame] = []
        for _ in range(count):
            stream_id = self.take_stream_id()
            frames.append(HeadersFrame(stream_id, self.connect_block(authority), flags=["END_HEADERS"]))
            frames.append(RstStreamFrame(stream_id, error_code=CANCEL))
        return serialize(frames)

    def unfinished_headers(self, authority: str) -> tuple[int, bytes]:
        """A CONNECT HEADERS frame without END_HEADERS (CONTINUATION must follow)."""
        stream_id = self.take_stream_id()
        return stream_id, HeadersFrame(stream_id, self.connect_block(authority)).serialize()

    @staticmethod
    def continuation(stream_id: int, size: int) -> bytes:
        return ContinuationFrame(stream_id, b"\x00" * size).serialize()

    @staticmethod
    def pings(count: int) -> bytes:
        one = PingFrame(0, opaque_data=b"\x00" * 8).serialize()
        return one * count

    async def read_goaway(self) -> int | None:
        """Read frames until a GOAWAY (its error code) or EOF (None). Bound it with a timeout."""
        while True:
            try:
                header = await self.reader.readexactly(9)
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                return None
            frame, length = Frame.parse_frame_header(memoryview(header))
            try:
                body = await self.reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                return None
            if isinstance(frame, GoAwayFrame):
                frame.parse_body(memoryview(body))
                return int(frame.error_code)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


def serialize(frames: Iterable[Frame]) -> bytes:
    return b"".join(frame.serialize() for frame in frames)


def open_fds() -> int:
    """File descriptors this process holds now (Linux)."""
    import os

    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")

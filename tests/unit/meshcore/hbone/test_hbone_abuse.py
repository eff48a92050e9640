"""Sans-IO HBONE under abuse: CONTINUATION floods and rapid reset end only the abusive connection.

Frames are built with hyperframe (raw bytes), as an attacker would send them, and fed to a server
connection; the assertions are on what the server reports and sends back, and on what it buffers.
"""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from meshcore.hbone import (
    SERVER_SETTINGS,
    ConnectionClosed,
    HboneServerConn,
    HboneSettings,
    TunnelRequested,
    TunnelReset,
)
from meshcore.hbone._frames import FrameScanner, HeaderBlockTooLarge
from meshcore.testing.pairs import hbone_pair, open_accepted, transfer

KiB = 1 << 10
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _server(settings: HboneSettings = SERVER_SETTINGS, now: float = 0.0) -> HboneServerConn:
    server = HboneServerConn(settings, now=now)
    server.receive_data(PREFACE + _frames(_settings_frame()), now=now)
    server.data_to_send()
    return server


def _settings_frame() -> Frame:
    from hyperframe.frame import SettingsFrame

    return SettingsFrame(0)


def _frames(*frames: Frame) -> bytes:
    return b"".join(f.serialize() for f in frames)


def _connect_block(encoder: Encoder, authority: str = "10.0.0.2:8080") -> bytes:
    return encoder.encode([(":method", "CONNECT"), (":authority", authority)])


def _goaway_code(output: bytes) -> int | None:
    """The error code of the GOAWAY in ``output`` (frames from the server), or None."""
    pos = 0
    while pos + 9 <= len(output):
        length = int.from_bytes(output[pos : pos + 3], "big")
        frame_type = output[pos + 3]
        if frame_type == 0x7:
            frame, _ = Frame.parse_frame_header(memoryview(output[pos : pos + 9]))
            frame.parse_body(memoryview(output[pos + 9 : pos + 9 + length]))
            assert isinstance(frame, GoAwayFrame)
            return int(frame.error_code)
        pos += 9 + length
    return None


# --- CONTINUATION flood -------------------------------------------------------------------------


def test_a_header_block_that_never_ends_is_refused_once_it_passes_the_limit():
    server = _server(HboneSettings(max_header_block_size=64 * KiB))
    encoder = Encoder()
    start = HeadersFrame(1, _connect_block(encoder))  # no END_HEADERS: CONTINUATION must follow
    events = server.receive_data(_frames(start))
    assert events == []
    closed: list[ConnectionClosed] = []
    sent = 0
    for _ in range(63):  # 63 x 16 KiB: the attack sends far more than the limit
        chunk = ContinuationFrame(1, b"\x00" * (16 * KiB))
        sent += 16 * KiB
        closed += [e for e in server.receive_data(_frames(chunk)) if isinstance(e, ConnectionClosed)]
        if closed:
            break
    assert len(closed) == 1
    assert "CONTINUATION flood" in closed[0].reason
    assert closed[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert sent <= 64 * KiB + 16 * KiB  # refused at the first frame past the limit
    assert _goaway_code(server.data_to_send()) == ErrorCodes.ENHANCE_YOUR_CALM
    assert server.closed
    # Nothing of the block is kept once the connection is over.
    assert server._h2.incoming_buffer._headers_buffer == []  # noqa: SLF001


def test_a_single_headers_frame_above_the_limit_is_refused_from_its_frame_header():
    server = _server(HboneSettings(max_header_block_size=16 * KiB))
    frame = HeadersFrame(1, b"\x00" * (32 * KiB))
    raw = _frames(frame)
    events = server.receive_data(raw[:9])  # the frame header alone is enough
    assert [type(e) for e in events] == [ConnectionClosed]
    assert server._h2.incoming_buffer._data == bytearray()  # noqa: SLF001 - h2 never saw the body


def test_a_header_block_within_the_limit_over_several_frames_is_served():
    server = _server(HboneSettings(max_header_block_size=4 * KiB))
    encoder = Encoder()
    block = encoder.encode([(":method", "CONNECT"), (":authority", "10.0.0.2:8080"), ("x-pad", "a" * 3000)])
    half = len(block) // 2
    events = server.receive_data(
        _frames(HeadersFrame(1, block[:half]), ContinuationFrame(1, block[half:], flags=["END_HEADERS"]))
    )
    assert [type(e) for e in events] == [TunnelRequested]


def test_the_scanner_counts_a_block_across_frames_and_resets_per_block():
    scanner = FrameScanner(skip_preface=False, max_frame_size=1 << 20, max_header_block=1000)
    ok = _frames(HeadersFrame(1, b"\x00" * 600, flags=["END_HEADERS"]), HeadersFrame(3, b"\x00" * 600))
    assert not any(isinstance(s, HeaderBlockTooLarge) for s in scanner.feed(ok))
    over = list(scanner.feed(_frames(ContinuationFrame(3, b"\x00" * 500))))
    assert over == [HeaderBlockTooLarge(1100, 1000)]


# --- rapid reset -----------------------------------------------------------------------------------


def _request_and_reset(encoder: Encoder, stream_id: int) -> bytes:
    headers = HeadersFrame(stream_id, _connect_block(encoder), flags=["END_HEADERS"])
    return _frames(headers, RstStreamFrame(stream_id, error_code=ErrorCodes.CANCEL))


def test_rapid_reset_past_the_burst_ends_the_connection_with_enhance_your_calm():
    settings = HboneSettings(reset_burst=50, reset_rate=10.0)
    server = _server(settings)
    encoder = Encoder()
    batch = b"".join(_request_and_reset(encoder, 1 + 2 * i) for i in range(1000))
    events = server.receive_data(batch, now=0.01)
    requested = [e for e in events if isinstance(e, TunnelRequested)]
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and closed[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert "rapid reset" in closed[0].reason
    assert len(requested) <= 51  # the burst, then the connection is over: no more tunnels to serve
    assert _goaway_code(server.data_to_send()) == ErrorCodes.ENHANCE_YOUR_CALM


def test_resets_at_a_sustained_rate_below_the_limit_are_tolerated():
    settings = HboneSettings(reset_burst=10, reset_rate=100.0)
    server = _server(settings)
    encoder = Encoder()
    now = 0.0
    for i in range(500):  # 50 per second for 10 seconds: under the 100/s refill
        now += 0.02
        events = server.receive_data(_request_and_reset(encoder, 1 + 2 * i), now=now)
        assert not any(isinstance(e, ConnectionClosed) for e in events)
    assert server.premature_resets == 500 and not server.closed


def test_resets_of_answered_tunnels_are_not_premature():
    client, server = hbone_pair(server_settings=HboneSettings(reset_burst=1, reset_rate=0.001))
    for _ in range(20):
        sid = open_accepted(client, server)
        client.reset(sid)
        _, server_events = transfer(client, server)
        assert [type(e) for e in server_events] == [TunnelReset]
    assert server.premature_resets == 0 and not server.closed


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_header_block_size", 100), ("reset_burst", 0), ("reset_rate", 0.0)],
    ids=["a header block limit below 1 KiB is refused", "a zero reset burst is refused",
         "a zero reset rate is refused"],
)
def test_abuse_limits_are_validated(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        HboneSettings(**{field: value})


# --- control frame flood ----------------------------------------------------------------------------


def test_a_ping_flood_past_the_burst_ends_the_connection_even_when_the_peer_reads():
    from hyperframe.frame import PingFrame

    server = _server(HboneSettings(control_burst=100, control_rate=10.0))
    flood = _frames(*(PingFrame(0, opaque_data=b"\x00" * 8) for _ in range(500)))
    events = server.receive_data(flood, now=0.5)
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and "control frame flood" in closed[0].reason
    assert closed[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_keepalive_pings_at_a_modest_rate_are_answered_indefinitely():
    from hyperframe.frame import PingFrame

    server = _server(HboneSettings(control_burst=20, control_rate=10.0))
    now = 0.0
    for _ in range(300):  # 5 per second for a minute
        now += 0.2
        events = server.receive_data(_frames(PingFrame(0, opaque_data=b"\x01" * 8)), now=now)
        assert not any(isinstance(e, ConnectionClosed) for e in events)
        assert server.data_to_send()  # the ACK
    assert not server.closed

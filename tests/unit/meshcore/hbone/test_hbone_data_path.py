"""The DATA fast path: frames written and read without h2's frame objects, flow control done by the conn.

A plain h2 connection is the reference peer here: it parses what ``send`` writes and enforces the windows
we advertise, so these tests check the bytes on the wire, not our own bookkeeping.
"""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived as H2DataReceived
from h2.events import StreamReset, WindowUpdated
from h2.settings import SettingCodes, Settings
from hyperframe.frame import DataFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.hbone import (
    ConnectionClosed,
    DataReceived,
    EofReceived,
    HboneServerConn,
    TunnelReset,
)
from meshcore.hbone._frames import FrameError, FrameScanner, Padding, end_stream_frame
from meshcore.testing.pairs import hbone_pair, open_accepted, received_bytes, transfer

MiB = 1 << 20
KiB = 1 << 10


def _raw_pair() -> tuple[H2Connection, HboneServerConn, int]:
    """A plain h2 client that opened a tunnel the HBONE server accepted; returns (raw, server, stream)."""
    config = H2Configuration(client_side=True, header_encoding=None)
    raw = H2Connection(config)
    raw.local_settings = Settings(
        client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: 4 * MiB, SettingCodes.MAX_FRAME_SIZE: MiB}
    )
    raw.max_inbound_frame_size = MiB
    raw.initiate_connection()
    raw.increment_flow_control_window(16 * MiB - 65535)
    server = HboneServerConn(now=0.0)
    server.receive_data(raw.data_to_send())
    raw.receive_data(server.data_to_send())
    server.receive_data(raw.data_to_send())
    sid = raw.get_next_available_stream_id()
    raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
    server.receive_data(raw.data_to_send())
    server.accept(sid)
    raw.receive_data(server.data_to_send())
    return raw, server, sid


def _raw_data(raw: H2Connection, sid: int, size: int) -> bytes:
    """``size`` bytes of DATA frames from ``raw`` on ``sid``, ignoring its windows (a misbehaving peer)."""
    frames = []
    while size:
        n = min(size, 16 * KiB)
        frames.append(DataFrame(sid, data=b"d" * n).serialize())
        size -= n
    return b"".join(frames)


# --- sending --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [1, 16 * KiB - 1, 16 * KiB, 3 * MiB + 5],
    ids=["one byte goes out as one frame",
         "a payload just under the join limit is copied behind its header",
         "a payload at the join limit is written after its header, uncopied",
         "a payload above the frame size is cut into frames of at most the peer's limit"],
)
def test_sent_data_is_well_formed_http2_for_a_plain_peer(size):
    raw, server, sid = _raw_pair()
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert server.send(sid, payload) == size
    events = raw.receive_data(server.data_to_send())
    got = b"".join(e.data for e in events if isinstance(e, H2DataReceived))
    assert got == payload
    assert all(e.flow_controlled_length <= 1 * MiB for e in events if isinstance(e, H2DataReceived))


def test_a_large_payload_reaches_the_output_without_a_copy():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    payload = b"p" * (512 * KiB)
    client.send(sid, payload)
    out = client.take_output()
    assert any(chunk is payload or (isinstance(chunk, memoryview) and chunk.obj is payload) for chunk in out)


def test_send_charges_h2s_windows_so_the_peer_never_sees_an_overrun():
    raw, server, sid = _raw_pair()
    assert server.send(sid, b"z" * (5 * MiB)) == 4 * MiB  # the stream window our peer advertised
    assert server.local_window(sid) == 0
    raw.receive_data(server.data_to_send())
    raw.acknowledge_received_data(4 * MiB, sid)
    events = server.receive_data(raw.data_to_send())
    assert server.local_window(sid) > 0 and events  # WindowOpened reported
    assert server.send(sid, b"z") == 1


def test_frames_queued_by_h2_go_out_before_our_data():
    client, server = hbone_pair()
    sid = client.open_tunnel("10.0.0.2:80")
    transfer(client, server)
    server.accept(sid)  # HEADERS 200 queued inside h2
    server.send(sid, b"right after the answer")
    client_events = client.receive_data(server.data_to_send())
    assert received_bytes(client_events, sid) == b"right after the answer"


# --- receiving and inbound flow control -----------------------------------------------------------------


def test_window_updates_follow_half_a_window_of_acknowledged_bytes():
    raw, server, sid = _raw_pair()
    wire = _raw_data(raw, sid, 2 * MiB)
    events = server.receive_data(wire)
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 2 * MiB
    server.acknowledge(sid, 2 * MiB - 1)
    assert not [e for e in raw.receive_data(server.data_to_send()) if isinstance(e, WindowUpdated)]
    server.acknowledge(sid, 1)
    updates = [e for e in raw.receive_data(server.data_to_send()) if isinstance(e, WindowUpdated)]
    assert [(e.stream_id, e.delta) for e in updates] == [(sid, 2 * MiB)]


def test_the_connection_window_is_given_back_across_tunnels():
    client, server = hbone_pair()
    first, second = open_accepted(client, server), open_accepted(client, server)
    for sid in (first, second):
        client.send(sid, b"a" * (4 * MiB))
    _, server_events = transfer(client, server)
    for sid in (first, second):
        server.acknowledge(sid, len(received_bytes(server_events, sid)))
    transfer(client, server)
    # 8 MiB consumed: both stream windows and the connection window are open again.
    assert client.send(first, b"b" * (4 * MiB)) == 4 * MiB
    assert client.send(second, b"b" * (4 * MiB)) == 4 * MiB


def test_a_peer_overrunning_the_stream_window_gets_that_tunnel_reset():
    raw, server, sid = _raw_pair()
    events = server.receive_data(_raw_data(raw, sid, 4 * MiB + 1))
    assert TunnelReset(sid, ErrorCodes.FLOW_CONTROL_ERROR, by_peer=False) in events
    assert not server.closed
    resets = [e for e in raw.receive_data(server.data_to_send()) if isinstance(e, StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(sid, ErrorCodes.FLOW_CONTROL_ERROR)]


def test_a_peer_overrunning_the_connection_window_loses_the_connection():
    raw, server, _ = _raw_pair()
    wire = b""
    for _ in range(5):  # 5 tunnels x 4 MiB = 20 MiB > 16 MiB, no stream over its own window
        sid = raw.get_next_available_stream_id()
        raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
        wire += raw.data_to_send() + _raw_data(raw, sid, 4 * MiB)
    events = server.receive_data(wire)
    [closed] = [e for e in events if isinstance(e, ConnectionClosed)]
    assert closed.error_code == ErrorCodes.FLOW_CONTROL_ERROR and server.closed


def test_end_stream_on_a_data_frame_is_reported_after_its_bytes():
    raw, server, sid = _raw_pair()
    raw.send_data(sid, b"last words", end_stream=True)
    events = server.receive_data(raw.data_to_send())
    assert events == [DataReceived(sid, b"last words"), EofReceived(sid)]


def test_data_on_a_stream_that_was_never_opened_ends_the_connection_as_h2_would():
    raw, server, _ = _raw_pair()
    events = server.receive_data(DataFrame(41, data=b"who?").serialize())
    assert server.closed and any(isinstance(e, ConnectionClosed) for e in events)


def test_data_on_a_stream_the_peer_already_ended_is_refused_with_stream_closed():
    raw, server, sid = _raw_pair()
    raw.send_data(sid, b"", end_stream=True)
    server.receive_data(raw.data_to_send())
    server.receive_data(DataFrame(sid, data=b"after END_STREAM").serialize())
    raw_events = raw.receive_data(server.data_to_send())
    assert any(isinstance(e, StreamReset) and e.error_code == ErrorCodes.STREAM_CLOSED for e in raw_events)


def test_bytes_of_a_tunnel_reset_while_its_frame_arrives_are_dropped_and_released():
    raw, server, sid = _raw_pair()
    wire = _raw_data(raw, sid, 16 * KiB)
    first = server.receive_data(wire[:100])
    server.reset(sid)
    rest = server.receive_data(wire[100:])
    assert received_bytes(first, sid) == b"d" * 91 and received_bytes(rest, sid) == b""
    assert server.open_tunnels == 0


# --- the scanner --------------------------------------------------------------------------------------


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=5_000), max_size=10),
    pad=st.one_of(st.none(), st.integers(0, 255)),
    end=st.booleans(),
)
def test_taken_data_comes_out_whole_at_any_split(cuts, pad, end):
    payload = bytes(range(256)) * 8
    frame = DataFrame(3, data=payload, pad_length=pad if pad is not None else 0)
    if pad is not None:
        frame.flags.add("PADDED")
    if end:
        frame.flags.add("END_STREAM")
    taken: list[tuple[int, int, int]] = []

    def take(stream_id: int, flags: int, length: int) -> bool:
        taken.append((stream_id, flags & 0x1, length))
        return True

    scanner = FrameScanner(skip_preface=False, max_frame_size=1 << 20, take_data=take)
    got, padding, to_h2 = bytearray(), 0, bytearray()
    for chunk in _split(frame.serialize(), cuts):
        for segment in scanner.feed(chunk):
            if isinstance(segment, tuple):
                got += segment[1]
            elif isinstance(segment, Padding):
                padding += segment.size
            else:
                assert isinstance(segment, (bytes, memoryview))
                to_h2 += segment
    assert bytes(got) == payload
    assert padding == (pad + 1 if pad is not None else 0)
    assert bytes(to_h2) == (end_stream_frame(3) if end else b"")
    assert taken == [(3, int(end), len(frame.serialize()) - 9)]


def test_padding_longer_than_its_frame_is_a_frame_error():
    scanner = FrameScanner(skip_preface=False, max_frame_size=1 << 20, take_data=lambda *_: True)
    bad = (4).to_bytes(3, "big") + bytes([0x0, 0x8]) + (1).to_bytes(4, "big") + bytes([9]) + b"abc"
    assert [s for s in scanner.feed(bad) if isinstance(s, FrameError)]


def test_a_dropped_frame_reaches_h2_empty_with_its_end_stream_flag():
    scanner = FrameScanner(skip_preface=False, max_frame_size=1 << 20, take_data=lambda *_: False)
    frame = DataFrame(5, data=b"q" * 100, flags=["END_STREAM"]).serialize()
    segments = [bytes(s) for s in scanner.feed(frame)]  # type: ignore[arg-type]
    assert segments == [end_stream_frame(5)]


def test_the_data_handler_takes_bytes_only_when_no_event_precedes_them():
    config = H2Configuration(client_side=True, header_encoding=None)
    raw = H2Connection(config)
    raw.initiate_connection()
    server = HboneServerConn(now=0.0)
    server.receive_data(raw.data_to_send())
    handled: list[tuple[int, bytes]] = []
    server.data_handler = lambda sid, data: handled.append((sid, bytes(data)))
    sid = raw.get_next_available_stream_id()
    raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
    raw.send_data(sid, b"early")  # in the same read as the request: must follow its event
    events = server.receive_data(raw.data_to_send())
    assert [type(e).__name__ for e in events] == ["TunnelRequested", "DataReceived"] and not handled
    raw.send_data(sid, b"later", end_stream=True)
    events = server.receive_data(raw.data_to_send())
    assert handled == [(sid, b"later")] and events == [EofReceived(sid)]  # the EOF still comes after


def test_header_strings_repeated_across_tunnels_are_shared_not_copied():
    client, server = hbone_pair()
    baggage = [("baggage", "k8s.namespace.name=default,k8s.pod.name=sleep-1")]
    first = client.open_tunnel("10.0.0.2:80", baggage)
    second = client.open_tunnel("10.0.0.2:81", baggage)
    _, events = transfer(client, server)
    one, two = (e.headers for e in events if e.stream_id in (first, second))
    assert one == two == (("baggage", "k8s.namespace.name=default,k8s.pod.name=sleep-1"),)
    assert one[0][0] is two[0][0] and one[0][1] is two[0][1]  # one str per connection, not per tunnel


@settings(max_examples=200, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["data", "ping", "padded"]), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=8),
)
def test_the_hot_path_and_the_full_scan_agree_on_any_mix_and_split(kinds, cuts):
    from hyperframe.frame import PingFrame

    wire, payload, to_h2 = b"", b"", b""
    for i, kind in enumerate(kinds):
        body = bytes([i]) * (100 + i)
        if kind == "ping":
            frame = PingFrame(0, opaque_data=b"12345678").serialize()
            wire += frame
            to_h2 += frame
        else:
            data = DataFrame(1, data=body, pad_length=3) if kind == "padded" else DataFrame(1, data=body)
            if kind == "padded":
                data.flags.add("PADDED")
            wire += data.serialize()
            payload += body
    scanner = FrameScanner(skip_preface=False, max_frame_size=1 << 20, take_data=lambda *_: True)
    got, h2_bytes = bytearray(), bytearray()
    for chunk in _split(wire, cuts):
        for segment in scanner.feed(chunk):
            if isinstance(segment, tuple):
                got += segment[1]
            elif isinstance(segment, (bytes, memoryview)):
                h2_bytes += segment
    assert bytes(got) == payload and bytes(h2_bytes) == to_h2

"""Sans-IO HBONE connections: a client and a server joined in memory (meshcore.testing.pairs)."""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, ResponseReceived, StreamReset
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.hbone import (
    ConnectionClosed,
    ConnectionDrained,
    ConnectionDraining,
    DataReceived,
    EofReceived,
    HboneClientConn,
    HboneConnectionError,
    HboneServerConn,
    HboneSettings,
    LocalHboneError,
    PingAcked,
    StreamLimitReached,
    TunnelAccepted,
    TunnelRejected,
    TunnelRequested,
    TunnelRequestRefused,
    TunnelReset,
    WindowOpened,
)
from meshcore.testing.pairs import hbone_pair, open_accepted, received_bytes, transfer

MiB = 1 << 20


def test_open_carries_authority_and_headers_and_accept_reaches_the_client():
    client, server = hbone_pair()
    sid = client.open_tunnel("10.0.0.2:8080", [("baggage", "k8s.namespace.name=default"), ("traceparent", "x")])
    _, server_events = transfer(client, server)
    [requested] = server_events
    assert isinstance(requested, TunnelRequested)
    assert (requested.stream_id, requested.authority, requested.target.port) == (sid, "10.0.0.2:8080", 8080)
    assert requested.headers == (("baggage", "k8s.namespace.name=default"), ("traceparent", "x"))
    server.accept(sid, [("baggage", "k8s.namespace.name=dst")])
    client_events, _ = transfer(client, server)
    assert client_events == [TunnelAccepted(sid, (("baggage", "k8s.namespace.name=dst"),))]


def test_ipv6_authority_is_carried_in_brackets():
    client, server = hbone_pair()
    client.open_tunnel("[fd00::2]:443")
    _, [requested] = transfer(client, server)
    assert isinstance(requested, TunnelRequested)
    assert requested.authority == "[fd00::2]:443" and requested.target.host == "fd00::2"


def test_data_flows_both_ways():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    assert client.send(sid, b"ping") == 4
    _, server_events = transfer(client, server)
    assert received_bytes(server_events, sid) == b"ping"
    assert server.send(sid, b"pong!") == 5
    client_events, _ = transfer(client, server)
    assert received_bytes(client_events, sid) == b"pong!"


def test_client_half_close_leaves_the_server_direction_open():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    client.send_eof(sid)
    _, server_events = transfer(client, server)
    assert server_events == [EofReceived(sid)]
    server.send(sid, b"late reply")
    client_events, _ = transfer(client, server)
    assert received_bytes(client_events, sid) == b"late reply"
    with pytest.raises(LocalHboneError, match="after send_eof"):
        client.send(sid, b"x")


def test_server_half_close_leaves_the_client_direction_open_and_both_eofs_finish_the_tunnel():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    server.send_eof(sid)
    client_events, _ = transfer(client, server)
    assert client_events == [EofReceived(sid)]
    client.send(sid, b"still talking")
    _, server_events = transfer(client, server)
    assert received_bytes(server_events, sid) == b"still talking"
    server.acknowledge(sid, len(b"still talking"))
    client.send_eof(sid)
    transfer(client, server)
    assert client.open_tunnels == 0 and server.open_tunnels == 0


def test_reset_mid_transfer_reaches_the_peer_and_returns_unacknowledged_window():
    client, server = hbone_pair()
    first = open_accepted(client, server)
    sent = client.send(first, b"x" * (3 * MiB))
    transfer(client, server)  # the server never acknowledges these 3 MiB
    server.reset(first)
    client_events, _ = transfer(client, server)
    assert TunnelReset(first, ErrorCodes.CANCEL, by_peer=True) in client_events
    # The reset released the 3 MiB on the connection window: a new tunnel can use the full budget.
    second = open_accepted(client, server)
    assert sent == 3 * MiB
    assert client.send(second, b"y" * (5 * MiB)) == 4 * MiB  # only the stream window limits it


def test_client_reset_is_seen_by_the_server():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    client.reset(sid)
    _, server_events = transfer(client, server)
    assert server_events == [TunnelReset(sid, ErrorCodes.CANCEL, by_peer=True)]
    with pytest.raises(LocalHboneError, match="not an open HBONE tunnel"):
        server.send(sid, b"x")
    client.reset(sid)  # idempotent


def test_send_stops_at_the_stream_window_until_the_peer_acknowledges():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    assert client.send(sid, bytes(5 * MiB)) == 4 * MiB
    assert client.send(sid, b"more") == 0
    _, server_events = transfer(client, server)
    assert len(received_bytes(server_events, sid)) == 4 * MiB
    server.acknowledge(sid, 4 * MiB)
    client_events, _ = transfer(client, server)
    assert WindowOpened(sid) in client_events
    assert client.local_window(sid) == 4 * MiB


def test_64_mib_flow_through_the_windows_driven_by_acknowledgements():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    payload = bytes(range(256)) * (64 * MiB // 256)
    offset = 0
    received = bytearray()
    for _ in range(10_000):
        if offset < len(payload):
            window = client.local_window(sid)
            sent = client.send(sid, memoryview(payload)[offset:])
            assert 0 < sent <= window
            offset += sent
        _, server_events = transfer(client, server)
        for event in server_events:
            if isinstance(event, DataReceived):
                received += event.data
                server.acknowledge(sid, len(event.data))
        transfer(client, server)  # deliver the WINDOW_UPDATEs
        if len(received) == len(payload):
            break
    assert bytes(received) == payload


def test_one_stalled_stream_does_not_block_another_because_the_connection_window_is_larger():
    client, server = hbone_pair()
    stalled, lively = open_accepted(client, server), open_accepted(client, server)
    assert client.send(stalled, bytes(4 * MiB)) == 4 * MiB
    assert client.send(lively, bytes(4 * MiB)) == 4 * MiB


@pytest.mark.parametrize("status", [401, 503, 400], ids=["denied by policy", "upstream down", "bad request"])
def test_server_rejection_reaches_the_client_as_tunnel_rejected(status):
    client, server = hbone_pair()
    sid = client.open_tunnel("10.0.0.2:80")
    transfer(client, server)
    server.reject(sid, status)
    client_events, server_events = transfer(client, server)
    assert [e for e in client_events if not isinstance(e, WindowOpened)] == [TunnelRejected(sid, status, ())]
    assert client.open_tunnels == 0 and server.open_tunnels == 0
    assert client.available_streams == 100


def test_reject_with_a_success_status_is_a_local_error():
    client, server = hbone_pair()
    sid = client.open_tunnel("10.0.0.2:80")
    transfer(client, server)
    with pytest.raises(LocalHboneError, match="4xx or 5xx"):
        server.reject(sid, 200)


def test_sending_before_the_tunnel_is_accepted_is_a_local_error():
    client, server = hbone_pair()
    sid = client.open_tunnel("10.0.0.2:80")
    transfer(client, server)
    with pytest.raises(LocalHboneError, match="before the tunnel is accepted"):
        client.send(sid, b"x")
    with pytest.raises(LocalHboneError, match="before the tunnel is accepted"):
        server.send(sid, b"x")


def test_acknowledging_more_than_was_received_is_a_local_error():
    client, server = hbone_pair()
    sid = open_accepted(client, server)
    client.send(sid, b"abc")
    transfer(client, server)
    with pytest.raises(LocalHboneError, match="only 3 are outstanding"):
        server.acknowledge(sid, 4)


def test_client_refuses_an_authority_it_would_send_invalid():
    client, _ = hbone_pair()
    with pytest.raises(LocalHboneError, match="not an IP address literal"):
        client.open_tunnel("reviews.default.svc:9080")


# --- requests the server must refuse: a raw h2 client that sends what it is told --------------------


def _raw_client_pair(*, learn_server_settings: bool = True) -> tuple[H2Connection, HboneServerConn]:
    config = H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False, header_encoding=None
    )
    raw = H2Connection(config)
    raw.initiate_connection()
    server = HboneServerConn(now=0.0)
    server.receive_data(raw.data_to_send())
    to_raw = server.data_to_send()
    if learn_server_settings:
        raw.receive_data(to_raw)
        server.receive_data(raw.data_to_send())
    return raw, server


def _raw_send(raw: H2Connection, server: HboneServerConn, headers: list[tuple[bytes, bytes]]):
    sid = raw.get_next_available_stream_id()
    raw.send_headers(sid, headers)
    server_events = server.receive_data(raw.data_to_send())
    raw_events = raw.receive_data(server.data_to_send())
    return sid, server_events, raw_events


REFUSALS = [
    ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"10.0.0.2:80")], "not allowed"),
    ([(b":method", b"CONNECT"), (b":authority", b"reviews:9080")], "not an IP address literal"),
    ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2")], "port is missing"),
    ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:0")], "outside 1..65535"),
    ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:70000")], "outside 1..65535"),
    ([(b":method", b"CONNECT"), (b":authority", b"fd00::2:80")], "in brackets"),
    ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80"), (b":path", b"/")], "MUST NOT include"),
    ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80"), (b":scheme", b"https")], "MUST NOT include"),
    ([(b":method", b"CONNECT")], "authority"),
    (
        [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/"),
         (b":authority", b"10.0.0.2:80")],
        "extended CONNECT",
    ),
    ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80"), (b"Upper", b"x")], "uppercase"),
    ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80"), (b"connection", b"close")], "onnection"),
]


@pytest.mark.parametrize(
    ("headers", "reason"),
    REFUSALS,
    ids=[
        "a GET is refused because HBONE accepts only CONNECT",
        "a hostname authority is refused because HBONE needs an IP literal",
        "an authority without a port is refused",
        "port 0 is refused",
        "port 70000 is refused",
        "an unbracketed IPv6 authority is refused",
        "a CONNECT carrying :path is refused (plain CONNECT, RFC 9113 8.5)",
        "a CONNECT carrying :scheme is refused",
        "a CONNECT without :authority is refused",
        "an extended CONNECT is refused",
        "an uppercase header name is refused",
        "a connection-specific header is refused",
    ],
)
def test_invalid_requests_are_answered_400_on_their_own_stream(headers, reason):
    raw, server = _raw_client_pair()
    sid, server_events, raw_events = _raw_send(raw, server, headers)
    [refused] = server_events
    assert isinstance(refused, TunnelRequestRefused)
    assert refused.status == 400 and reason in refused.reason
    [response] = [e for e in raw_events if isinstance(e, ResponseReceived)]
    assert dict(response.headers)[b":status"] == b"400"
    assert any(isinstance(e, StreamReset) and e.error_code == ErrorCodes.NO_ERROR for e in raw_events)
    # The connection survives: a valid CONNECT on it is still served.
    _, ok_events, _ = _raw_send(raw, server, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.9:80")])
    assert [type(e) for e in ok_events] == [TunnelRequested]
    assert not server.closed


def test_data_sent_on_a_refused_stream_is_dropped_and_its_window_released():
    raw, server = _raw_client_pair()
    sid = raw.get_next_available_stream_id()
    raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"nohost:80")])
    raw.send_data(sid, b"z" * 60000)
    events = server.receive_data(raw.data_to_send())
    assert [type(e) for e in events] == [TunnelRequestRefused]
    assert server._h2.inbound_flow_control_window >= 16 * MiB - 65535  # noqa: SLF001 - window accounting


def test_padding_is_released_by_the_connection_and_never_shown_to_the_app():
    raw, server = _raw_client_pair()
    sid = raw.get_next_available_stream_id()
    raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
    server.receive_data(raw.data_to_send())
    server.accept(sid)
    raw.receive_data(server.data_to_send())
    raw.send_data(sid, b"abc", pad_length=200)
    events = server.receive_data(raw.data_to_send())
    assert events == [DataReceived(sid, b"abc")]
    server.acknowledge(sid, 3)  # the app acknowledges only what it saw; nothing leaks


def test_trailers_on_a_tunnel_reset_it():
    raw, server = _raw_client_pair()
    sid = raw.get_next_available_stream_id()
    raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
    server.receive_data(raw.data_to_send())
    server.accept(sid)
    raw.receive_data(server.data_to_send())
    raw.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
    events = server.receive_data(raw.data_to_send())
    assert events == [TunnelReset(sid, ErrorCodes.PROTOCOL_ERROR, by_peer=False)]


# --- garbage and protocol errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", bytes(64)],
    ids=["an HTTP/1.1 request", "a TLS ClientHello (TLS sent twice)", "zero bytes"],
)
def test_garbage_instead_of_the_preface_closes_the_connection_without_raising(garbage):
    server = HboneServerConn(now=0.0)
    server.data_to_send()
    [closed] = server.receive_data(garbage)
    assert isinstance(closed, ConnectionClosed) and "HTTP/2" in closed.reason
    assert server.closed and server.next_deadline() is None
    assert server.receive_data(b"more garbage") == []
    with pytest.raises(HboneConnectionError):
        server.ping(1.0)


def test_garbage_from_the_server_closes_the_client_connection():
    client = HboneClientConn(now=0.0)
    client.data_to_send()
    events = client.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert [type(e) for e in events] == [ConnectionClosed]
    assert client.closed and client.available_streams == 0
    with pytest.raises(HboneConnectionError):
        client.open_tunnel("10.0.0.2:80")


def test_a_peer_exceeding_the_advertised_stream_limit_loses_the_connection():
    raw, server = _raw_client_pair(learn_server_settings=False)  # so it does not limit itself
    events = []
    for _ in range(101):
        sid = raw.get_next_available_stream_id()
        raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
        events += server.receive_data(raw.data_to_send())
    assert sum(isinstance(e, TunnelRequested) for e in events) == 100
    assert isinstance(events[-1], ConnectionClosed) and "Max inbound streams" in events[-1].reason
    assert any(isinstance(e, ConnectionTerminated) for e in raw.receive_data(server.data_to_send()))


def test_client_respects_the_servers_100_stream_limit():
    client, server = hbone_pair()
    assert client.max_streams == 100
    ids = [client.open_tunnel("10.0.0.2:80") for _ in range(100)]
    assert client.available_streams == 0
    with pytest.raises(StreamLimitReached):
        client.open_tunnel("10.0.0.2:80")
    transfer(client, server)
    server.reject(ids[0], 503)
    transfer(client, server)
    assert client.available_streams == 1


def test_settings_advertise_the_windows_and_frame_size():
    client, server = hbone_pair()
    assert client._h2.remote_settings.initial_window_size == 4 * MiB  # noqa: SLF001
    assert client._h2.remote_settings.max_frame_size == 1 * MiB  # noqa: SLF001
    assert client._h2.outbound_flow_control_window == 16 * MiB  # noqa: SLF001
    assert server._h2.outbound_flow_control_window == 16 * MiB  # noqa: SLF001
    assert server._h2.remote_settings.max_header_list_size == 16 * 1024  # noqa: SLF001


def test_settings_refuse_equal_stream_and_connection_windows():
    with pytest.raises(ValueError, match="deadlock"):
        HboneSettings(stream_window=4 * MiB, connection_window=4 * MiB)


# --- keepalive, drain, close --------------------------------------------------------------------


def test_keepalive_pings_on_schedule_and_an_answered_ping_reschedules():
    client, server = hbone_pair(now=100.0)
    assert client.next_deadline() == 110.0
    assert client.handle_timer(109.9) == [] and client.data_to_send() == b""
    assert client.handle_timer(110.0) == []
    assert client.next_deadline() == 130.0  # now waiting for the ACK
    client_events, _ = transfer(client, server)
    assert client_events == [PingAcked(110.0)]
    assert client.next_deadline() == 120.0


def test_an_unanswered_keepalive_ping_closes_the_connection():
    client = HboneClientConn(now=0.0)
    client.handle_timer(10.0)
    [closed] = client.handle_timer(30.0)
    assert isinstance(closed, ConnectionClosed) and "keepalive" in closed.reason
    assert client.closed and client.next_deadline() is None


def test_keepalive_can_be_disabled():
    client = HboneClientConn(HboneSettings(ping_interval=None), now=0.0)
    assert client.next_deadline() is None and client.handle_timer(1e9) == []


def test_server_drain_lets_live_tunnels_finish_and_refuses_new_ones():
    client, server = hbone_pair()
    live = open_accepted(client, server)
    server.drain()
    client_events, _ = transfer(client, server)
    assert client_events == [ConnectionDraining(last_stream_id=live)]
    assert client.draining and client.available_streams == 0
    with pytest.raises(ConnectionDrained):
        client.open_tunnel("10.0.0.2:80")
    client.send(live, b"after goaway")
    server.send(live, b"reply after goaway")
    client_events, server_events = transfer(client, server)
    assert received_bytes(server_events, live) == b"after goaway"
    assert received_bytes(client_events, live) == b"reply after goaway"


def test_a_tunnel_crossing_the_servers_goaway_is_refused_so_the_client_can_retry():
    client, server = hbone_pair()
    server.drain()
    goaway = server.data_to_send()
    crossing = client.open_tunnel("10.0.0.2:80")
    assert server.receive_data(client.data_to_send()) == []  # refused silently: it came after our GOAWAY
    events = client.receive_data(goaway) + client.receive_data(server.data_to_send())
    assert ConnectionDraining(0) in events
    assert TunnelReset(crossing, ErrorCodes.REFUSED_STREAM, by_peer=True) in events


def test_a_goaway_split_across_reads_is_still_graceful():
    client, server = hbone_pair()
    live = open_accepted(client, server)
    server.drain()
    wire = server.data_to_send()
    events = []
    for i in range(len(wire)):
        events += client.receive_data(wire[i : i + 1])
    assert events == [ConnectionDraining(live)] and not client.closed


def test_close_sends_a_terminal_goaway_the_peer_reports():
    client, server = hbone_pair()
    open_accepted(client, server)
    server.close(ErrorCodes.ENHANCE_YOUR_CALM, "too busy")
    assert server.closed
    client_events, _ = transfer(client, server)
    [closed] = client_events
    assert closed == ConnectionClosed(
        "peer sent GOAWAY with error code 11: too busy", ErrorCodes.ENHANCE_YOUR_CALM, by_peer=True
    )
    assert client.closed


def test_explicit_ping_reports_when_it_was_sent():
    client, server = hbone_pair()
    client.ping(now=5.5)
    client_events, _ = transfer(client, server)
    assert client_events == [PingAcked(5.5)]


@pytest.mark.parametrize(
    ("authority", "expected"),
    [(b"10.0.0.2:80", [TunnelRequested, TunnelReset]), (b"not-an-ip:80", [TunnelRequestRefused])],
    ids=["a valid request reset in the same read is reported then reset",
         "an invalid request reset in the same read is refused without raising"],
)
def test_a_request_and_its_reset_in_one_read_never_raise(authority, expected):
    raw, server = _raw_client_pair()
    sid = raw.get_next_available_stream_id()
    raw.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", authority)], end_stream=True)
    raw.reset_stream(sid, ErrorCodes.CANCEL)
    events = server.receive_data(raw.data_to_send())
    assert [type(e) for e in events if not isinstance(e, EofReceived)] == expected
    assert server.open_tunnels == 0 and not server.closed


# --- fuzz: no peer input may raise out of receive_data ----------------------------------------------

_raw_frames = st.lists(
    st.tuples(
        st.integers(0, 10),  # frame type (DATA..CONTINUATION, plus an unknown one)
        st.integers(0, 255),  # flags
        st.sampled_from([0, 1, 3, 5, 2, 2**31 - 1]),  # stream id
        st.binary(max_size=64),
    ),
    max_size=12,
)


def _frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([frame_type, flags]) + stream_id.to_bytes(4, "big") + payload


@settings(max_examples=300, deadline=None)
@given(frames=_raw_frames, valid_first=st.booleans())
def test_the_server_survives_arbitrary_frames(frames, valid_first):
    raw, server = _raw_client_pair()
    wire = b""
    if valid_first:
        raw.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.2:80")])
        wire = raw.data_to_send()
    wire += b"".join(_frame(*f) for f in frames)
    events = server.receive_data(wire)
    gone = {e.stream_id for e in events if isinstance(e, TunnelReset)}
    for event in events:
        if isinstance(event, TunnelRequested) and not server.closed and event.stream_id not in gone:
            server.accept(event.stream_id)
    server.data_to_send()
    assert all(not isinstance(e, ConnectionClosed) for e in events) or server.closed


@settings(max_examples=300, deadline=None)
@given(frames=_raw_frames, garbage=st.binary(max_size=40))
def test_the_client_survives_arbitrary_frames_and_bytes(frames, garbage):
    client, server = hbone_pair()
    client.open_tunnel("10.0.0.2:80")
    client.data_to_send()
    events = client.receive_data(b"".join(_frame(*f) for f in frames) + garbage)
    client.data_to_send()
    assert all(not isinstance(e, ConnectionClosed) for e in events) or client.closed

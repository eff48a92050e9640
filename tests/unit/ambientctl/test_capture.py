"""What a capture proves: flows and their server ports, TLS record chains, plaintext markers (pure)."""

from __future__ import annotations

import pytest

from ambientctl.capture import PacketFacts, looks_like_tls, reassemble, summarize

CLIENT, SERVER = "10.244.1.2", "10.244.2.2"


def record(kind: int, body: bytes) -> bytes:
    return bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body


HELLO = record(22, b"\x01" + b"h" * 60)
DATA = record(23, b"\xa5" * 300) + record(23, b"\x5a" * 40)


def tcp(
    src: str, sport: int, dst: str, dport: int, flags: str, seq: int, payload: bytes = b""
) -> PacketFacts:
    return PacketFacts(src=src, dst=dst, sport=sport, dport=dport, flags=flags, seq=seq, payload=payload)


def connection(
    dport: int, request: bytes, response: bytes, *, with_handshake: bool = True
) -> list[PacketFacts]:
    """A client on 41000 -> SERVER:dport, optionally from its SYN, request then response."""
    packets = []
    if with_handshake:
        packets += [tcp(CLIENT, 41000, SERVER, dport, "S", 99), tcp(SERVER, dport, CLIENT, 41000, "SA", 499)]
    packets += [
        tcp(CLIENT, 41000, SERVER, dport, "PA", 100, request),
        tcp(SERVER, dport, CLIENT, 41000, "PA", 500, response),
        tcp(CLIENT, 41000, SERVER, dport, "A", 100 + len(request)),
    ]
    return packets


@pytest.mark.parametrize(
    ("stream", "known_start", "expected"),
    [
        (HELLO + DATA, True, True),
        (HELLO + DATA[:100], True, True),
        (b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n", True, False),
        (b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n", False, False),
        (DATA[7:] + DATA, True, False),
        (DATA[7:] + DATA, False, True),
        (record(23, b"x" * 10) + b"POST / HTTP/1.1\r\n", True, False),
        (b"", True, False),
    ],
    ids=[
        "a handshake then application data records is TLS",
        "a stream cut off inside its last record is still TLS",
        "an HTTP request is not TLS",
        "an HTTP request is not TLS even when the start is unknown",
        "a stream starting mid-record is not TLS when the start is known",
        "a stream starting mid-record is TLS when the capture joined late",
        "a record followed by plaintext is not TLS",
        "nothing is not TLS",
    ],
)
def test_tls_record_chains(stream: bytes, known_start: bool, expected: bool) -> None:
    assert looks_like_tls(stream, known_start=known_start) is expected


@pytest.mark.parametrize(
    ("segments", "start", "expected"),
    [
        ({100: b"abc", 103: b"def"}, 100, b"abcdef"),
        ({103: b"def", 100: b"abc", 101: b"bcd"}, None, b"abcdef"),
        ({100: b"abc", 110: b"xyz"}, 100, b"abc"),
        ({2**32 - 2: b"ab", 0: b"cd"}, 2**32 - 2, b"abcd"),
    ],
    ids=[
        "segments in order are joined",
        "retransmitted and overlapping segments are merged",
        "a gap ends the stream",
        "sequence numbers wrap around",
    ],
)
def test_reassembly(segments: dict[int, bytes], start: int | None, expected: bytes) -> None:
    assert reassemble(segments, start) == expected


def test_hbone_traffic_is_one_tls_flow_to_15008_and_hides_the_marker() -> None:
    summary = summarize(
        connection(15008, HELLO, HELLO + DATA), markers=[b"secret-1"], between=["10.244.0.0/16"]
    )
    (flow,) = summary.flows
    assert (flow.client, flow.server, flow.server_port) == (f"{CLIENT}:41000", f"{SERVER}:15008", 15008)
    assert flow.tls is True and flow.saw_start is True
    assert summary.all_tls_on(15008) and summary.markers_found == ()


def test_plaintext_traffic_shows_its_port_and_the_marker() -> None:
    request = b"POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\nsecret-1"
    summary = summarize(
        connection(8080, request, b"HTTP/1.1 200 OK\r\n\r\n"), markers=[b"secret-1", b"other"]
    )
    assert summary.server_ports == (8080,)
    assert summary.flows[0].tls is False
    assert not summary.all_tls_on(15008)
    assert summary.markers_found == (b"secret-1",)


def test_a_marker_split_across_segments_is_found_in_the_reassembled_stream() -> None:
    packets = [
        tcp(CLIENT, 41000, SERVER, 8080, "PA", 100, b"xx secr"),
        tcp(CLIENT, 41000, SERVER, 8080, "PA", 107, b"et-1 yy"),
    ]
    assert summarize(packets, markers=[b"secret-1"]).markers_found == (b"secret-1",)


def test_a_pooled_connection_joined_mid_stream_counts_as_tls_with_the_ephemeral_side_as_client() -> None:
    packets = connection(15008, DATA[11:] + DATA, DATA, with_handshake=False)
    (flow,) = summarize(packets).flows
    assert flow.server_port == 15008 and flow.saw_start is False and flow.tls is True


def test_any_plaintext_flow_beside_tls_fails_the_tls_only_check() -> None:
    packets = connection(15008, HELLO, DATA) + [tcp(CLIENT, 42000, SERVER, 8080, "S", 1)]
    summary = summarize(packets)
    assert summary.server_ports == (8080, 15008)
    assert not summary.all_tls_on(15008)


def test_packets_outside_the_given_networks_are_ignored_for_flows_but_searched_for_markers() -> None:
    xds = [tcp("172.30.0.1", 40000, "172.30.0.254", 15012, "PA", 1, b"secret-1")]
    summary = summarize(
        xds + connection(15008, HELLO, DATA), markers=[b"secret-1"], between=["10.244.0.0/16"]
    )
    assert summary.server_ports == (15008,) and summary.ignored == 1
    assert summary.markers_found == (b"secret-1",)


def test_no_traffic_proves_nothing() -> None:
    assert not summarize([]).all_tls_on(15008)

"""Sans-IO HTTP/2: a client and a server joined in memory; limits (header count, CONTINUATION flood,
rapid reset) end only what they must."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import pytest

from waypoint.l7.events import (
    Body,
    ConnectionEnded,
    EndOfMessage,
    Refusal,
    RequestHead,
    ResponseHead,
    StreamReset,
)
from waypoint.l7.http2 import ENHANCE_YOUR_CALM, H2Client, H2Server
from waypoint.l7.model import HttpLimits


def transfer(client: H2Client, server: H2Server, now: float = 0.0) -> tuple[list, list]:
    client_events, server_events = [], []
    for _ in range(100):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            return client_events, server_events
        if to_server:
            server_events += server.receive_data(to_server, now)
        if to_client:
            client_events += client.receive_data(to_client)
    raise AssertionError("still exchanging bytes")


def test_a_grpc_call_with_body_and_trailers_round_trips() -> None:
    client, server = H2Client(), H2Server()
    transfer(client, server)
    sid = client.send_request("POST", "http", "svc:50051", "/pkg.Svc/Call",
                              [("content-type", "application/grpc"), ("te", "trailers")])
    client.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    _, events = transfer(client, server)
    head, body, end = events
    assert isinstance(head, RequestHead) and (head.method, head.path, head.authority) == ("POST", "/pkg.Svc/Call", "svc:50051")
    assert isinstance(body, Body) and isinstance(end, EndOfMessage)
    server.send_response(sid, 200, [("content-type", "application/grpc")])
    server.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    server.end_stream(sid, [("grpc-status", "0"), ("grpc-message", "")])
    events, _ = transfer(client, server)
    assert isinstance(events[0], ResponseHead) and events[0].status == 200
    assert events[-1] == EndOfMessage(sid, [("grpc-status", "0"), ("grpc-message", "")])


def test_a_request_with_too_many_headers_gets_431_on_its_stream_only() -> None:
    client, server = H2Client(), H2Server(HttpLimits(max_header_count=3))
    transfer(client, server)
    bad = client.send_request("GET", "http", "a", "/", [(f"x-{i}", "v") for i in range(4)], end_stream=True)
    good = client.send_request("GET", "http", "a", "/", [("x-a", "v")], end_stream=True)
    _, events = transfer(client, server)
    assert any(isinstance(e, Refusal) and e.stream_id == bad and e.status == 431 for e in events)
    assert any(isinstance(e, RequestHead) and e.stream_id == good for e in events)
    assert not server.closed


def _raw_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    return conn


def test_a_continuation_flood_ends_the_connection_with_enhance_your_calm() -> None:
    server = H2Server(HttpLimits(max_header_block_bytes=1024))
    raw = _raw_client()
    data = raw.data_to_send()
    headers = hyperframe.frame.HeadersFrame(1)
    headers.data = b"\x82"  # :method GET, no END_HEADERS
    data += headers.serialize()
    for _ in range(10):
        continuation = hyperframe.frame.ContinuationFrame(1)
        continuation.data = b"\x00" * 200
        data += continuation.serialize()
    events = server.receive_data(data)
    assert isinstance(events[-1], ConnectionEnded) and events[-1].error_code == ENHANCE_YOUR_CALM
    assert "CONTINUATION" in events[-1].reason and server.closed
    seen = raw.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
               for e in seen)


@pytest.mark.parametrize(("resets", "seconds", "ended"), [
    pytest.param(10, 0.0, False, id="a burst of resets within the bucket is tolerated"),
    pytest.param(11, 0.0, True, id="resets past the burst end the connection"),
    pytest.param(30, 10.0, False, id="resets at a pace below the rate are tolerated"),
])
def test_rapid_reset_is_answered_with_goaway(resets: int, seconds: float, ended: bool) -> None:
    client, server = H2Client(), H2Server(HttpLimits(reset_burst=10, reset_rate=5.0, max_concurrent_streams=1000))
    transfer(client, server)
    events = []
    for i in range(resets):
        sid = client.send_request("GET", "http", "a", "/", [], end_stream=True)
        client.reset(sid)
        _, got = transfer(client, server, now=seconds * i / max(resets, 1))
        events += got
    closed = [e for e in events if isinstance(e, ConnectionEnded)]
    assert bool(closed) is ended
    if ended:
        assert closed[0].error_code == ENHANCE_YOUR_CALM and "rapid reset" in closed[0].reason
    assert sum(isinstance(e, StreamReset) and e.premature for e in events) >= min(resets, 11)


def test_a_reset_after_the_answer_is_not_premature() -> None:
    client, server = H2Client(), H2Server(HttpLimits(reset_burst=1, reset_rate=0.001))
    transfer(client, server)
    for _ in range(3):
        sid = client.send_request("GET", "http", "a", "/", [], end_stream=True)
        transfer(client, server)
        server.send_response(sid, 200, [])
        transfer(client, server)
        client.reset(sid)
        _, events = transfer(client, server)
        assert not any(isinstance(e, ConnectionEnded) for e in events)
    assert server.premature_resets == 0

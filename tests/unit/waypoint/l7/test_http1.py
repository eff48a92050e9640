"""Sans-IO HTTP/1.1: parsing, framing, limits, and the refusal of every bad-input class (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypoint.l7.events import Body, EndOfMessage, Refusal, RequestHead, ResponseHead, Upgraded
from waypoint.l7.http1 import Http1Client, Http1Server
from waypoint.l7.model import HttpLimits


def feed(raw: bytes, limits: HttpLimits = HttpLimits(), *, cuts: list[int] = ()) -> list:
    server = Http1Server(limits)
    events = []
    start = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(raw))) + [len(raw)]:
        events += server.receive_data(raw[start:cut])
        start = cut
    return events


def test_a_get_is_one_head_and_its_end() -> None:
    events = feed(b"GET /a?b=1 HTTP/1.1\r\nHost: svc:80\r\nUser-Agent: t\r\nX-A: 1\r\n\r\n")
    head, end = events
    assert isinstance(head, RequestHead) and isinstance(end, EndOfMessage)
    assert (head.method, head.authority, head.path, head.http_version, head.end_stream) == ("GET", "svc:80", "/a?b=1", "1.1", True)
    assert head.headers == [("user-agent", "t"), ("x-a", "1")] and head.user_agent == "t"


def test_a_chunked_body_and_its_trailers_are_reported() -> None:
    events = feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    assert [type(e) for e in events] == [RequestHead, Body, EndOfMessage]
    assert events[1].data == b"abc" and events[2].trailers == [("x-t", "1")]


def test_an_absolute_form_target_gives_authority_and_path() -> None:
    head = feed(b"GET http://other:81/p HTTP/1.1\r\nHost: other:81\r\n\r\n")[0]
    assert (head.authority, head.path) == ("other:81", "/p")


def test_http10_without_keep_alive_closes_after_the_response() -> None:
    server = Http1Server()
    server.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    out = server.send_response(200, [("content-type", "t")])
    assert b"connection: close" in out and not server.keep_alive
    assert server.send_data(b"body") == b"body"  # close-delimited


def test_a_response_without_length_to_http11_is_chunked() -> None:
    server = Http1Server()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = server.send_response(200, [("content-length", "99"), ("transfer-encoding", "x")])
    assert out == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert server.send_data(b"abc") == b"3\r\nabc\r\n"
    assert server.send_end([("grpc-status", "0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"
    assert server.keep_alive


def test_a_websocket_upgrade_reports_the_bytes_after_it() -> None:
    events = feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw")
    assert events[0].upgrade == "websocket" and events[-1] == Upgraded(b"raw")


def test_an_h2c_upgrade_is_served_as_plain_http11() -> None:
    events = feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                  b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.path for h in heads] == ["/", "/2"] and heads[0].upgrade is None


def test_expect_100_continue_is_reported_and_not_forwarded() -> None:
    head = feed(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")[0]
    assert head.expect_continue and ("expect", "100-continue") not in head.headers


REFUSED = [
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
                 id="content-length with transfer-encoding is refused"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400,
                 id="two content-lengths are refused"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400,
                 id="a bad chunk size is refused"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n", 400,
                 id="an overflowing chunk size is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400, id="an obs-fold line is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400, id="a DEL in a value is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX(: b\r\n\r\n", 400, id="a separator in a name is refused"),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="bare LF line endings are refused"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="an HTTP/1.1 request without Host is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two different Hosts are refused"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, id="HTTP/2.0 on an HTTP/1 connection gets 505"),
    pytest.param(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405, id="CONNECT gets 405"),
    pytest.param(b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="a target that is no path is refused"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 5 + b"\r\n", 431,
                 id="more headers than the count limit get 431"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 300 + b"\r\n\r\n", 431,
                 id="headers over the byte limit get 431"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 300, 431,
                 id="a head over the byte limit that never ends gets 431"),
    pytest.param(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n", 414, id="a long request line gets 414"),
]
SMALL = HttpLimits(max_header_bytes=256, max_header_count=5, max_request_line=128)


@pytest.mark.parametrize(("raw", "status"), REFUSED)
def test_bad_input_is_refused(raw: bytes, status: int) -> None:
    events = feed(raw, SMALL)
    assert isinstance(events[-1], Refusal) and events[-1].status == status, events
    assert sum(isinstance(e, Refusal) for e in events) == 1
    assert not any(isinstance(e, EndOfMessage) for e in events)  # never a complete request


@given(st.sampled_from([p.values[0] for p in REFUSED]), st.lists(st.integers(1, 400), max_size=6))
def test_bad_input_is_refused_however_it_is_split(raw: bytes, cuts: list[int]) -> None:
    whole = feed(raw, SMALL)
    split = feed(raw, SMALL, cuts=cuts)
    assert isinstance(split[-1], Refusal) and split[-1].status == whole[-1].status


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_end_in_requests_or_one_refusal(raw: bytes) -> None:
    events = feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + raw, SMALL)
    refusals = [e for e in events if isinstance(e, Refusal)]
    assert len(refusals) <= 1 and (not refusals or events[-1] is refusals[0])


_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@given(st.lists(st.tuples(_name, _value), max_size=4), st.binary(max_size=100), st.lists(st.integers(1, 300), max_size=5))
def test_valid_requests_parse_the_same_however_they_are_split(headers, body, cuts) -> None:
    headers = [(n, v) for n, v in headers if n not in ("host", "content-length", "transfer-encoding", "connection",
                                                        "expect", "upgrade")]
    raw = b"POST /p HTTP/1.1\r\nHost: a\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in headers)
    raw += b"Content-Length: %d\r\n\r\n" % len(body) + body
    events = feed(raw, cuts=cuts)
    assert isinstance(events[0], RequestHead) and isinstance(events[-1], EndOfMessage)
    assert events[0].headers[: len(headers)] == [(n, v.strip()) for n, v in headers]
    assert b"".join(e.data for e in events if isinstance(e, Body)) == body


def test_the_client_frames_a_chunked_request_and_reads_a_keepalive_response() -> None:
    client = Http1Client()
    out = client.send_request("POST", "/x", "svc", [("x-a", "1")]) + client.send_data(b"ab") + client.send_end()
    assert out == b"POST /x HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
    events = client.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [type(e) for e in events] == [ResponseHead, Body, EndOfMessage] and client.reusable


def test_the_client_reads_a_head_response_without_its_body() -> None:
    client = Http1Client()
    client.send_request("HEAD", "/", "svc", [], end_stream=True)
    events = client.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage] and client.reusable


def test_the_client_refuses_a_malformed_response_as_502() -> None:
    client = Http1Client()
    client.send_request("GET", "/", "svc", [], end_stream=True)
    events = client.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(events[-1], Refusal) and events[-1].status == 502 and not client.reusable


def test_a_close_delimited_response_ends_at_eof_and_is_not_reused() -> None:
    client = Http1Client()
    client.send_request("GET", "/", "svc", [], end_stream=True)
    events = client.receive_data(b"HTTP/1.1 200 OK\r\n\r\nabc") + client.receive_data(b"")
    assert [type(e) for e in events] == [ResponseHead, Body, EndOfMessage] and not client.reusable

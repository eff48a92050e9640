"""Protocol detection: table of first bytes, and properties (verdicts are final, waiting is bounded)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypoint.l7.detect import H2_PREFACE, Detected, detect

CASES = [
    pytest.param(b"", Detected.NEED_MORE, id="no bytes yet needs more"),
    pytest.param(H2_PREFACE, Detected.HTTP2, id="the h2c client preface is HTTP/2"),
    pytest.param(H2_PREFACE + b"\x00\x00\x12\x04", Detected.HTTP2, id="the preface followed by SETTINGS is HTTP/2"),
    pytest.param(H2_PREFACE[:10], Detected.NEED_MORE, id="part of the preface needs more"),
    pytest.param(b"GET / HTTP/1.1\r\n", Detected.HTTP1, id="a GET request line is HTTP/1"),
    pytest.param(b"POST /api?x=1 HTTP/1.0\r\nHost: a\r\n", Detected.HTTP1, id="an HTTP/1.0 POST is HTTP/1"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\n", Detected.HTTP1, id="OPTIONS star is HTTP/1"),
    pytest.param(b"GET /x HTTP/1.1", Detected.NEED_MORE, id="a request line without its CRLF needs more"),
    pytest.param(b"GE", Detected.NEED_MORE, id="the start of a method needs more"),
    pytest.param(b"GET /x HTTP/2.0\r\n", Detected.TCP, id="a request line with version 2.0 is TCP"),
    pytest.param(b"GET /a b HTTP/1.1\r\n", Detected.TCP, id="a target with a space is TCP"),
    pytest.param(b"BREW /pot HTTP/1.1\r\n", Detected.TCP, id="an unknown method is TCP"),
    pytest.param(b"get / HTTP/1.1\r\n", Detected.TCP, id="a lowercase method is TCP"),
    pytest.param(b"\x16\x03\x01\x02\x00", Detected.TCP, id="a TLS client hello is TCP"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", Detected.TCP, id="an SSH banner is TCP"),
    pytest.param(b"PRIX", Detected.TCP, id="bytes that leave the preface and match no method are TCP"),
    pytest.param(b"GET /" + b"a" * 40, Detected.HTTP1, id="a request line at the length bound is HTTP/1 (refused 414 later)"),
]


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_detect(data: bytes, expected: Detected) -> None:
    assert detect(data, max_request_line=32) is expected


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_a_verdict_never_changes_with_more_bytes(data: bytes, cut: int) -> None:
    first = detect(data[:cut], max_request_line=64)
    if first is not Detected.NEED_MORE:
        assert detect(data, max_request_line=64) is first


@given(st.binary(min_size=67, max_size=300))
def test_waiting_is_bounded_by_the_request_line_limit(data: bytes) -> None:
    assert detect(data, max_request_line=64) is not Detected.NEED_MORE


@given(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=50),
       st.sampled_from(["1.0", "1.1"]))
def test_every_valid_request_line_is_http1(method: str, target: str, version: str) -> None:
    assert detect(f"{method} /{target} HTTP/{version}\r\n".encode()) is Detected.HTTP1

"""Header rules: hop-by-hop dropped, x-request-id kept or made, x-forwarded-proto, trace headers untouched."""

from __future__ import annotations

import pytest

from waypoint.l7.headers import apply_edits, prepare_request, prepare_response

CASES = [
    pytest.param([("connection", "close")], [], id="connection is dropped"),
    pytest.param([("connection", "x-a, x-b"), ("x-a", "1"), ("x-b", "2"), ("x-c", "3")], [("x-c", "3")],
                 id="headers named by connection are dropped"),
    pytest.param([("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive")], [],
                 id="keep-alive and proxy-connection are dropped"),
    pytest.param([("te", "trailers")], [("te", "trailers")], id="te trailers is kept"),
    pytest.param([("te", "gzip")], [], id="te other than trailers is dropped"),
    pytest.param([("transfer-encoding", "chunked")], [], id="transfer-encoding is dropped (framing is ours)"),
    pytest.param([("upgrade", "h2c"), ("http2-settings", "AAA")], [], id="upgrade and http2-settings are dropped"),
    pytest.param([("traceparent", "00-a-b-01"), ("baggage", "k=v"), ("tracestate", "x=y")],
                 [("traceparent", "00-a-b-01"), ("baggage", "k=v"), ("tracestate", "x=y")],
                 id="trace headers pass untouched"),
]


@pytest.mark.parametrize(("given", "kept"), CASES)
def test_prepare_request_drops_hop_by_hop(given, kept) -> None:
    out, rid = prepare_request(given, scheme="http", new_request_id=lambda: "made")
    assert out == [*kept, ("x-request-id", "made"), ("x-forwarded-proto", "http")]
    assert rid == "made"


def test_a_client_request_id_is_kept() -> None:
    out, rid = prepare_request([("x-request-id", "abc")], scheme="http", new_request_id=lambda: "made")
    assert rid == "abc" and out == [("x-request-id", "abc"), ("x-forwarded-proto", "http")]


def test_an_edge_set_forwarded_proto_is_kept() -> None:
    out, _ = prepare_request([("x-forwarded-proto", "https")], scheme="http", new_request_id=lambda: "r")
    assert ("x-forwarded-proto", "https") in out and ("x-forwarded-proto", "http") not in out


def test_an_upgrade_passed_through_keeps_upgrade() -> None:
    out, _ = prepare_request([("connection", "Upgrade"), ("upgrade", "websocket")], scheme="http",
                             keep_upgrade=True, new_request_id=lambda: "r")
    assert ("upgrade", "websocket") in out and ("connection", "upgrade") in out


def test_response_hop_by_hop_headers_are_dropped() -> None:
    assert prepare_response([("connection", "x-a"), ("x-a", "1"), ("content-type", "t")]) == [("content-type", "t")]


def test_edits_replace_and_remove() -> None:
    assert apply_edits([("a", "1"), ("b", "2")], [("A", "9")], ["b"]) == [("a", "9")]

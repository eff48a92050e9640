"""``explain`` beside its prediction: which access-log records are about the explained source and
destination, which of them are the last connection, and how a record's outcome and denial reason read."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambientctl.troubleshoot.explain import (
    MeshConfig,
    about,
    explain,
    last_seen,
    last_seen_json,
    outcome,
    record_query,
    render_last_seen,
)
from ambientctl.troubleshoot.logs import LogRecord, parse_line
from meshcore.model import Port
from meshcore.state import ProxyState
from meshcore.testing.builders import service, workload

ECHO = "default/echo.default.svc.cluster.local"
HOST = "echo.default.svc.cluster.local"
CLIENT = workload("client", "10.0.0.1")
SERVER = workload("server", "10.0.0.2", services={ECHO: (Port(80, 8080),)})
OTHER = workload("other", "10.0.0.7")
CONFIG = MeshConfig(ProxyState.of(CLIENT, SERVER, OTHER, service("echo", "10.96.0.1", {80: 8080})))
QUERY = record_query(explain(CONFIG, CLIENT, "10.96.0.1", 80))


def line(time: str, level: str, event: str, **fields: str) -> str:
    return f"2026-12-07T15:{time}Z [{level:<9}] {event}  " + " ".join(f"{k}={v!r}" for k, v in fields.items())


def rec(source: str, text: str) -> LogRecord:
    return parse_line(text, source)


OUT_DENIED = rec("ztunnel-node-1", line(
    "40:01.300000", "error", "connection complete", **{
        "src.addr": "10.0.0.1:50100", "src.workload": "client", "src.namespace": "default",
        "dst.addr": "10.0.0.2:15008", "dst.hbone_addr": "10.0.0.2:8080", "dst.service": HOST,
        "direction": "outbound", "error": "HBONE tunnel to 10.0.0.2:8080 refused by the server with HTTP status 401", "scope": "access"}))  # fmt: skip
IN_DENIED = rec("ztunnel-node-2", line(
    "40:01.200000", "error", "connection complete", **{
        "src.addr": "10.0.0.1:41000", "src.workload": "client", "src.namespace": "default",
        "dst.addr": "10.0.0.2:8080", "dst.hbone_addr": "10.0.0.2:8080", "dst.workload": "server",
        "direction": "inbound", "error": "explicitly denied by: default/deny-bad", "scope": "access"}))  # fmt: skip
IN_ALLOWED_EARLIER = rec("ztunnel-node-2", line(
    "10:00.000000", "info", "connection complete", **{
        "src.addr": "10.0.0.1:40000", "dst.addr": "10.0.0.2:8080", "direction": "inbound",
        "bytes_sent": "12", "bytes_recv": "34", "duration": "5ms", "scope": "access"}))  # fmt: skip
FROM_OTHER = rec("ztunnel-node-2", line(
    "41:00.000000", "error", "connection complete", **{
        "src.addr": "10.0.0.7:41000", "src.workload": "other", "src.namespace": "default",
        "dst.addr": "10.0.0.2:8080", "direction": "inbound", "error": "explicitly denied by: default/x",
        "scope": "access"}))  # fmt: skip
TO_ELSEWHERE = rec("ztunnel-node-1", line(
    "41:00.000000", "info", "connection complete", **{
        "src.addr": "10.0.0.1:50200", "src.workload": "client", "src.namespace": "default",
        "dst.addr": "192.0.2.1:443", "direction": "outbound", "scope": "access"}))  # fmt: skip
WAYPOINT_403 = rec("waypoint default/waypoint", line(
    "40:02.000000", "info", "request complete", **{
        "src.addr": "10.0.0.1:50300", "src.workload": "client",
        "src.identity": "spiffe://cluster.local/ns/default/sa/client", "dst.addr": "10.96.0.1:80",
        "dst.service": HOST, "method": "POST", "response_code": "403", "policy": "default/get-only",
        "detail": "rbac_access_denied_matched_policy[default/get-only]", "scope": "access"}))  # fmt: skip
NOT_ACCESS = rec("ztunnel-node-1", line(
    "40:03.000000", "info", "pod added", **{"src.addr": "10.0.0.1:1", "dst.service": HOST}))  # fmt: skip


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (OUT_DENIED, True), (IN_DENIED, True), (IN_ALLOWED_EARLIER, True), (WAYPOINT_403, True),
        (FROM_OTHER, False), (TO_ELSEWHERE, False), (NOT_ACCESS, False),
    ],
    ids=["the source ztunnel's record to the service matches", "the destination ztunnel's record matches by endpoint",
         "a record with only addresses matches by the pod IP and endpoint", "the waypoint's request matches by service",
         "another source to the same destination does not match", "the source to another destination does not match",
         "a line that is not an access record never matches"],
)  # fmt: skip
def test_which_records_are_about_the_explained_connection(record: LogRecord, expected: bool) -> None:
    assert about(record, QUERY) is expected


def test_a_workload_dialled_by_ip_and_port_matches_only_that_port() -> None:
    q = record_query(explain(CONFIG, CLIENT, "10.0.0.2", 9090))
    assert not about(IN_DENIED, q)
    assert about(IN_DENIED, record_query(explain(CONFIG, CLIENT, "10.0.0.2", 8080)))


def test_the_last_connection_is_shown_as_each_proxy_logged_it_newest_first() -> None:
    records = [IN_ALLOWED_EARLIER, FROM_OTHER, IN_DENIED, OUT_DENIED, TO_ELSEWHERE, NOT_ACCESS]
    assert last_seen(records, QUERY) == (OUT_DENIED, IN_DENIED)
    # A proxy whose latest record is from an older connection is left out of this one.
    assert last_seen([IN_ALLOWED_EARLIER, OUT_DENIED], QUERY) == (OUT_DENIED,)
    assert last_seen([IN_ALLOWED_EARLIER, OUT_DENIED], QUERY, window=timedelta(hours=1)) == (
        OUT_DENIED, IN_ALLOWED_EARLIER)  # fmt: skip
    assert last_seen([FROM_OTHER, TO_ELSEWHERE], QUERY) == ()


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (IN_DENIED, ("DENIED", "explicitly denied by: default/deny-bad")),
        (OUT_DENIED, ("DENIED", "HBONE tunnel to 10.0.0.2:8080 refused by the server with HTTP status 401")),
        (WAYPOINT_403, ("DENIED", "HTTP 403 by default/get-only (rbac_access_denied_matched_policy[default/get-only])")),
        (IN_ALLOWED_EARLIER, ("OK", "12/34 bytes in 5ms")),
        (rec("z", line("00:00.0", "error", "connection complete", error="BrokenPipeError: [Errno 32] Broken pipe",
                       scope="access")), ("FAILED", "BrokenPipeError: [Errno 32] Broken pipe")),
        (rec("z", line("00:00.0", "warning", "connection failed", error="connection closed due to policy rejection: "
                       "allow policies exist, but none allowed", scope="access")),
         ("DENIED", "connection closed due to policy rejection: allow policies exist, but none allowed")),
        (rec("w", line("00:00.0", "info", "request complete", response_code="503", response_flags="UF",
                       scope="access")), ("FAILED", "HTTP 503 UF")),
        (rec("w", line("00:00.0", "info", "request complete", response_code="200", scope="access")), ("OK", "HTTP 200")),
    ],
    ids=["an inbound policy denial gives the policy", "the source side of a denial gives the 401",
         "a waypoint 403 gives the policy and detail", "an allowed connection gives its bytes and duration",
         "a broken connection is a failure, not a denial", "an early policy rejection is a denial",
         "an upstream failure at the waypoint gives the status and flags", "a served request is OK"],
)  # fmt: skip
def test_outcome_of_a_record(record: LogRecord, expected: tuple[str, str]) -> None:
    assert outcome(record) == expected


def test_render_shows_each_proxys_record_with_its_reason() -> None:
    lines = render_last_seen((OUT_DENIED, IN_DENIED))
    assert lines == [
        "last seen:    2026-12-07 15:40:01Z in the access logs, as each proxy logged it",
        "  15:40:01.300 ztunnel-node-1 (outbound): DENIED: HBONE tunnel to 10.0.0.2:8080 refused by the server with HTTP status 401",
        "  15:40:01.200 ztunnel-node-2 (inbound): DENIED: explicitly denied by: default/deny-bad",
    ]
    assert render_last_seen(()) == ["last seen:    no access-log record for this source and destination"]


def test_json_keeps_the_record_and_adds_the_outcome() -> None:
    (doc,) = last_seen_json((IN_DENIED,))
    expected: dict[str, Any] = {"source": "ztunnel-node-2", "event": "connection complete", "outcome": "DENIED",
                                "reason": "explicitly denied by: default/deny-bad"}  # fmt: skip
    assert {k: doc[k] for k in expected} == expected
    assert doc["fields"]["src.addr"] == "10.0.0.1:41000" and doc["time"].startswith("2026-12-07T15:40:01")


_FIELD_NAMES = st.sampled_from(["src.addr", "src.workload", "src.namespace", "src.identity", "dst.addr",
                                "dst.hbone_addr", "dst.service", "direction", "error", "response_code",
                                "response_flags", "policy", "detail", "scope"])  # fmt: skip


@given(st.sampled_from(["connection complete", "connection failed", "request complete", "other"]),
       st.dictionaries(_FIELD_NAMES, st.text(max_size=24) | st.sampled_from(["access", "10.0.0.1:5", "[::1]:80",
                                                                            "403", HOST, "10.0.0.2:8080"])))  # fmt: skip
def test_any_record_is_matched_and_read_without_failing(event: str, fields: dict[str, str]) -> None:
    record = LogRecord("z", "raw", None, "info", event, fields)
    assert about(record, QUERY) in (True, False)
    word, why = outcome(record)
    assert word in ("DENIED", "FAILED", "OK") and isinstance(why, str)
    assert last_seen([record], QUERY) == ()  # a record without a time is never the last one

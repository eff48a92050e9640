"""``logs``/``tap``: console log lines parsed back into fields, and the filters on them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ambientctl.troubleshoot.logs import (
    LogFile,
    component_files,
    concerns,
    denied,
    follow,
    parse_duration,
    parse_line,
    read,
    since,
    tap_row,
)

T0 = datetime(2026, 12, 7, 13, 19, 36, 38025, tzinfo=UTC)


def line(event: str, level: str = "info", at: datetime = T0, **fields: Any) -> str:
    """A line exactly as the components write it (structlog's console renderer, no colours)."""
    render = structlog.dev.ConsoleRenderer(colors=False)
    return render(None, level, {"event": event, "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "level": level, **fields})


DENIED_L4 = line("connection complete", "error", scope="access", **{
    "src.addr": "10.244.1.2:41234", "src.workload": "bad", "src.namespace": "shop",
    "src.identity": "spiffe://cluster.local/ns/shop/sa/bad", "dst.addr": "10.244.2.2:15008",
    "dst.service": "echo.shop.svc.cluster.local", "dst.workload": "server", "dst.namespace": "shop",
    "direction": "inbound", "bytes_sent": 0, "bytes_recv": 0, "duration": "1ms",
    "error": "connection closed due to policy rejection: explicitly denied by: shop/deny-bad"})  # fmt: skip
OK_L4 = line("connection complete", scope="access", **{
    "src.addr": "10.244.1.3:5000", "src.workload": "client", "src.namespace": "shop",
    "dst.service": "echo.shop.svc.cluster.local", "dst.workload": "server", "dst.namespace": "shop",
    "direction": "outbound", "bytes_sent": 78, "bytes_recv": 250, "duration": "4ms"})  # fmt: skip
WAYPOINT_403 = line("request complete", scope="access", method="POST", path="/", authority="echo.shop",
                    response_code=403, response_flags="-", detail="rbac_access_denied_matched_policy[shop/x]",
                    **{"src.workload": "client", "dst.service": "echo.shop.svc.cluster.local"})  # fmt: skip
NOT_ACCESS = line("pod handed to ztunnel", pod="shop/client", uid="ec89")


def test_a_real_access_line_is_read_back_field_by_field() -> None:
    r = parse_line(DENIED_L4, "ztunnel-node-2")
    assert (r.time, r.level, r.event, r.source) == (T0, "error", "connection complete", "ztunnel-node-2")
    assert r.fields["error"] == "connection closed due to policy rejection: explicitly denied by: shop/deny-bad"
    assert r.fields["src.identity"] == "spiffe://cluster.local/ns/shop/sa/bad"
    assert r.fields["bytes_sent"] == "0" and r.is_access


@pytest.mark.parametrize(
    ("text", "is_denied"),
    [(DENIED_L4, True), (OK_L4, False), (WAYPOINT_403, True), (NOT_ACCESS, False),
     (line("connection failed", "warning", scope="access", error="no route"), True),
     (line("request complete", scope="access", response_code=200), False)],
    ids=["an L4 policy rejection is a denial", "a completed connection is not", "a waypoint 403 is a denial",
         "a non-access line is never a denial", "a connection refused early is a denial", "a 200 is not"],
)  # fmt: skip
def test_denied(text: str, is_denied: bool) -> None:
    assert denied(parse_line(text)) is is_denied


@pytest.mark.parametrize(
    ("text", "pod", "service", "expected"),
    [
        (OK_L4, ("shop", "client"), None, True),
        (OK_L4, ("shop", "server"), None, True),
        (OK_L4, ("other", "client"), None, False),
        (NOT_ACCESS, ("shop", "client"), None, True),
        (OK_L4, None, "echo.shop", True),
        (OK_L4, None, "echo.other", False),
    ],
    ids=["the source pod", "the destination pod", "a same-named pod of another namespace is not",
         "a line whose subject is the pod", "the service by name.namespace", "another service"],
)
def test_concerns(text: str, pod: tuple[str, str] | None, service: str | None, expected: bool) -> None:
    assert concerns(parse_line(text), pod=pod, service=service) is expected


def test_since_keeps_newer_lines_and_lines_without_time() -> None:
    assert since(parse_line(OK_L4), T0 - timedelta(seconds=1))
    assert not since(parse_line(OK_L4), T0 + timedelta(seconds=1))
    assert since(parse_line("Traceback (most recent call last):"), T0 + timedelta(days=1))


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("1.5h", 5400), ("2d", 172800), ("500ms", 0.5)],
                         ids=["seconds", "minutes", "fractional hours", "days", "milliseconds"])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_a_bad_duration_shows_examples() -> None:
    with pytest.raises(ValueError, match="30s, 10m, 2h or 1d"):
        parse_duration("ten minutes")


@given(st.text(max_size=300))
def test_the_parser_never_fails_and_never_loses_the_text(text: str) -> None:
    record = parse_line(text)
    assert record.raw == text.rstrip("\n")


def test_files_merge_by_time_and_component_files_are_named_per_node(tmp_path: Path) -> None:
    (tmp_path / "ztunnel-node-1.log").write_text(line("a", at=T0) + "\n" + line("c", at=T0 + timedelta(seconds=2)) + "\n")
    (tmp_path / "ztunnel-node-2.log").write_text(line("b", at=T0 + timedelta(seconds=1)) + "\nno time here\n")
    files = component_files(tmp_path, "ztunnel", ["node-1", "node-2"], [])
    assert [f.source for f in files] == ["ztunnel-node-1", "ztunnel-node-2"]
    assert [r.event or r.raw for r in read(files, lambda r: True)] == ["a", "b", "no time here", "c"]
    assert [f.source for f in component_files(tmp_path, "node-agent", ["node-1", "node-2"], [], node="node-2")] == [
        "node-agent-node-2"
    ]
    assert [f.path.name for f in component_files(tmp_path, "waypoint", [], [("shop", "wp-1")])] == ["shop-wp-1.log"]


@pytest.mark.parametrize(
    ("component", "node", "message"),
    [("proxy", None, "use one of ztunnel, waypoint, istiod, node-agent"), ("ztunnel", "node-9", "not a node")],
    ids=["an unknown component lists the known ones", "an unknown node is named"],
)
def test_bad_selections_say_what_exists(component: str, node: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        component_files(Path("/nonexistent"), component, ["node-1"], [], node=node)


def test_follow_yields_lines_written_after_it_started(tmp_path: Path) -> None:
    path = tmp_path / "ztunnel-node-1.log"
    path.write_text(line("old") + "\n")
    files = [LogFile("ztunnel-node-1", path)]
    polls = 0

    def until() -> bool:
        nonlocal polls
        polls += 1
        if polls == 2:  # written between two polls, the second half of the line later
            with path.open("a") as f:
                f.write(line("new", scope="access") + "\n" + line("partial")[:10])
        return polls > 5

    got = list(follow(files, lambda r: True, until=until, poll=0))
    assert [r.event for r in got] == ["new"]


def test_tap_rows_show_who_what_and_the_outcome() -> None:
    assert tap_row(parse_line(DENIED_L4, "ztunnel-node-2"))[1:6] == [
        "ztunnel-node-2", "shop/bad", "echo.shop.svc.cluster.local", "spiffe://cluster.local/ns/shop/sa/bad",
        "denied: connection closed due to policy rejection: explicitly denied by: shop/deny-bad",
    ]
    row = tap_row(parse_line(WAYPOINT_403, "waypoint shop/wp"))
    assert row[3:6] == ["POST echo.shop/", "-", "403"]
    assert tap_row(parse_line(OK_L4))[5:8] == ["ok", "78/250", "4ms"]

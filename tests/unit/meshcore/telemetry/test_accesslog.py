"""Access log: ztunnel's key set, formatting, un-flipped byte counts, and the emitted structlog line."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from meshcore.identity import SpiffeId
from meshcore.telemetry import (
    Reporter,
    access_log_fields,
    build_connection_labels,
    early_deny_fields,
    format_addr,
    log_connection,
    log_early_deny,
)
from meshcore.testing.builders import service, workload

CLIENT = workload("client", "10.244.0.24", namespace="default", service_account="default")
ECHO = workload("echo", "10.244.0.42", namespace="default", service_account="echo")
ECHO_SVC = service("echo", "10.96.108.116")


def test_inbound_mtls_connection_has_ztunnels_keys() -> None:
    lbl = build_connection_labels(
        Reporter.DESTINATION,
        source=CLIENT,
        destination=ECHO,
        destination_service=ECHO_SVC,
        source_identity=SpiffeId("cluster.local", "default", "default"),
        mtls=True,
    )
    fields = access_log_fields(
        lbl,
        src_addr=("10.244.0.24", 46238),
        dst_addr=("10.244.0.42", 8080),
        hbone_addr=("10.244.0.42", 8080),
        src_workload="client-7d4f-abc",
        dst_workload="echo-5c9-xyz",
        request_bytes=67,
        response_bytes=490,
        duration=0.0134,
    )
    assert fields == {
        "src.addr": "10.244.0.24:46238",
        "src.workload": "client-7d4f-abc",
        "src.namespace": "default",
        "src.identity": "spiffe://cluster.local/ns/default/sa/default",
        "dst.addr": "10.244.0.42:8080",
        "dst.hbone_addr": "10.244.0.42:8080",
        "dst.service": "echo.default.svc.cluster.local",
        "dst.workload": "echo-5c9-xyz",
        "dst.namespace": "default",
        "dst.identity": "spiffe://cluster.local/ns/default/sa/echo",
        "direction": "inbound",
        "bytes_sent": 490,
        "bytes_recv": 67,
        "duration": "13ms",
    }


def test_outbound_reports_the_apps_own_byte_counts() -> None:
    lbl = build_connection_labels(
        Reporter.SOURCE,
        source=CLIENT,
        destination=ECHO,
        destination_service=ECHO_SVC,
        source_identity=SpiffeId("cluster.local", "default", "default"),
        mtls=True,
    )
    fields = access_log_fields(
        lbl,
        src_addr=("10.244.0.24", 46238),
        dst_addr=("10.244.0.42", 15008),
        hbone_addr="10.96.108.116:80",
        request_bytes=67,
        response_bytes=490,
        duration=0.0,
    )
    assert fields["direction"] == "outbound"
    assert (fields["bytes_sent"], fields["bytes_recv"]) == (67, 490)
    assert fields["dst.addr"] == "10.244.0.42:15008"
    assert fields["dst.hbone_addr"] == "10.96.108.116:80"
    # Without pod names, the canonical service stands in.
    assert (fields["src.workload"], fields["dst.workload"]) == ("client", "echo")


def test_plaintext_connection_omits_identities_and_unknowns() -> None:
    lbl = build_connection_labels(
        Reporter.DESTINATION,
        source=None,
        destination=ECHO,
        destination_service=None,
        source_identity=None,
        mtls=False,
    )
    fields = access_log_fields(
        lbl,
        src_addr="10.0.0.9:5000",
        dst_addr=("10.244.0.42", 8080),
        request_bytes=0,
        response_bytes=0,
        duration=0.2,
        error="connection closed due to policy rejection: allow policies exist, but none allowed",
    )
    assert set(fields) == {
        "src.addr",
        "dst.addr",
        "dst.workload",
        "dst.namespace",
        "direction",
        "bytes_sent",
        "bytes_recv",
        "duration",
        "error",
    }
    assert fields["duration"] == "200ms"


@pytest.mark.parametrize(
    ("addr", "text"),
    [(("10.0.0.1", 80), "10.0.0.1:80"), (("fd00::1", 15008), "[fd00::1]:15008"), ("host:1", "host:1")],
    ids=["IPv4 is ip:port", "IPv6 is bracketed", "a string is kept as given"],
)
def test_addresses_are_formatted_like_socket_addresses(addr: str | tuple[str, int], text: str) -> None:
    assert format_addr(addr) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.0129, "12ms"), (2.5, "2500ms"), (-0.001, "0ms")],
    ids=["zero", "milliseconds are truncated", "seconds become milliseconds", "a clock step back is 0ms"],
)
def test_duration_is_whole_milliseconds(seconds: float, text: str) -> None:
    lbl = build_connection_labels(
        Reporter.SOURCE,
        source=None,
        destination=None,
        destination_service=None,
        source_identity=None,
        mtls=False,
    )
    fields = access_log_fields(
        lbl, src_addr="a:1", dst_addr="b:2", request_bytes=0, response_bytes=0, duration=seconds
    )
    assert fields["duration"] == text


def test_success_logs_connection_complete_at_info() -> None:
    with capture_logs() as logs:
        log_connection(structlog.get_logger(), {"src.addr": "a:1", "direction": "inbound"})
    assert logs == [
        {
            "event": "connection complete",
            "log_level": "info",
            "scope": "access",
            "src.addr": "a:1",
            "direction": "inbound",
        },
    ]


def test_failure_logs_connection_complete_at_error_with_the_error() -> None:
    with capture_logs() as logs:
        log_connection(structlog.get_logger(), {"src.addr": "a:1", "error": "boom"})
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        ("connection complete", "error", "boom")
    ]


def test_early_deny_logs_connection_failed_at_warning() -> None:
    fields = early_deny_fields(
        src_addr=("10.0.0.1", 1),
        dst_addr=("10.0.0.2", 15008),
        reporter=Reporter.DESTINATION,
        error="tls handshake failed",
    )
    with capture_logs() as logs:
        log_early_deny(structlog.get_logger(), fields)
    assert logs == [
        {
            "event": "connection failed",
            "log_level": "warning",
            "scope": "access",
            "src.addr": "10.0.0.1:1",
            "dst.addr": "10.0.0.2:15008",
            "direction": "inbound",
            "error": "tls handshake failed",
        },
    ]

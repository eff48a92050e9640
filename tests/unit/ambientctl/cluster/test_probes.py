"""readinessProbe: parsing with Kubernetes' defaults, thresholds, and real checks on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ambientctl.cluster import podstatus
from ambientctl.cluster.errors import InvalidClusterSpec
from ambientctl.cluster.podstatus import ContainerTrack
from ambientctl.cluster.probes import Probe, parse_probe, run_probe

PORTS = [{"name": "http", "containerPort": 9080}]


def container(probe: Any) -> dict[str, Any]:
    return {"name": "c", "ports": PORTS, "readinessProbe": probe}


PARSED = [
    (
        "an httpGet probe gets Kubernetes' defaults",
        {"httpGet": {"path": "/health", "port": 8080}},
        Probe(kind="httpGet", port=8080, path="/health"),
    ),
    (
        "a named port resolves to its containerPort",
        {"tcpSocket": {"port": "http"}},
        Probe(kind="tcpSocket", port=9080),
    ),
    (
        "timings and thresholds are read",
        {"exec": {"command": ["true"]}, "periodSeconds": 2, "failureThreshold": 1, "initialDelaySeconds": 3},
        Probe(kind="exec", command=("true",), period=2.0, failure_threshold=1, initial_delay=3.0),
    ),
]


@pytest.mark.parametrize(("raw", "want"), [p[1:] for p in PARSED], ids=[p[0] for p in PARSED])
def test_parse_probe(raw: dict[str, Any], want: Probe) -> None:
    assert parse_probe(container(raw), "pod a/b") == want


def test_no_probe_is_none() -> None:
    assert parse_probe({"name": "c"}, "pod a/b") is None


REFUSED = [
    ("two handlers are refused", {"httpGet": {"port": 1}, "tcpSocket": {"port": 1}}, "exactly one of"),
    ("a grpc probe is refused with the reason", {"grpc": {"port": 1}}, "grpc probes are not supported"),
    (
        "an unknown port name is refused",
        {"tcpSocket": {"port": "admin"}},
        "no containerPort is named 'admin'",
    ),
    ("an HTTPS probe is refused", {"httpGet": {"port": 1, "scheme": "HTTPS"}}, "only HTTP"),
    ("a zero period is refused", {"tcpSocket": {"port": 1}, "periodSeconds": 0}, "periodSeconds: must be"),
    ("an exec probe without a command is refused", {"exec": {}}, "exec.command"),
]


@pytest.mark.parametrize(("raw", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_bad_probes_are_refused_naming_the_field(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidClusterSpec, match=words):
        parse_probe(container(raw), "pod a/b")


def test_readiness_follows_the_thresholds() -> None:
    track = podstatus.started(ContainerTrack(name="c"), 0.0, "t", probed=True)
    assert not podstatus.is_ready(track)  # not ready until the probe passed
    track = podstatus.probed(track, True, 2, 3)
    assert not podstatus.is_ready(track)
    track = podstatus.probed(track, True, 2, 3)
    assert podstatus.is_ready(track)
    for _ in range(2):
        track = podstatus.probed(track, False, 2, 3)
        assert podstatus.is_ready(track)  # two failures are tolerated
    track = podstatus.probed(track, False, 2, 3)
    assert not podstatus.is_ready(track)
    status = podstatus.pod_status([track], {}, pod_ip="10.0.0.1", host_ip="h", start_time="t")
    assert status["containerStatuses"][0]["ready"] is False and status["phase"] == "Running"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def no_exec(_argv: Sequence[str], _timeout: float) -> int:
    raise AssertionError("not an exec probe")


SELF = "/proc/self/ns/net"


def test_http_and_tcp_checks_pass_and_fail_as_kubernetes_judges_them(server: int) -> None:
    assert run_probe(Probe(kind="httpGet", port=server, path="/ok"), SELF, no_exec)
    assert not run_probe(Probe(kind="httpGet", port=server, path="/broken"), SELF, no_exec)
    assert run_probe(Probe(kind="tcpSocket", port=server), SELF, no_exec)
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = closed.server_address[1]
    closed.server_close()
    assert not run_probe(Probe(kind="tcpSocket", port=port), SELF, no_exec)


def test_an_exec_check_passes_on_exit_zero() -> None:
    assert run_probe(Probe(kind="exec", command=("true",)), SELF, lambda argv, t: 0)
    assert not run_probe(Probe(kind="exec", command=("false",)), SELF, lambda argv, t: 1)

"""Istio's HTTP request metrics: names, labels and values as Prometheus exposes them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from meshcore.identity import SpiffeId
from meshcore.telemetry import Reporter, build_connection_labels
from meshcore.telemetry.http import HttpMetrics
from meshcore.testing import builders


def _labels():
    return build_connection_labels(
        Reporter.WAYPOINT,
        source=builders.workload("sleep", "10.0.0.1"),
        destination=builders.workload("echo", "10.0.0.2"),
        destination_service=builders.service("echo", "10.96.0.1"),
        source_identity=SpiffeId("cluster.local", "default", "sleep"),
        mtls=True,
    )


def test_a_request_is_counted_with_istio_names_and_labels():
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)
    metrics.observe(_labels(), response_code=403, grpc_status=None, response_flags="-", request_bytes=0,
                    response_bytes=19, duration_s=0.002)
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith("istio_requests_total{"))
    assert 'reporter="waypoint"' in line and 'response_code="403"' in line
    assert 'request_protocol="http"' in line and 'response_flags="-"' in line
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/sleep"' in line
    assert 'destination_service="echo.default.svc.cluster.local"' in line
    assert 'connection_security_policy="mutual_tls"' in line
    assert line.endswith(" 1.0")
    assert 'istio_request_duration_milliseconds_bucket{' in text and 'le="5.0"' in text
    assert 'istio_response_bytes_sum{' in text


def test_a_grpc_call_is_labelled_grpc_with_its_status():
    registry = CollectorRegistry()
    HttpMetrics(registry).observe(_labels(), response_code=200, grpc_status="14", response_flags="",
                                  request_bytes=5, response_bytes=0, duration_s=0.01)
    line = next(x for x in generate_latest(registry).decode().splitlines() if x.startswith("istio_requests_total{"))
    assert 'request_protocol="grpc"' in line and 'grpc_response_status="14"' in line and 'response_flags="-"' in line

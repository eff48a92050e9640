"""Istio's HTTP request metrics: ``istio_requests_total``, ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes``, with Istio's standard labels.

Labels are the TCP set (``ConnectionLabels``: reporter, source/destination workload, principals, service,
``request_protocol``, ``response_flags``, ``connection_security_policy``) plus ``response_code`` and
``grpc_response_status``, as Istio's telemetry exports them; ``request_protocol`` is ``http`` or
``grpc``. Durations are milliseconds in Istio's default buckets; byte sizes in its size buckets.
One ``observe`` per finished request; label values are resolved there, nothing else on the hot path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from meshcore.telemetry.metrics import LABEL_NAMES, ConnectionLabels

REQUEST_LABELS: tuple[str, ...] = (*LABEL_NAMES, "response_code", "grpc_response_status")
# Istio's default buckets for istio_request_duration_milliseconds.
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                       1800000, 3600000)
# Istio's buckets for istio_request_bytes / istio_response_bytes (1 byte to 1 GB, powers of ten).
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)


class HttpMetrics:
    """The request metrics of one proxy process, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("istio_requests_total", "Total requests handled", REQUEST_LABELS, registry=registry)
        self.duration = Histogram(
            "istio_request_duration_milliseconds", "Request duration in milliseconds", REQUEST_LABELS,
            buckets=DURATION_BUCKETS_MS, registry=registry,
        )
        self.request_bytes = Histogram(
            "istio_request_bytes", "Request body sizes in bytes", REQUEST_LABELS, buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.response_bytes = Histogram(
            "istio_response_bytes", "Response body sizes in bytes", REQUEST_LABELS, buckets=SIZE_BUCKETS,
            registry=registry,
        )

    def observe(
        self,
        labels: ConnectionLabels,
        *,
        response_code: int,
        grpc_status: str | None,
        response_flags: str,
        request_bytes: int,
        response_bytes: int,
        duration_s: float,
    ) -> None:
        """Count one finished request."""
        protocol = "grpc" if grpc_status is not None else "http"
        values = (
            *labels._replace(request_protocol=protocol, response_flags=response_flags or "-"),
            str(response_code),
            grpc_status if grpc_status is not None else "",
        )
        self.requests.labels(*values).inc()
        self.duration.labels(*values).observe(max(0.0, duration_s * 1000.0))
        self.request_bytes.labels(*values).observe(request_bytes)
        self.response_bytes.labels(*values).observe(response_bytes)

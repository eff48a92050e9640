"""Istio's HTTP request metrics: ``istio_requests_total``, ``istio_request_duration_milliseconds``,
``istio_request_bytes`` and ``istio_response_bytes``, with Istio's standard labels.

Labels are the TCP set (``ConnectionLabels``: reporter, source/destination workload, principals, service,
``request_protocol``, ``response_flags``, ``connection_security_policy``) plus ``response_code`` and
``grpc_response_status``, as Istio's telemetry exports them; ``request_protocol`` is ``http`` or
``grpc``. Durations are milliseconds in Istio's default buckets; byte sizes in its size buckets.
One ``observe`` per finished request; the four metric children of a label set are resolved once and
cached (label sets repeat: the same source, destination and status over and over), bounded in size.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from meshcore.telemetry.metrics import LABEL_NAMES, ConnectionLabels

REQUEST_LABELS: tuple[str, ...] = (*LABEL_NAMES, "response_code", "grpc_response_status")
# Istio's default buckets for istio_request_duration_milliseconds.
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                       1800000, 3600000)
# Istio's buckets for istio_request_bytes / istio_response_bytes (1 byte to 1 GB, powers of ten).
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)


_CHILD_CACHE_LIMIT = 4096  # label sets remembered; past it the cache starts over (series stay registered)


class HttpMetrics:
    """The request metrics of one proxy process, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._children: dict[tuple[str, ...], tuple[Any, Any, Any, Any]] = {}
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
        children = self._children.get(values)
        if children is None:
            if len(self._children) >= _CHILD_CACHE_LIMIT:
                self._children.clear()
            children = self._children[values] = (
                self.requests.labels(*values), self.duration.labels(*values),
                self.request_bytes.labels(*values), self.response_bytes.labels(*values),
            )
        requests, duration, req_bytes, resp_bytes = children
        requests.inc()
        duration.observe(max(0.0, duration_s * 1000.0))
        req_bytes.observe(request_bytes)
        resp_bytes.observe(response_bytes)

"""Istio's TCP metrics (``istio_tcp_*``) with ztunnel's ``CommonTrafficLabels``, on prometheus_client.

Labels are resolved ONCE per connection: ``build_connection_labels`` (pure) turns workloads, service
and identities into a ``ConnectionLabels`` tuple, and ``TcpMetrics.bind`` looks up the child counters
for it. The relay then only calls ``add_sent``/``add_received`` on the bound object: no dict building,
no label lookup per chunk. Every label is always present and a missing value is ``"unknown"``
(ztunnel's ``DefaultedUnknown``). Byte direction follows Istio, whatever the reporter:
``received`` = downstream -> upstream (request bytes), ``sent`` = upstream -> downstream (response).
No module-level registry: the composition root passes a ``CollectorRegistry`` in.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter

from meshcore.identity import SpiffeId
from meshcore.model.service import Service
from meshcore.model.workload import Workload

UNKNOWN = "unknown"


class Reporter(enum.StrEnum):
    """Which proxy reports: ztunnel outbound (source), ztunnel inbound (destination), or a waypoint."""

    SOURCE = "source"
    DESTINATION = "destination"
    WAYPOINT = "waypoint"


class ResponseFlags(enum.StrEnum):
    """ztunnel's ``response_flags`` values; every value but ``NONE`` counts as a failed connection."""

    NONE = "-"
    DENY = "DENY"  # refused by authorization policy
    CONNECT = "CONNECT"  # the upstream connection could not be established
    TLS_FAILURE = "TLS_FAILURE"
    H2_HANDSHAKE_FAILURE = "H2_HANDSHAKE_FAILURE"
    NETWORK_POLICY = "NETWORK_POLICY"
    IDENTITY_ERROR = "IDENTITY_ERROR"
    CERT_REVOKED = "CERT_REVOKED"


class SecurityPolicy(enum.StrEnum):
    MUTUAL_TLS = "mutual_tls"
    UNKNOWN = "unknown"


class ConnectionLabels(NamedTuple):
    """Istio's standard TCP label set, in ztunnel's order. A tuple so it can be passed to
    prometheus_client positionally; build it with ``build_connection_labels``."""

    reporter: str
    source_workload: str
    source_canonical_service: str
    source_canonical_revision: str
    source_workload_namespace: str
    source_principal: str
    source_app: str
    source_version: str
    source_cluster: str
    destination_service: str
    destination_service_namespace: str
    destination_service_name: str
    destination_workload: str
    destination_canonical_service: str
    destination_canonical_revision: str
    destination_workload_namespace: str
    destination_principal: str
    destination_app: str
    destination_version: str
    destination_cluster: str
    request_protocol: str
    response_flags: str
    connection_security_policy: str


LABEL_NAMES: tuple[str, ...] = ConnectionLabels._fields


def _or_unknown(value: str) -> str:
    return value if value else UNKNOWN


def _workload_principal(w: Workload) -> str:
    # Formatted, not SpiffeId-constructed: a label must never raise on odd xDS data.
    return f"spiffe://{w.trust_domain}/ns/{w.namespace}/sa/{w.service_account}"


def build_connection_labels(
    reporter: Reporter,
    *,
    source: Workload | None,
    destination: Workload | None,
    destination_service: Service | None,
    source_identity: SpiffeId | None,
    destination_identity: SpiffeId | None = None,
    mtls: bool,
) -> ConnectionLabels:
    """The label values for one connection.

    ``source_principal`` comes only from ``source_identity`` (the verified peer certificate inbound,
    our own workload's identity outbound), never from the source workload, as in ztunnel.
    ``destination_principal`` is ``destination_identity`` when given, else the destination workload's.
    ``source_app``/``destination_app`` are the canonical service and ``*_version`` the canonical revision.
    """
    s_name = s_svc = s_rev = s_ns = s_cluster = UNKNOWN
    if source is not None:
        s_name = _or_unknown(source.workload_name)
        s_svc = _or_unknown(source.canonical_name)
        s_rev = _or_unknown(source.canonical_revision)
        s_ns = _or_unknown(source.namespace)
        s_cluster = _or_unknown(source.cluster_id)
    d_name = d_svc = d_rev = d_ns = d_cluster = d_principal = UNKNOWN
    if destination is not None:
        d_name = _or_unknown(destination.workload_name)
        d_svc = _or_unknown(destination.canonical_name)
        d_rev = _or_unknown(destination.canonical_revision)
        d_ns = _or_unknown(destination.namespace)
        d_cluster = _or_unknown(destination.cluster_id)
        d_principal = _workload_principal(destination)
    if destination_identity is not None:
        d_principal = str(destination_identity)
    svc_host = svc_ns = svc_name = UNKNOWN
    if destination_service is not None:
        svc_host = _or_unknown(destination_service.hostname)
        svc_ns = _or_unknown(destination_service.namespace)
        svc_name = _or_unknown(destination_service.name)
    return ConnectionLabels(
        reporter=reporter.value,
        source_workload=s_name,
        source_canonical_service=s_svc,
        source_canonical_revision=s_rev,
        source_workload_namespace=s_ns,
        source_principal=str(source_identity) if source_identity is not None else UNKNOWN,
        source_app=s_svc,
        source_version=s_rev,
        source_cluster=s_cluster,
        destination_service=svc_host,
        destination_service_namespace=svc_ns,
        destination_service_name=svc_name,
        destination_workload=d_name,
        destination_canonical_service=d_svc,
        destination_canonical_revision=d_rev,
        destination_workload_namespace=d_ns,
        destination_principal=d_principal,
        destination_app=d_svc,
        destination_version=d_rev,
        destination_cluster=d_cluster,
        request_protocol="tcp",
        response_flags=ResponseFlags.NONE.value,
        connection_security_policy=(SecurityPolicy.MUTUAL_TLS if mtls else SecurityPolicy.UNKNOWN).value,
    )


class TcpMetrics:
    """The TCP counters of one proxy process, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = LABEL_NAMES) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        # prometheus_client appends ``_total`` to counter names on exposition.
        self.opened = counter("istio_tcp_connections_opened", "The total number of TCP connections opened")
        self.closed = counter("istio_tcp_connections_closed", "The total number of TCP connections closed")
        self.received_bytes = counter(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
        )
        self.sent_bytes = counter(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
        )
        self.failed = counter(
            "istio_tcp_connections_failed",
            "The total number of TCP connections that closed with a failure response flag (unstable)",
        )
        self.failures = counter(
            "ztunnel_connection_failures",
            "Connections that failed before or while being proxied, by reason",
            ("reason",),
        )

    def bind(self, labels: ConnectionLabels) -> BoundTcpMetrics:
        """Resolve the child counters for one connection's labels (once per connection)."""
        return BoundTcpMetrics(self, labels)

    def connection_failed(self, reason: str) -> None:
        """Count a failure that has no full label set (e.g. an early deny). Keep ``reason`` to a
        fixed vocabulary: every distinct value is a new time series."""
        self.failures.labels(reason).inc()


class BoundTcpMetrics:
    """The counters of one connection. Also keeps the connection's own byte totals for the access log.

    ``closed`` is idempotent so error paths and ``finally`` blocks can both call it safely.
    """

    __slots__ = ("labels", "received", "sent", "_metrics", "_opened", "_received", "_sent", "_closed")

    def __init__(self, metrics: TcpMetrics, labels: ConnectionLabels) -> None:
        self.labels = labels
        # Bytes of this connection: downstream -> upstream (request) and upstream -> downstream (response).
        self.received = 0
        self.sent = 0
        self._metrics = metrics
        self._opened = metrics.opened.labels(*labels)
        self._received = metrics.received_bytes.labels(*labels)
        self._sent = metrics.sent_bytes.labels(*labels)
        self._closed = False

    def opened(self) -> None:
        self._opened.inc()

    def add_received(self, n: int) -> None:
        """Count ``n`` bytes moved downstream -> upstream (the request direction)."""
        self.received += n
        self._received.inc(n)

    def add_sent(self, n: int) -> None:
        """Count ``n`` bytes moved upstream -> downstream (the response direction)."""
        self.sent += n
        self._sent.inc(n)

    @property
    def is_closed(self) -> bool:
        return self._closed

    def closed(self, flags: ResponseFlags = ResponseFlags.NONE) -> None:
        """Count the close, labelled with ``flags``; a failure flag also counts a failed connection."""
        if self._closed:
            return
        self._closed = True
        labels = (
            self.labels if flags is ResponseFlags.NONE else self.labels._replace(response_flags=flags.value)
        )
        self._metrics.closed.labels(*labels).inc()
        if flags is not ResponseFlags.NONE:
            self._metrics.failed.labels(*labels).inc()

"""TCP metrics: label tables (unknowns, reporter, mTLS) and counters on a real CollectorRegistry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meshcore.identity import SpiffeId
from meshcore.model import Service, Workload
from meshcore.telemetry import (
    LABEL_NAMES,
    ConnectionLabels,
    Reporter,
    ResponseFlags,
    TcpMetrics,
    build_connection_labels,
)
from meshcore.testing.builders import service, workload

ISTIO_LABELS = (
    "reporter source_workload source_canonical_service source_canonical_revision source_workload_namespace "
    "source_principal source_app source_version source_cluster destination_service "
    "destination_service_namespace destination_service_name destination_workload "
    "destination_canonical_service destination_canonical_revision destination_workload_namespace "
    "destination_principal destination_app destination_version destination_cluster request_protocol "
    "response_flags connection_security_policy"
).split()

CLIENT = workload("client", "10.0.0.1", namespace="shop", canonical_revision="v1")
SERVER = workload(
    "server",
    "10.0.1.1",
    namespace="shop",
    service_account="server-sa",
    canonical_revision="v2",
    cluster_id="east",
)
BARE = Workload(uid="u", name="pod-x", namespace="ns")
SVC = service("server", "10.96.0.10", namespace="shop")
CLIENT_ID = SpiffeId("cluster.local", "shop", "client")


def labels(
    reporter: Reporter = Reporter.DESTINATION,
    *,
    source: Workload | None = None,
    destination: Workload | None = None,
    svc: Service | None = None,
    src_id: SpiffeId | None = None,
    dst_id: SpiffeId | None = None,
    mtls: bool = False,
) -> dict[str, str]:
    return build_connection_labels(
        reporter,
        source=source,
        destination=destination,
        destination_service=svc,
        source_identity=src_id,
        destination_identity=dst_id,
        mtls=mtls,
    )._asdict()


def test_label_names_are_istios_standard_set_in_order() -> None:
    assert list(LABEL_NAMES) == ISTIO_LABELS


def test_nothing_known_means_unknown_everywhere_but_protocol_and_flags() -> None:
    got = labels(Reporter.SOURCE)
    assert got.pop("reporter") == "source"
    assert got.pop("request_protocol") == "tcp"
    assert got.pop("response_flags") == "-"
    assert got.pop("connection_security_policy") == "unknown"
    assert set(got.values()) == {"unknown"}


LABEL_CASES = [
    pytest.param(
        dict(source=CLIENT),
        {
            "source_workload": "client",
            "source_canonical_service": "client",
            "source_canonical_revision": "v1",
            "source_workload_namespace": "shop",
            "source_app": "client",
            "source_version": "v1",
            "source_cluster": "Kubernetes",
            "source_principal": "unknown",
        },
        id="a source workload fills every source label but the principal",
    ),
    pytest.param(
        dict(source=BARE),
        {
            "source_workload": "unknown",
            "source_canonical_service": "unknown",
            "source_app": "unknown",
            "source_canonical_revision": "unknown",
            "source_version": "unknown",
            "source_workload_namespace": "ns",
        },
        id="empty workload fields are written as unknown",
    ),
    pytest.param(
        dict(source=CLIENT, src_id=SpiffeId("td", "other", "sa")),
        {
            "source_principal": "spiffe://td/ns/other/sa/sa",
            "source_workload_namespace": "shop",
        },
        id="the source principal comes from the peer identity, not the workload",
    ),
    pytest.param(
        dict(destination=SERVER),
        {
            "destination_workload": "server",
            "destination_canonical_service": "server",
            "destination_canonical_revision": "v2",
            "destination_workload_namespace": "shop",
            "destination_app": "server",
            "destination_version": "v2",
            "destination_cluster": "east",
            "destination_principal": "spiffe://cluster.local/ns/shop/sa/server-sa",
        },
        id="a destination workload fills every destination label including its principal",
    ),
    pytest.param(
        dict(destination=SERVER, dst_id=SpiffeId("cluster.local", "shop", "waypoint")),
        {
            "destination_principal": "spiffe://cluster.local/ns/shop/sa/waypoint",
            "destination_workload": "server",
        },
        id="an explicit destination identity wins over the workload's",
    ),
    pytest.param(
        dict(svc=SVC),
        {
            "destination_service": "server.shop.svc.cluster.local",
            "destination_service_name": "server",
            "destination_service_namespace": "shop",
            "destination_workload": "unknown",
        },
        id="a destination service fills the three service labels only",
    ),
    pytest.param(
        dict(mtls=True),
        {"connection_security_policy": "mutual_tls", "reporter": "destination"},
        id="mTLS connections are labelled mutual_tls",
    ),
    pytest.param(
        dict(reporter=Reporter.WAYPOINT),
        {"reporter": "waypoint", "connection_security_policy": "unknown"},
        id="a waypoint reports as waypoint",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), LABEL_CASES)
def test_connection_labels(kwargs: dict[str, object], expected: dict[str, str]) -> None:
    got = labels(**kwargs)  # type: ignore[arg-type]
    assert {k: got[k] for k in expected} == expected


def _bound_labels() -> ConnectionLabels:
    return build_connection_labels(
        Reporter.DESTINATION,
        source=CLIENT,
        destination=SERVER,
        destination_service=SVC,
        source_identity=CLIENT_ID,
        mtls=True,
    )


def test_bound_counters_count_and_render_with_istio_names() -> None:
    registry = CollectorRegistry()
    metrics = TcpMetrics(registry)
    lbl = _bound_labels()
    bound = metrics.bind(lbl)
    bound.opened()
    bound.add_received(100)
    bound.add_received(20)
    bound.add_sent(7)
    bound.closed()
    series = lbl._asdict()
    assert registry.get_sample_value("istio_tcp_connections_opened_total", series) == 1
    assert registry.get_sample_value("istio_tcp_received_bytes_total", series) == 120
    assert registry.get_sample_value("istio_tcp_sent_bytes_total", series) == 7
    assert registry.get_sample_value("istio_tcp_connections_closed_total", series) == 1
    assert registry.get_sample_value("istio_tcp_connections_failed_total", series) is None
    assert (bound.received, bound.sent) == (120, 7)
    text = generate_latest(registry).decode()
    for name in (
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ):
        assert f"{name}{{" in text
    assert 'source_principal="spiffe://cluster.local/ns/shop/sa/client"' in text
    assert 'connection_security_policy="mutual_tls"' in text


def test_connections_with_equal_labels_share_one_series() -> None:
    registry = CollectorRegistry()
    metrics = TcpMetrics(registry)
    for _ in range(3):
        bound = metrics.bind(_bound_labels())
        bound.opened()
        bound.closed()
    assert registry.get_sample_value("istio_tcp_connections_opened_total", _bound_labels()._asdict()) == 3


def test_a_failure_flag_labels_the_close_and_counts_a_failed_connection() -> None:
    registry = CollectorRegistry()
    bound = TcpMetrics(registry).bind(_bound_labels())
    bound.opened()
    bound.closed(ResponseFlags.DENY)
    denied = _bound_labels()._replace(response_flags="DENY")._asdict()
    assert registry.get_sample_value("istio_tcp_connections_closed_total", denied) == 1
    assert registry.get_sample_value("istio_tcp_connections_failed_total", denied) == 1
    # Opened and byte counters keep the "-" flag, as ztunnel does.
    assert registry.get_sample_value("istio_tcp_connections_opened_total", _bound_labels()._asdict()) == 1


def test_closing_twice_counts_once() -> None:
    registry = CollectorRegistry()
    bound = TcpMetrics(registry).bind(_bound_labels())
    bound.closed(ResponseFlags.CONNECT)
    bound.closed()
    assert bound.is_closed
    connect = _bound_labels()._replace(response_flags="CONNECT")._asdict()
    assert registry.get_sample_value("istio_tcp_connections_closed_total", connect) == 1
    assert registry.get_sample_value("istio_tcp_connections_closed_total", _bound_labels()._asdict()) is None


def test_generic_failures_are_counted_by_reason() -> None:
    registry = CollectorRegistry()
    metrics = TcpMetrics(registry)
    metrics.connection_failed("no_workload")
    metrics.connection_failed("no_workload")
    assert registry.get_sample_value("ztunnel_connection_failures_total", {"reason": "no_workload"}) == 2
    assert 'ztunnel_connection_failures_total{reason="no_workload"} 2.0' in generate_latest(registry).decode()


def test_two_proxies_can_register_on_separate_registries() -> None:
    TcpMetrics(CollectorRegistry())
    TcpMetrics(CollectorRegistry())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        shared = CollectorRegistry()
        TcpMetrics(shared)
        TcpMetrics(shared)

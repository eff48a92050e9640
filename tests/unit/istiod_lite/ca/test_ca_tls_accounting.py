"""TlsAccounting: handshakes counted as gRPC starts them, verified connections once per peer, memory bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from istiod_lite.ca.service import TlsAccounting


def counts(registry: CollectorRegistry) -> tuple[float, float]:
    return (
        registry.get_sample_value("istiod_lite_grpc_tls_handshakes_total") or 0.0,
        registry.get_sample_value("istiod_lite_grpc_tls_connections_verified_total") or 0.0,
    )


def test_each_handshake_counts_and_each_connection_counts_once_however_many_calls_it_carries() -> None:
    registry = CollectorRegistry()
    accounting = TlsAccounting(registry)
    for _ in range(3):
        accounting.handshake_started()
    for peer in ["ipv4:127.0.0.1:1000", "ipv4:127.0.0.1:1000", "ipv4:127.0.0.1:1001"]:
        accounting.call_seen(peer)
    assert counts(registry) == (3, 2)  # one handshake never reached a call: refused (or still running)


def test_remembered_peers_are_bounded_and_the_oldest_is_forgotten_first() -> None:
    registry = CollectorRegistry()
    accounting = TlsAccounting(registry, max_peers=2)
    for peer in ["a", "b", "a", "c"]:  # "a" was seen again, so "b" is the oldest when "c" arrives
        accounting.call_seen(peer)
    accounting.call_seen("a")
    assert counts(registry)[1] == 3
    accounting.call_seen("b")
    assert counts(registry)[1] == 4

"""ztunnel's own metrics next to Istio's ``istio_tcp_*`` (which live in ``meshcore.telemetry``).

``ZtunnelCollector`` reads, at scrape time, the plain counters the data path keeps anyway (HBONE server
counters, pool stats, proxies, policy closes), so nothing on the hot path touches Prometheus. Families:
``ztunnel_inbound_hbone_failures_total{reason}`` (TLS handshake, untrusted peer, HTTP/2 protocol error,
bad request, handler error, abusive peer (GOAWAY ENHANCE_YOUR_CALM: rapid reset, CONTINUATION or control
frame flood), too many pending tunnels, reset before answer), ``ztunnel_pool_handshakes_total``, ``ztunnel_pool_dial_failures_total``,
``ztunnel_pool_connections``, ``ztunnel_pool_streams``, ``ztunnel_workload_proxies{state}``,
``ztunnel_policy_closed_connections_total``, ``istio_tcp_connections_open{direction}`` and ``istio_build``.
Per-connection failures by reason are ``ztunnel_connection_failures_total`` (``TcpMetrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshcore.aio.hbone_server import HboneServerCounters
from meshcore.aio.pool import PoolStats

BUILD_TAG = "0.1.0"


class ZtunnelCollector(Collector):
    """Exports ztunnel's internal counters at scrape time (see the module docstring)."""

    def __init__(
        self,
        *,
        hbone: HboneServerCounters,
        pool: Callable[[], PoolStats],
        proxies: Callable[[], Mapping[str, int]],
        policy_closes: Callable[[], int],
        open_connections: Callable[[], Mapping[str, int]],
    ) -> None:
        self._hbone = hbone
        self._pool = pool
        self._proxies = proxies
        self._policy_closes = policy_closes
        self._open = open_connections

    def collect(self) -> Iterator[Metric]:
        h = self._hbone
        failures = CounterMetricFamily(
            "ztunnel_inbound_hbone_failures",
            "Inbound HBONE connections or requests refused before reaching a tunnel handler, by reason",
            labels=["reason"],
        )
        for reason, value in (
            ("tls_handshake", h.handshake_failures),
            ("listener_limit", h.connections_refused),
            ("handshake_evicted", h.handshakes_evicted),
            ("untrusted_peer", h.untrusted_peers),
            ("h2_protocol", h.connection_errors),
            ("bad_request", h.tunnels_refused),
            ("handler_error", h.handler_errors),
            ("abusive_peer", h.abusive_connections),
            ("too_many_pending", h.tunnels_over_limit),
            ("reset_before_answer", h.tunnels_cancelled),
        ):
            failures.add_metric([reason], value)
        yield failures
        yield CounterMetricFamily(
            "ztunnel_inbound_hbone_connections", "Inbound TCP connections accepted on HBONE listeners",
            value=h.connections_accepted,
        )
        stats = self._pool()
        yield CounterMetricFamily(
            "ztunnel_pool_handshakes", "HBONE connections dialled by the pool (each one TLS handshake)",
            value=stats.handshakes,
        )
        yield CounterMetricFamily(
            "ztunnel_pool_dial_failures", "HBONE dials that failed (unreachable, handshake, identity)",
            value=stats.dial_failures,
        )
        yield GaugeMetricFamily("ztunnel_pool_connections", "Pooled HBONE connections", value=stats.connections)
        yield GaugeMetricFamily("ztunnel_pool_streams", "Tunnels open on pooled connections", value=stats.streams)
        proxies = GaugeMetricFamily("ztunnel_workload_proxies", "Local workload proxies by state", labels=["state"])
        for state, count in sorted(self._proxies().items()):
            proxies.add_metric([state], count)
        yield proxies
        yield CounterMetricFamily(
            "ztunnel_policy_closed_connections",
            "Live connections closed because a policy change no longer allows them",
            value=self._policy_closes(),
        )
        open_conns = GaugeMetricFamily(
            "istio_tcp_connections_open", "Connections being proxied now", labels=["direction"]
        )
        for direction, count in sorted(self._open().items()):
            open_conns.add_metric([direction], count)
        yield open_conns
        build = GaugeMetricFamily("istio_build", "ztunnel build information", labels=["component", "tag"])
        build.add_metric(["ztunnel", BUILD_TAG], 1)
        yield build

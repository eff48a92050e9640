"""``stat``/``graph`` from metric samples: edges counted once, rates from two scrapes, success rates,
denials, and latency quantiles as Prometheus' histogram_quantile computes them."""

from __future__ import annotations

import math

import pytest

from ambientctl.troubleshoot.traffic import (
    graph_dot,
    graph_table,
    histogram_quantile,
    parse_metrics,
    stat_table,
    stats,
    tag,
    traffic,
)

SVC = "echo.shop.svc.cluster.local"


def tcp(reporter: str, src: str, flags: str = "-", opened: float = 0, received: float = 0, sent: float = 0,
        mtls: bool = True) -> str:  # fmt: skip
    labels = (f'reporter="{reporter}",source_workload="{src}",source_workload_namespace="shop",'
              f'source_principal="spiffe://cluster.local/ns/shop/sa/{src}",destination_service="{SVC}",'
              f'destination_workload="server",destination_workload_namespace="shop",request_protocol="tcp",'
              f'response_flags="{flags}",connection_security_policy="{"mutual_tls" if mtls else "unknown"}"')  # fmt: skip
    return (f"istio_tcp_connections_opened_total{{{labels}}} {opened}\n"
            f"istio_tcp_received_bytes_total{{{labels}}} {received}\n"
            f"istio_tcp_sent_bytes_total{{{labels}}} {sent}\n")  # fmt: skip


def http(code: int, count: float, buckets: dict[str, float]) -> str:
    labels = (f'reporter="waypoint",source_workload="client",source_workload_namespace="shop",'
              f'source_principal="spiffe://cluster.local/ns/shop/sa/client",destination_service="{SVC}",'
              f'request_protocol="http",response_code="{code}",connection_security_policy="mutual_tls"')  # fmt: skip
    out = f"istio_requests_total{{{labels}}} {count}\n"
    for le, c in buckets.items():
        out += f'istio_request_duration_milliseconds_bucket{{{labels},le="{le}"}} {c}\n'
    return out


def scrape(*texts: str, proxy: str = "ztunnel-node-2") -> list:
    return tag(parse_metrics("".join(texts)), proxy)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {1.0: 0, 5.0: 10, 10.0: 10, math.inf: 10}, 3.0),
        (0.99, {1.0: 0, 5.0: 10, 10.0: 10, math.inf: 10}, 4.96),
        (0.9, {1.0: 5, 5.0: 5, math.inf: 10}, 5.0),
        (0.5, {1.0: 0, math.inf: 0}, None),
        (0.5, {}, None),
    ],
    ids=["the median interpolates inside its bucket", "p99 stays inside the bucket",
         "a rank in the +Inf bucket answers the highest finite bound", "no observations is no answer",
         "no buckets is no answer"],
)
def test_histogram_quantile(q: float, buckets: dict[float, float], expected: float | None) -> None:
    got = histogram_quantile(q, buckets)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_a_tcp_edge_is_counted_once_from_the_destination_reporter() -> None:
    samples = scrape(tcp("source", "client", opened=4, received=400), proxy="ztunnel-node-1") + scrape(
        tcp("destination", "client", opened=4, received=400, sent=800)
    )
    (edge,) = traffic(None, samples)
    assert (edge.key.source, edge.key.destination, edge.key.protocol, edge.key.mtls) == ("shop/client", SVC, "tcp", True)
    assert (edge.count, edge.bytes_in, edge.bytes_out, edge.success_rate, edge.rate) == (4, 400, 800, 1.0, None)


def test_a_destination_outside_the_mesh_is_counted_from_the_source() -> None:
    (edge,) = traffic(None, scrape(tcp("source", "client", opened=2, mtls=False)))
    assert edge.count == 2 and not edge.key.mtls


def test_rates_come_from_two_scrapes_and_denials_are_failures() -> None:
    before = scrape(tcp("destination", "client", opened=10, received=1000), tcp("destination", "bad", "DENY", opened=1))
    after = scrape(tcp("destination", "client", opened=30, received=3000), tcp("destination", "bad", "DENY", opened=5))
    edges = {e.key.source: e for e in traffic(before, after, seconds=2.0)}
    assert edges["shop/client"].rate == 10.0 and edges["shop/client"].bytes_in == 2000
    assert (edges["shop/bad"].count, edges["shop/bad"].denied, edges["shop/bad"].success_rate) == (4, 4, 0.0)
    (row,) = stats(edges.values())
    assert (row.name, row.count, row.denied, row.rate) == (SVC, 24, 4, 12.0)
    assert row.success_rate == pytest.approx(20 / 24)


def test_a_restarted_proxy_counts_from_zero() -> None:
    (edge,) = traffic(scrape(tcp("destination", "client", opened=50)), scrape(tcp("destination", "client", opened=3)), 1.0)
    assert edge.count == 3


def test_an_edge_without_traffic_in_the_window_is_left_out() -> None:
    same = scrape(tcp("destination", "client", opened=5))
    assert traffic(same, same, 1.0) == []


def test_http_through_a_waypoint_gives_success_rate_denials_and_latency() -> None:
    before = scrape(http(200, 0, {"5.0": 0, "10.0": 0, "+Inf": 0}), proxy="waypoint shop/wp")
    after = scrape(
        http(200, 8, {"5.0": 4, "10.0": 8, "+Inf": 8}) + http(503, 1, {"5.0": 1, "10.0": 1, "+Inf": 1})
        + http(403, 1, {"5.0": 1, "10.0": 1, "+Inf": 1}),
        proxy="waypoint shop/wp",
    )
    (edge,) = traffic(before, after, 5.0)
    assert (edge.key.protocol, edge.count, edge.failed, edge.denied, edge.rate) == ("http", 10, 1, 1, 2.0)
    assert edge.success_rate == pytest.approx(0.9)
    assert edge.quantile(0.5) == pytest.approx(5 * 5 / 6)  # rank 5 of the 6 in (0, 5] ms
    (row,) = stats([edge])
    assert row.p99 == pytest.approx(5 + 5 * (9.9 - 6) / 4)
    headers, table = stat_table([row])
    assert headers[:4] == ["NAME", "PROTOCOL", "RATE/S", "SUCCESS"] and table[0][:5] == [SVC, "http", "2.00", "90.0%", "1"]


def test_graph_text_and_dot_show_edges_with_principal_and_mtls() -> None:
    edges = traffic(None, scrape(tcp("destination", "client", opened=3), tcp("destination", "bad", "DENY", opened=1)))
    headers, rows = graph_table(edges)
    assert headers == ["SOURCE", "DESTINATION", "PROTOCOL", "COUNT", "SUCCESS", "MTLS", "PRINCIPAL"]
    assert rows[1] == ["shop/client", SVC, "tcp", "3", "100.0%", "yes", "spiffe://cluster.local/ns/shop/sa/client"]
    dot = graph_dot(edges)
    assert dot.startswith("digraph mesh {") and dot.rstrip().endswith("}")
    assert f'"shop/client" -> "{SVC}"' in dot and "color=red" in dot and "color=black" in dot


def test_series_of_two_proxies_never_merge_across_scrapes() -> None:
    one = scrape(tcp("destination", "client", opened=5), proxy="ztunnel-node-1")
    two = scrape(tcp("destination", "client", opened=7), proxy="ztunnel-node-2")
    (edge,) = traffic(one + two, one + scrape(tcp("destination", "client", opened=9), proxy="ztunnel-node-2"), 1.0)
    assert edge.count == 2

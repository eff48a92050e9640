"""Who talks to whom and how well, from the proxies' Istio metrics (``stat``, ``graph``). PURE.

Input: Prometheus text scraped from every ztunnel (``istio_tcp_*``) and waypoint (``istio_requests_total``,
``istio_request_duration_milliseconds``), parsed with prometheus_client's parser (``parse_metrics``).
Two scrapes ``seconds`` apart give rates (``traffic(before, after, seconds)``); without a first scrape
(``before=None``) the counts since the proxies started are used and rates are not computed.

Counting each connection or request once: HTTP from ``reporter="waypoint"`` (the waypoint sees every
request), TCP from ``reporter="destination"`` (the destination ztunnel sees every connection that
reached it, and is where L4 policy refuses; flags other than ``-`` count as failures), falling back to
``reporter="source"`` for an edge no destination reported (a destination outside the mesh). Success:
TCP connections without a failure flag, HTTP responses other than 5xx (a 403 from policy is a success of
the mesh, counted apart as denied, as Linkerd and Kiali show it). An edge is
source workload -> destination service (or workload when no service), with the source principal and
whether it was mutual TLS. Latency quantiles use Prometheus' ``histogram_quantile`` interpolation over
the bucket deltas. Counter resets (a proxy restarted between scrapes) count from zero.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

UNKNOWN = "unknown"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_FAILED = "istio_tcp_connections_failed_total"
TCP_RECEIVED = "istio_tcp_received_bytes_total"
TCP_SENT = "istio_tcp_sent_bytes_total"
REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return ""


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (raises ValueError on text that is not one)."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append(Sample(s.name, tuple(sorted(s.labels.items())), float(s.value)))
    return out


@dataclass(frozen=True, slots=True, order=True)
class EdgeKey:
    source: str  # namespace/workload
    destination: str  # service hostname, or namespace/workload
    protocol: str  # tcp | http | grpc ...
    principal: str  # the source's SPIFFE principal ("unknown" without mTLS)
    mtls: bool


@dataclass
class Edge:
    key: EdgeKey
    count: float = 0.0  # connections (TCP) or requests (HTTP) in the window
    failed: float = 0.0  # TCP: flags other than "-" (a policy refusal included); HTTP: 5xx
    denied: float = 0.0  # refused by policy (TCP flag DENY; HTTP 403)
    bytes_in: float = 0.0  # request direction
    bytes_out: float = 0.0  # response direction
    buckets: dict[float, float] = field(default_factory=dict)  # le -> count (HTTP latency)
    seconds: float = 0.0  # window length; 0: totals since start

    @property
    def rate(self) -> float | None:
        return self.count / self.seconds if self.seconds > 0 else None

    @property
    def success_rate(self) -> float | None:
        return None if self.count <= 0 else max(0.0, 1.0 - self.failed / self.count)

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, self.buckets)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding rank q*total;
    the +Inf bucket answers the highest finite bound. None without observations."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0 or not math.isinf(bounds[-1]):
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return prev_bound
            if count == prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = b, count
    return prev_bound


def _workload(s: Sample, side: str) -> str:
    ns = s.label(f"{side}_workload_namespace") or UNKNOWN
    name = s.label(f"{side}_workload") or UNKNOWN
    return f"{ns}/{name}"


def _destination(s: Sample) -> str:
    svc = s.label("destination_service")
    return svc if svc and svc != UNKNOWN else _workload(s, "destination")


def _key(s: Sample, protocol: str) -> EdgeKey:
    return EdgeKey(
        _workload(s, "source"),
        _destination(s),
        protocol,
        s.label("source_principal") or UNKNOWN,
        s.label("connection_security_policy") == "mutual_tls",
    )


def _delta(after: float, before: float | None) -> float:
    if before is None:
        return after
    return after - before if after >= before else after  # a reset: the process restarted


def _index(samples: Iterable[Sample] | None) -> dict[tuple[str, tuple[tuple[str, str], ...], str], float]:
    """(name, labels, proxy) -> value; ``proxy`` keeps two proxies' identical series apart."""
    out: dict[tuple[str, tuple[tuple[str, str], ...], str], float] = {}
    for s in samples or ():
        proxy = s.label("__proxy__")
        out[(s.name, s.labels, proxy)] = out.get((s.name, s.labels, proxy), 0.0) + s.value
    return out


def tag(samples: Iterable[Sample], proxy: str) -> list[Sample]:
    """Samples with the proxy they were scraped from as a label (series of two proxies never merge)."""
    return [Sample(s.name, tuple(sorted((*s.labels, ("__proxy__", proxy)))), s.value) for s in samples]


def traffic(before: Sequence[Sample] | None, after: Sequence[Sample], seconds: float = 0.0) -> list[Edge]:
    """The edges of the window between two scrapes (module docstring), sorted by key."""
    prev = _index(before) if before is not None else None
    edges: dict[EdgeKey, Edge] = {}
    tcp_by_dest: dict[tuple[str, str], set[str]] = defaultdict(set)  # (src, dst) -> reporters seen

    for s in after:
        if s.name in (TCP_OPENED, TCP_FAILED, TCP_RECEIVED, TCP_SENT):
            tcp_by_dest[(_workload(s, "source"), _destination(s))].add(s.label("reporter"))

    def edge(key: EdgeKey) -> Edge:
        if key not in edges:
            edges[key] = Edge(key, seconds=seconds if prev is not None else 0.0)
        return edges[key]

    for s in after:
        was = prev.get((s.name, s.labels, s.label("__proxy__"))) if prev is not None else None
        d = _delta(s.value, was)
        reporter = s.label("reporter")
        if s.name in (TCP_OPENED, TCP_FAILED, TCP_RECEIVED, TCP_SENT):
            seen = tcp_by_dest[(_workload(s, "source"), _destination(s))]
            wanted = "destination" if "destination" in seen else "source"
            if reporter != wanted:
                continue
            e = edge(_key(s, "tcp"))
            flags = s.label("response_flags") or "-"
            if s.name == TCP_OPENED:
                e.count += d
                if flags != "-":
                    e.failed += d
                    e.denied += d if flags == "DENY" else 0.0
            elif s.name == TCP_RECEIVED:
                e.bytes_in += d
            elif s.name == TCP_SENT:
                e.bytes_out += d
        elif s.name == REQUESTS and reporter == "waypoint":
            e = edge(_key(s, s.label("request_protocol") or "http"))
            e.count += d
            code = s.label("response_code")
            if code.startswith("5") or code == "0":
                e.failed += d
            if code == "403":
                e.denied += d
        elif s.name == DURATION_BUCKET and s.label("reporter") == "waypoint":
            e = edge(_key(s, s.label("request_protocol") or "http"))
            le = float(s.label("le").replace("+Inf", "inf"))
            e.buckets[le] = e.buckets.get(le, 0.0) + d
    return [edges[k] for k in sorted(edges) if edges[k].count > 0 or edges[k].bytes_in or edges[k].bytes_out]


@dataclass(frozen=True, slots=True)
class StatRow:
    name: str  # destination service or workload
    protocols: str
    count: float
    rate: float | None
    success_rate: float | None
    denied: float
    p50: float | None
    p95: float | None
    p99: float | None
    bytes_in: float
    bytes_out: float
    seconds: float


def stats(edges: Iterable[Edge]) -> list[StatRow]:
    """Golden signals per destination: requests or connections (and per second), success rate, latency
    quantiles (HTTP through a waypoint), bytes."""
    groups: dict[str, list[Edge]] = defaultdict(list)
    for e in edges:
        groups[e.key.destination].append(e)
    rows = []
    for name in sorted(groups):
        es = groups[name]
        merged = Edge(es[0].key, seconds=es[0].seconds)
        for e in es:
            merged.count += e.count
            merged.failed += e.failed
            merged.denied += e.denied
            merged.bytes_in += e.bytes_in
            merged.bytes_out += e.bytes_out
            for le, c in e.buckets.items():
                merged.buckets[le] = merged.buckets.get(le, 0.0) + c
        rows.append(
            StatRow(name, ",".join(sorted({e.key.protocol for e in es})), merged.count, merged.rate,
                    merged.success_rate, merged.denied, merged.quantile(0.5), merged.quantile(0.95),
                    merged.quantile(0.99), merged.bytes_in, merged.bytes_out, merged.seconds)
        )  # fmt: skip
    return rows


# --- output ---------------------------------------------------------------------------------------------


def _num(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def graph_table(edges: Sequence[Edge]) -> tuple[list[str], list[list[str]]]:
    windowed = any(e.seconds > 0 for e in edges)
    headers = ["SOURCE", "DESTINATION", "PROTOCOL", "RATE/S" if windowed else "COUNT", "SUCCESS", "MTLS", "PRINCIPAL"]
    rows = [
        [e.key.source, e.key.destination, e.key.protocol,
         _num(e.rate) if windowed else f"{e.count:g}", _pct(e.success_rate),
         "yes" if e.key.mtls else "no", e.key.principal]
        for e in edges
    ]  # fmt: skip
    return headers, rows


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_dot(edges: Sequence[Edge]) -> str:
    """Graphviz DOT: nodes are workloads and services, edges labelled with protocol, rate or count,
    success rate and the principal; mutual TLS solid, plaintext dashed, edges with failures red."""
    lines = ["digraph mesh {", "  rankdir=LR;", '  node [shape=box, fontname="sans-serif"];']
    nodes = sorted({e.key.source for e in edges} | {e.key.destination for e in edges})
    for n in nodes:
        shape = "ellipse" if "/" not in n else "box"
        lines.append(f"  {_dot_id(n)} [shape={shape}];")
    for e in edges:
        amount = f"{e.rate:.2f}/s" if e.rate is not None else f"{e.count:g}"
        label = f"{e.key.protocol} {amount} {_pct(e.success_rate)}\\n{e.key.principal}"
        style = "solid" if e.key.mtls else "dashed"
        color = "red" if e.failed else "black"
        lines.append(f"  {_dot_id(e.key.source)} -> {_dot_id(e.key.destination)} "
                     f"[label={_dot_id(label)}, style={style}, color={color}];")  # fmt: skip
    lines.append("}")
    return "\n".join(lines) + "\n"


def stat_table(rows: Sequence[StatRow]) -> tuple[list[str], list[list[str]]]:
    windowed = any(r.seconds > 0 for r in rows)
    headers = ["NAME", "PROTOCOL", "RATE/S" if windowed else "COUNT", "SUCCESS", "DENIED", "P50 MS", "P95 MS",
               "P99 MS", "BYTES IN", "BYTES OUT"]  # fmt: skip
    table = []
    for r in rows:
        div = r.seconds if windowed and r.seconds > 0 else 1.0
        table.append([
            r.name, r.protocols, _num(r.rate) if windowed else f"{r.count:g}", _pct(r.success_rate), f"{r.denied:g}",
            _num(r.p50, digits=1), _num(r.p95, digits=1), _num(r.p99, digits=1),
            f"{r.bytes_in / div:.0f}" + ("/s" if windowed else ""), f"{r.bytes_out / div:.0f}" + ("/s" if windowed else ""),
        ])  # fmt: skip
    return headers, table


def edge_json(e: Edge) -> dict[str, Any]:
    return {
        "source": e.key.source, "destination": e.key.destination, "protocol": e.key.protocol,
        "principal": e.key.principal, "mtls": e.key.mtls, "count": e.count, "rate": e.rate,
        "successRate": e.success_rate, "failed": e.failed, "denied": e.denied,
        "bytesIn": e.bytes_in, "bytesOut": e.bytes_out, "p50": e.quantile(0.5), "p95": e.quantile(0.95),
        "p99": e.quantile(0.99), "seconds": e.seconds,
    }  # fmt: skip


def stat_json(r: StatRow) -> dict[str, Any]:
    return {
        "name": r.name, "protocols": r.protocols, "count": r.count, "rate": r.rate, "successRate": r.success_rate,
        "denied": r.denied, "p50": r.p50, "p95": r.p95, "p99": r.p99, "bytesIn": r.bytes_in,
        "bytesOut": r.bytes_out, "seconds": r.seconds,
    }  # fmt: skip

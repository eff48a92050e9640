"""Benchmark: the waypoint (L7) on loopback — direct vs HAProxy vs a ztunnel pair vs ztunnel -> waypoint
-> ztunnel, 1 KiB HTTP/1.1 keep-alive requests at a few fixed concurrencies, in one run.

Paths: (a) client -> backend; (b) client -> HAProxy (``mode http``, one thread) -> backend; (c) client ->
SOCKS5 on node-1's ztunnel -> HBONE -> node-2's ztunnel -> backend, addressed to a service without a
waypoint; (d) the same client and ztunnels, addressed to a service whose ``waypoint`` is the waypoint
pod: node-1 -> HBONE -> the waypoint (a real ``python -m waypoint`` process; L7 policy "allow GET" on
the service; per-request endpoint pick) -> HBONE as the waypoint -> node-2 -> backend. The ztunnels
read a local config file (LOCAL_XDS_PATH); the waypoint takes its config from xDS only, so a helper
process serves delta ADS (``FakeXdsServer`` as the servicer) over TLS with a certificate for istiod's
name from the shared fake CA root, which is the root the waypoint's FAKE_CA certificate comes from:
the waypoint runs exactly as configured in a pod (mTLS to its control plane), with no test-only
setting. The backend and the load generator are separate uvloop processes; the load generator holds
N keep-alive connections with one request outstanding on each (closed loop) and records every
latency. Per path and concurrency: requests/s, p50/p99, the proxies' CPU per 1000 requests (from
/proc/<pid>/stat); for the waypoint also its own CPU per 1000 requests and its RSS per idle downstream
connection (N HBONE tunnels from node-1, one HTTP request each, held open). Never part of the test run.

``--traffic`` (issue 8) measures the waypoint's routing instead: the plain waypoint path (d) against the
same path to services whose ``ServiceTraffic`` (served by the same xDS helper) has 100 rules of 10
match entries each (path prefix + header + method; the request matching the first entry of the first
rule, the best case, or the last entry of the last rule, the worst), a 90/10 weighted split across two
services, and a retry policy (3 attempts on 5xx/reset/connect-failure, per-try timeout) on a healthy
backend. The paths are interleaved, ``--rounds`` times per concurrency (order rotated each round); each
figure is the median of its rounds, and the loss is against the plain waypoint's median in the same run,
next to the waypoint's CPU per request (its capacity, less sensitive to a busy machine than req/s).

    .venv/bin/python bench/l7.py [--quick] [--duration 5] [--concurrency 1 8 32] [--idle 2000]
                                 [--profile DIR] [--workdir DIR]
    .venv/bin/python bench/l7.py --traffic [--rounds 3] [--concurrency 1 8] [--duration 3]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _util as u  # noqa: E402  (bench/ is not a package)
import l4  # noqa: E402  (the L4 benchmark's process helpers: child, tail, free_port, wait_ready, machine)

ROOT = Path(__file__).resolve().parent.parent  # the tree whose ztunnel and waypoint are measured
NET = "127.0.47"  # all of 127/8 routes to lo; l4.py uses 127.0.42, so both can run side by side
NODE_IPS = {"node-1": f"{NET}.1", "node-2": f"{NET}.2"}
XDS_IP = f"{NET}.5"
CLIENT_IP = f"{NET}.11"  # client workload, on node-1
SERVER_IP = f"{NET}.12"  # backend workload, on node-2
WAYPOINT_IP = f"{NET}.13"  # the waypoint pod (not captured: Istio's istio.io/dataplane-mode=none)
HAPROXY_IP = f"{NET}.31"
BACKEND_PORT = 8080
SERVICE_PORT = 80
VIP_L4 = "10.96.47.1"  # bench/server-l4: no waypoint
VIP_L7 = "10.96.47.2"  # bench/server: waypoint = the waypoint pod
HOST_L7 = "server.bench.svc.cluster.local"
# --traffic: services behind the same waypoint and backend, each with its own ServiceTraffic.
VIP_ROUTES, HOST_ROUTES = "10.96.47.3", "server-routes.bench.svc.cluster.local"  # 100 rules x 10 matches
VIP_SPLIT, HOST_SPLIT = "10.96.47.4", "server-split.bench.svc.cluster.local"  # 90 here / 10 to split-b
VIP_SPLIT_B, HOST_SPLIT_B = "10.96.47.6", "server-split-b.bench.svc.cluster.local"
VIP_RETRY, HOST_RETRY = "10.96.47.5", "server-retry.bench.svc.cluster.local"  # retries, healthy backend
ROUTE_RULES, ROUTE_MATCHES = 100, 10
PLAIN_PATH = "/api/v1/items?id=42"
ROUTES_LOSS_TARGET = 0.10  # issue 8: under 10% throughput loss for the 100-route table
HBONE_PORT, ADMIN_PORT, STATS_PORT, READY_PORT, SOCKS5_PORT = 15008, 15000, 15020, 15021, 15080
START_TIMEOUT = 30.0
RESPONSE_SIZE = 1024

# Targets from issue 7.
WAYPOINT_CPU_PER_1K = 0.25  # vCPU per 1000 requests/s == CPU-seconds per 1000 requests (Envoy's published figure)
ADDED_P50_VS_HAPROXY = 2.0

MESH_CONFIG = f"""\
workloads:
- {{name: client, namespace: bench, serviceAccount: client, workloadIps: [{CLIENT_IP}], protocol: HBONE,
   node: node-1}}
- {{name: server, namespace: bench, serviceAccount: server, workloadIps: [{SERVER_IP}], protocol: HBONE,
   node: node-2, services: {{bench/{HOST_L7}: {{{SERVICE_PORT}: {BACKEND_PORT}}},
                            bench/server-l4.bench.svc.cluster.local: {{{SERVICE_PORT}: {BACKEND_PORT}}},
                            bench/{HOST_ROUTES}: {{{SERVICE_PORT}: {BACKEND_PORT}}},
                            bench/{HOST_SPLIT}: {{{SERVICE_PORT}: {BACKEND_PORT}}},
                            bench/{HOST_SPLIT_B}: {{{SERVICE_PORT}: {BACKEND_PORT}}},
                            bench/{HOST_RETRY}: {{{SERVICE_PORT}: {BACKEND_PORT}}}}}}}
- {{name: waypoint-0, namespace: bench, serviceAccount: waypoint, workloadIps: [{WAYPOINT_IP}], protocol: TCP,
   node: waypoint-node}}
services:
- {{name: server, namespace: bench, vips: [{VIP_L7}], ports: {{{SERVICE_PORT}: {BACKEND_PORT}}},
   waypoint: {{address: {WAYPOINT_IP}}}}}
- {{name: server-l4, namespace: bench, vips: [{VIP_L4}], ports: {{{SERVICE_PORT}: {BACKEND_PORT}}}}}
""" + "".join(
    f"""- {{name: {host.split(".")[0]}, namespace: bench, vips: [{vip}], ports: {{{SERVICE_PORT}: {BACKEND_PORT}}},
   waypoint: {{address: {WAYPOINT_IP}}}}}
"""
    for vip, host in ((VIP_ROUTES, HOST_ROUTES), (VIP_SPLIT, HOST_SPLIT), (VIP_SPLIT_B, HOST_SPLIT_B),
                      (VIP_RETRY, HOST_RETRY))
)


def request_bytes(method: str = "GET", host: str = HOST_L7, path: str = PLAIN_PATH, route: str = "") -> bytes:
    """A ~1 KiB HTTP/1.1 keep-alive request: what a service client sends, padded to exactly 1024 bytes.
    ``route``: the value of an ``x-route`` header (the 100-rule table matches on it)."""
    head = (
        f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: bench-l7\r\naccept: */*\r\n"
        + (f"x-route: {route}\r\n" if route else "")
        + "".join(f"x-h{i:02d}: {'v' * 30}\r\n" for i in range(16))
    ).encode()
    pad = 1024 - len(head) - len(b"x-pad: \r\n\r\n")
    return head + b"x-pad: " + b"p" * pad + b"\r\n\r\n"


# --- the backend (child process: ``--serve-http HOST PORT``) ------------------------------------------

_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: "
    + str(RESPONSE_SIZE).encode()
    + b"\r\n\r\n"
    + b"r" * RESPONSE_SIZE
)


def content_length(head: bytes) -> int:
    """The content-length of a message head (0 when absent; the bench's peers never chunk)."""
    head = head.lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : stop if stop > 0 else None])


class _HttpBackend(asyncio.Protocol):
    """Keep-alive HTTP/1.1: answers each request head (bodies by content-length) with 200 and 1 KiB."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.skip = 0

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while True:
            if self.skip:
                take = min(self.skip, len(buf))
                self.skip -= take
                buf = buf[take:]
                if self.skip:
                    break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            self.skip = content_length(buf[:end])
            buf = buf[end + 4 :]
            out.append(_RESPONSE)
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


def serve_http(host: str, port: int) -> None:
    u.raise_nofile(65536)
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _HttpBackend, host, port, backlog=4096, reuse_address=True
        )
        async with server:
            await asyncio.Event().wait()

    uvloop.run(main())


# --- the load generator (child process: ``--load JSON``) ----------------------------------------------


@dataclass
class LoadSpec:
    host: str  # where the client connects (the SOCKS5 proxy when ``target`` is set)
    port: int
    concurrency: int
    warmup: float
    duration: float
    target: tuple[str, int] | None = None  # SOCKS5 CONNECT destination
    source: str | None = None
    method: str = "GET"
    host_header: str = HOST_L7
    path: str = PLAIN_PATH
    route: str = ""


class _Gen:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.request = request_bytes(spec.method, spec.host_header, spec.path, spec.route)
        self.samples = array.array("d")
        self.statuses: dict[int, int] = {}
        self.total = 0
        self.errors: list[str] = []
        self.running = True
        self.open = 0
        self.idle = asyncio.Event()
        self.measure_from = self.measure_to = 0.0
        self.last = 0.0


class _LoadConn(asyncio.Protocol):
    """One keep-alive connection with one request outstanding; a response is parsed by content-length."""

    def __init__(self, gen: _Gen) -> None:
        self.gen = gen
        self.buf = b""
        self.need = -1
        self.status = 0
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.gen.open += 1
        self.send()

    def send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.status = int(buf[9:12])
            self.need = end + 4 + content_length(buf[:end])
        if len(buf) < self.need:
            self.buf = buf
            return
        now = time.perf_counter()
        gen = self.gen
        if len(buf) > self.need:
            gen.errors.append(f"{len(buf) - self.need} unexpected bytes after a response")
        self.buf, self.need = b"", -1
        gen.total += 1
        if gen.measure_from <= self.sent and now <= gen.measure_to:
            gen.samples.append(now - self.sent)
            gen.statuses[self.status] = gen.statuses.get(self.status, 0) + 1
            gen.last = now
        if gen.running and now < gen.measure_to:
            self.send()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        gen = self.gen
        if self.need >= 0 or (gen.running and time.perf_counter() < gen.measure_to):
            gen.errors.append(f"connection closed mid-run: {exc!r}")
        gen.open -= 1
        if gen.open == 0:
            gen.idle.set()


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Closed-loop load per ``spec``; returns counts, percentiles and this process's CPU (a JSON dict)."""
    import uvloop

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        gen = _Gen(spec)
        socks: list[socket.socket] = []
        for _ in range(spec.concurrency):
            if spec.target is not None:
                sock = u.socks5_connector((spec.host, spec.port), *spec.target, source=spec.source)()
            else:
                sock = u.tcp_connector(spec.host, spec.port)()
            sock.setblocking(False)
            socks.append(sock)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        gen.measure_from = wall0 + spec.warmup
        gen.measure_to = gen.measure_from + spec.duration
        for sock in socks:
            await loop.create_connection(lambda: _LoadConn(gen), sock=sock)
        try:
            await asyncio.wait_for(gen.idle.wait(), spec.warmup + spec.duration + 30)
        except TimeoutError:
            gen.errors.append(f"{gen.open} connections still waiting for a response 30 s after the run")
        gen.running = False
        wall = time.perf_counter() - wall0
        samples = sorted(gen.samples)
        return {
            "requests": len(samples),
            "all_requests": gen.total,
            "seconds": spec.duration,
            "p50": u.percentile(samples, 50) if samples else None,
            "p99": u.percentile(samples, 99) if samples else None,
            "statuses": gen.statuses,
            "errors": gen.errors[:5],
            "error_count": len(gen.errors),
            "client_cpu": (time.process_time() - cpu0) / wall,
        }

    return uvloop.run(main())


# --- measurements ---------------------------------------------------------------------------------


@dataclass
class Path_:
    name: str
    host: str
    port: int
    target: tuple[str, int] | None = None  # through node-1's SOCKS5 to this address
    proxy_pids: list[int] = field(default_factory=list)
    waypoint_pid: int | None = None
    host_header: str = HOST_L7
    path: str = PLAIN_PATH  # request path (query included)
    route: str = ""  # x-route header value ("": none)


@dataclass
class Result:
    path: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu_per_1k: float | None
    waypoint_cpu_per_1k: float | None
    client_cpu: float


def load(path: Path_, concurrency: int, warmup: float, duration: float, method: str = "GET") -> dict[str, Any]:
    spec = LoadSpec(
        path.host, path.port, concurrency, warmup, duration,
        target=path.target, source=CLIENT_IP if path.target else None, method=method,
        host_header=path.host_header, path=path.path, route=path.route,
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--load", json.dumps(spec.__dict__)], capture_output=True, text=True,
        timeout=warmup + duration + 120,
    )
    if proc.returncode != 0:
        raise u.BenchError(f"load generator for {path.name} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def measure(path: Path_, concurrency: int, warmup: float, duration: float) -> Result:
    pids = path.proxy_pids
    cpu0 = [u.cpu_seconds(p) for p in pids]
    out = load(path, concurrency, warmup, duration)
    cpu1 = [u.cpu_seconds(p) for p in pids]
    statuses = {int(k): v for k, v in out["statuses"].items()}
    if out["error_count"] or set(statuses) != {200} or not out["requests"]:
        raise u.BenchError(
            f"{path.name} at concurrency {concurrency}: statuses {statuses}, {out['error_count']} errors "
            f"(first: {out['errors']})"
        )
    # CPU over the whole load run (warm-up included) per request of the whole run.
    per_req = 1000 / out["all_requests"]
    proxy = sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) * per_req if pids else None
    wp = None
    if path.waypoint_pid is not None:
        i = pids.index(path.waypoint_pid)
        wp = (cpu1[i] - cpu0[i]) * per_req
    return Result(
        path.name, concurrency, out["requests"] / out["seconds"], out["p50"] * 1e3, out["p99"] * 1e3, proxy, wp,
        out["client_cpu"],
    )


def http_once(path: Path_, method: str, url: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (blocking): status, lower-cased headers, body. ``url``: another
    request path than the path's own."""
    if path.target is not None:
        sock = u.socks5_connector((path.host, path.port), *path.target, source=CLIENT_IP)()
    else:
        sock = u.tcp_connector(path.host, path.port)()
    with sock:
        sock.settimeout(10)
        request = request_bytes(method, path.host_header, url or path.path, path.route)
        sock.sendall(request.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\ncontent-length: 0\r\n", 1))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise u.BenchError(f"{path.name}: connection closed before a response to {method}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


# --- (b) HAProxy ------------------------------------------------------------------------------------


def ensure_package(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found
    print(f"# {binary} missing: apt-get install -y {package}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(["apt-get", "install", "-y", package], capture_output=True, text=True, env=env)
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if proc.returncode != 0 or not found:
        raise u.BenchError(f"cannot install {package} (needed for {binary}):\n{proc.stderr[-2000:]}")
    return found


@contextmanager
def haproxy(tmp: Path) -> Iterator[Path_]:
    binary = ensure_package("haproxy", "haproxy")
    port = l4.free_port(HAPROXY_IP)
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        "\n".join(
            [
                "global",
                "  nbthread 1",  # one core, as the waypoint's one event loop
                "  maxconn 4096",
                "defaults",
                "  mode http",
                "  option http-keep-alive",
                "  timeout connect 5s",
                "  timeout client 60s",
                "  timeout server 60s",
                "frontend bench",
                f"  bind {HAPROXY_IP}:{port}",
                "  http-response set-header x-bench-proxy haproxy",
                "  default_backend backend",
                "backend backend",
                "  http-reuse always",
                f"  server s1 {SERVER_IP}:{BACKEND_PORT}",
                "",
            ]
        )
    )
    with l4.child([binary, "-db", "-f", str(conf)], tmp / "haproxy.log") as proc:
        u.wait_port(HAPROXY_IP, port, timeout=START_TIMEOUT, alive=lambda: proc.poll() is None)
        path = Path_("haproxy (mode http)", HAPROXY_IP, port, proxy_pids=[proc.pid])
        status, headers, _ = http_once(path, "GET")
        if status != 200 or headers.get("x-bench-proxy") != "haproxy":
            raise u.BenchError(f"HAProxy did not answer as an HTTP proxy: {status} {headers}")
        yield path


# --- (c)/(d) ztunnels, the xDS helper and the waypoint -----------------------------------------------


def _env() -> dict[str, str]:
    """The proxies' environment: this script's tree first on the import path (so a ``git archive`` of
    another commit measures that commit's code, not the editable install's; the proxies run with
    ``python -P`` so the current directory does not come first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDS_", "CA_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def ztunnel_env(tmp: Path, node: str) -> dict[str, str]:
    ip = NODE_IPS[node]
    env = _env()
    env.update(
        {
            "NODE_NAME": node,
            "PROXY_MODE": "dedicated",
            "LOCAL_XDS_PATH": str(tmp / "mesh.yaml"),
            "FAKE_CA": "true",
            "FAKE_CA_DIR": str(tmp / "fake-ca"),
            "ADMIN_ADDR": f"{ip}:{ADMIN_PORT}",
            "STATS_ADDR": f"{ip}:{STATS_PORT}",
            "READINESS_ADDR": f"{ip}:{READY_PORT}",
            "SOCKS5_ADDR": f"{ip}:{SOCKS5_PORT}" if node == "node-1" else "",
            "HBONE_PORT": str(HBONE_PORT),
            "DRAIN_DURATION": "1s",
            "LOG_LEVEL": os.environ.get("BENCH_ZTUNNEL_LOG_LEVEL", "warning"),
        }
    )
    return env


def waypoint_env(tmp: Path, xds_port: int) -> dict[str, str]:
    env = _env()
    env.update(
        {
            "POD_NAME": "waypoint-0",
            "POD_NAMESPACE": "bench",
            "GATEWAY_NAME": "waypoint",
            "POD_IP": WAYPOINT_IP,
            "XDS_ADDRESS": f"{XDS_IP}:{xds_port}",
            "FAKE_CA": "true",
            "FAKE_CA_DIR": str(tmp / "fake-ca"),
            "ADMIN_ADDR": f"{WAYPOINT_IP}:{ADMIN_PORT}",
            "STATS_ADDR": f"{WAYPOINT_IP}:{STATS_PORT}",
            "READINESS_ADDR": f"{WAYPOINT_IP}:{READY_PORT}",
            "DRAIN_DURATION": "1s",
            # One access-log line per request is part of Istio's cost only where access logging is on
            # (off in its default profile); BENCH_WAYPOINT_LOG_LEVEL=info measures it.
            "LOG_LEVEL": os.environ.get("BENCH_WAYPOINT_LOG_LEVEL", "warning"),
        }
    )
    return env


def allow_get_policy() -> bytes:
    from meshcore.model.authorization import StringMatch
    from meshcore.model.convert_l7 import l7_authorization_to_proto
    from meshcore.model.l7 import L7Action, L7Authorization, L7Operation, L7Rule, L7Target

    policy = L7Authorization(
        "allow-get", "bench", L7Action.ALLOW,
        targets=tuple(L7Target("service", h) for h in (HOST_L7, HOST_ROUTES, HOST_SPLIT, HOST_SPLIT_B, HOST_RETRY)),
        rules=(L7Rule(operations=(L7Operation(methods=(StringMatch("exact", "GET"),)),)),),
    )
    return l7_authorization_to_proto(policy).SerializeToString()


def route_path(rule: int, entry: int) -> tuple[str, str]:
    """(request path, x-route value) that entry ``entry`` of rule ``rule`` of the routes table matches."""
    return f"/svc{rule:02d}/m{entry}/items?id=42", f"r{rule:02d}"


def traffic_tables() -> list[Any]:
    """The ``ServiceTraffic`` of the --traffic services: 100 rules x 10 match entries (each a path prefix,
    an ``x-route`` header and GET, all to the service itself), a 90/10 split, retries."""
    from meshcore.model.traffic import (
        BackendRef,
        PathMatch,
        Retry,
        RouteMatch,
        RouteRule,
        ServiceTraffic,
        ValueMatch,
    )

    def to(host: str, weight: int = 1) -> BackendRef:
        return BackendRef("bench", host, 0, "", weight)

    rules = tuple(
        RouteRule(
            f"HTTPRoute bench/routes-{i:02d}",
            matches=tuple(
                RouteMatch(
                    path=PathMatch("prefix", route_path(i, j)[0].partition("/items")[0]),
                    headers=(ValueMatch("x-route", "exact", route_path(i, j)[1]),),
                    method="GET",
                )
                for j in range(ROUTE_MATCHES)
            ),
            backends=(to(HOST_ROUTES),),
        )
        for i in range(ROUTE_RULES)
    )
    return [
        ServiceTraffic("bench", HOST_ROUTES, routes=rules),
        ServiceTraffic("bench", HOST_SPLIT, routes=(
            RouteRule("HTTPRoute bench/split", backends=(to(HOST_SPLIT, 90), to(HOST_SPLIT_B, 10))),
        )),
        ServiceTraffic("bench", HOST_RETRY, routes=(
            RouteRule("HTTPRoute bench/retry", backends=(to(HOST_RETRY),),
                      retry=Retry(3, per_try_timeout=5.0, retry_on=("5xx", "reset", "connect-failure"))),
        )),
    ]


def serve_xds(workdir: str, host: str, port: int) -> None:
    """The waypoint's control plane for the run: delta ADS over TLS (istiod's name, the shared fake root),
    serving the mesh file's workloads and services, the "allow GET" L7 policy and the --traffic
    services' ServiceTraffic (unused by the other paths: each is another service)."""
    import grpc

    from meshcore.model.convert import ADDRESS_TYPE_URL, resource_name
    from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL
    from meshcore.model.convert_traffic import SERVICE_TRAFFIC_TYPE_URL, service_traffic_to_proto
    from meshcore.proto import discovery_pb2_grpc
    from meshcore.testing.fake_xds import FakeXdsServer
    from meshcore.testing.shared_ca import CERT_FILE, KEY_FILE, ROOT_DIR, SharedFakeCa
    from meshcore.tls import certs
    from meshcore.tls.contexts import ISTIOD_SAN
    from ztunnel.proxy.local_config import build_models, decode_local_config

    tmp = Path(workdir)
    SharedFakeCa(tmp / "fake-ca", "cluster.local")  # makes the root if this process is first
    root_dir = tmp / "fake-ca" / ROOT_DIR
    root_key = certs.load_private_key((root_dir / KEY_FILE).read_text("ascii"))
    root = certs.load_chain((root_dir / CERT_FILE).read_text("ascii"))[0]
    key = certs.generate_key()
    now = datetime.now(UTC)
    leaf = certs.build_leaf_certificate(
        key.public_key(), issuer_cert=root, issuer_key=root_key, not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(days=1), dns_names=[ISTIOD_SAN],
    )
    addresses, _, problems = build_models(decode_local_config((tmp / "mesh.yaml").read_text()))
    if problems:
        raise u.BenchError(f"mesh.yaml: {problems}")

    async def main() -> None:
        xds = FakeXdsServer(host)
        await xds.push(ADDRESS_TYPE_URL, {resource_name(m): m for m in addresses})
        await xds.push(L7_AUTHORIZATION_TYPE_URL, {"bench/allow-get": allow_get_policy()})
        await xds.push(
            SERVICE_TRAFFIC_TYPE_URL,
            {t.key: service_traffic_to_proto(t).SerializeToString() for t in traffic_tables()},
        )
        server = grpc.aio.server()
        discovery_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(xds, server)
        creds = grpc.ssl_server_credentials(
            [(certs.key_to_pem(key).encode(), (certs.cert_to_pem(leaf) + certs.cert_to_pem(root)).encode())]
        )
        server.add_secure_port(f"{host}:{port}", creds)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def profiled_waypoint(out: str) -> None:
    """Run the waypoint's ``main`` under cProfile with a CPU clock (its event-loop thread's CPU time, so a
    busy shared machine's preemptions are not charged to whatever call was running), dump on exit."""
    import cProfile

    from waypoint.__main__ import main as waypoint_main

    profiler = cProfile.Profile(time.thread_time)
    sys.argv = ["waypoint"]
    try:
        profiler.runcall(waypoint_main)
    except SystemExit:
        pass
    finally:
        profiler.dump_stats(out)


def wait_waypoint_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://{WAYPOINT_IP}:{READY_PORT}/healthz/ready"
    while True:
        if proc.poll() is not None:
            raise u.BenchError(f"the waypoint exited with {proc.returncode}:\n{l4.tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise u.BenchError(f"the waypoint is not ready after {START_TIMEOUT}s:\n{l4.tail(log)}")
        time.sleep(0.1)


def waypoint_requests(code: str, service: str = "") -> float:
    """Sum of the waypoint's ``istio_requests_total`` with ``response_code=code`` (and, when given,
    ``destination_service=service``)."""
    with urllib.request.urlopen(f"http://{WAYPOINT_IP}:{STATS_PORT}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("istio_requests_total{") and f'response_code="{code}"' in line
        and (not service or f'destination_service="{service}"' in line)
    )


def waypoint_traffic_keys() -> list[str]:
    """The ``namespace/hostname`` of each ServiceTraffic the waypoint holds (its /config_dump)."""
    with urllib.request.urlopen(f"http://{WAYPOINT_IP}:{ADMIN_PORT}/config_dump", timeout=10) as r:
        dump = json.loads(r.read())
    return sorted(f"{t['namespace']}/{t['hostname']}" for t in dump.get("serviceTraffic", []))


def check_traffic(m: Mesh) -> list[str]:
    """Prove the --traffic paths are routed: the waypoint holds the three ServiceTraffic; each path
    answers 200 through it; the routes table answers 404 to a request no entry matches (a path one
    rule has with another rule's header), so the table is applied, not bypassed."""
    want = sorted(f"bench/{h}" for h in (HOST_ROUTES, HOST_SPLIT, HOST_RETRY))
    deadline = time.monotonic() + START_TIMEOUT
    while (have := waypoint_traffic_keys()) != want:
        if time.monotonic() > deadline:
            raise u.BenchError(f"the waypoint holds ServiceTraffic {have}, not {want}")
        time.sleep(0.2)
    for path in m.traffic:
        status, _, body = http_once(path, "GET")
        if status != 200:
            raise u.BenchError(f"{path.name}: GET answered {status} {body[:80]!r}")
    routes = m.traffic[0]
    status, _, body = http_once(routes, "GET", url=route_path(1, 0)[0])
    if status != 404:
        raise u.BenchError(f"{routes.name}: a request no route matches answered {status} {body[:80]!r}, not 404")
    return [f"checked: the waypoint holds {', '.join(want)}; each routed path GET 200; an unmatched request 404"]


@dataclass
class Mesh:
    l4: Path_
    l7: Path_
    waypoint_pid: int
    traffic: list[Path_] = field(default_factory=list)  # --traffic: the routed services' paths


PLAIN_WAYPOINT = "ztunnel -> waypoint -> ztunnel"
ROUTES_FIRST = "waypoint, 100x10 routes: first"
ROUTES_LAST = "waypoint, 100x10 routes: last"
SPLIT = "waypoint, 90/10 split"
RETRY = "waypoint, retries (healthy)"


def traffic_paths(socks: str, pids: list[int], wp: int) -> list[Path_]:
    def to(name: str, vip: str, host: str, path: str = PLAIN_PATH, route: str = "") -> Path_:
        return Path_(name, socks, SOCKS5_PORT, (vip, SERVICE_PORT), pids, wp, host, path, route)

    return [
        to(ROUTES_FIRST, VIP_ROUTES, HOST_ROUTES, *route_path(0, 0)),
        to(ROUTES_LAST, VIP_ROUTES, HOST_ROUTES, *route_path(ROUTE_RULES - 1, ROUTE_MATCHES - 1)),
        to(SPLIT, VIP_SPLIT, HOST_SPLIT),
        to(RETRY, VIP_RETRY, HOST_RETRY),
    ]


@contextmanager
def mesh(tmp: Path, profile: Path | None) -> Iterator[Mesh]:
    (tmp / "mesh.yaml").write_text(MESH_CONFIG)
    (tmp / "fake-ca").mkdir(exist_ok=True)
    xds_port = l4.free_port(XDS_IP)
    with ExitStack() as stack:
        xds = stack.enter_context(
            l4.child([sys.executable, __file__, "--serve-xds", str(tmp), XDS_IP, str(xds_port)], tmp / "xds.log")
        )
        u.wait_port(XDS_IP, xds_port, timeout=START_TIMEOUT, alive=lambda: xds.poll() is None)
        ztunnels = []
        for node in ("node-2", "node-1"):
            log = tmp / f"{node}-ztunnel.log"
            proc = stack.enter_context(l4.child([sys.executable, "-P", "-m", "ztunnel"], log, env=ztunnel_env(tmp, node)))
            l4.wait_ready(NODE_IPS[node], proc, log)
            ztunnels.append(proc.pid)
        argv = [sys.executable, "-P", "-m", "waypoint"]
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, __file__, "--profiled-waypoint", str(profile / "waypoint.prof")]
        wp_log = tmp / "waypoint.log"
        wp = stack.enter_context(l4.child(argv, wp_log, env=waypoint_env(tmp, xds_port)))
        wait_waypoint_ready(wp, wp_log)
        (tmp / "proxy.pids").write_text(",".join(str(p) for p in [*ztunnels, wp.pid]))
        socks = NODE_IPS["node-1"]
        yield Mesh(
            Path_("ztunnel pair", socks, SOCKS5_PORT, (VIP_L4, SERVICE_PORT), list(ztunnels)),
            Path_(PLAIN_WAYPOINT, socks, SOCKS5_PORT, (VIP_L7, SERVICE_PORT),
                  [*ztunnels, wp.pid], wp.pid),
            wp.pid,
            traffic_paths(socks, [*ztunnels, wp.pid], wp.pid),
        )


def check_mesh(m: Mesh) -> list[str]:
    """Prove the paths are what they claim: (c) bypasses the waypoint, (d) goes through it and its
    policy is enforced (GET 200, POST 403 ``RBAC: access denied``)."""
    before = waypoint_requests("200")
    status, _, _ = http_once(m.l4, "GET")
    if status != 200 or waypoint_requests("200") != before:
        raise u.BenchError(f"the ztunnel-pair path answered {status} or went through the waypoint")
    status, _, _ = http_once(m.l7, "GET")
    if status != 200 or waypoint_requests("200") != before + 1:
        raise u.BenchError(f"GET through the waypoint service answered {status} or did not reach the waypoint")
    status, _, body = http_once(m.l7, "POST")
    if (status, body) != (403, b"RBAC: access denied"):
        raise u.BenchError(f"POST through the waypoint answered {status} {body!r}, not 403 from the L7 policy")
    return ["checked: server-l4 bypasses the waypoint; server goes through it; GET 200, POST 403 RBAC"]


async def _hold_idle(path: Path_, count: int, pid: int) -> tuple[int, int, int]:
    """Open ``count`` keep-alive connections through node-1 to the waypoint service, one GET answered
    on each, keep them open; (waypoint RSS before, RSS with them open, HBONE connections carrying them)."""
    assert path.target is not None
    base = u.rss_bytes(pid)
    sem = asyncio.Semaphore(50)
    request = request_bytes()
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection(path.host, path.port, local_addr=(CLIENT_IP, 0))
            writers.append(writer)
            writer.write(b"\x05\x01\x00")
            if await reader.readexactly(2) != b"\x05\x00":
                raise u.BenchError("SOCKS5 refused")
            assert path.target is not None
            writer.write(u.socks5_request(*path.target))
            head = await reader.readexactly(5)
            await reader.readexactly(u.socks5_reply_length(head) - 5)
            if head[1] != 0:
                raise u.BenchError(f"SOCKS5 CONNECT failed with reply code {head[1]}")
            writer.write(request)
            response = await reader.readuntil(b"\r\n\r\n")
            if not response.startswith(b"HTTP/1.1 200"):
                raise u.BenchError(f"idle connection's request answered {response[:40]!r}")
            await reader.readexactly(RESPONSE_SIZE)

    try:
        async with asyncio.timeout(600):
            await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.sleep(1.0)  # let the waypoint finish its per-request bookkeeping
        rss = u.rss_bytes(pid)
        hbone = u.established_to(WAYPOINT_IP, HBONE_PORT)
    finally:
        for w in writers:
            w.close()
    return base, rss, hbone


# --- report ---------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[Result]) -> u.Table:
    direct = {r.concurrency: r for r in results if r.path == "direct"}
    rows = []
    for r in results:
        base = direct.get(r.concurrency)
        added = r.p50_ms - base.p50_ms if base is not None and r is not base else None
        rows.append(
            [
                r.path, str(r.concurrency), f"{r.rps:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}", fmt(added, ".3f"),
                fmt(r.proxy_cpu_per_1k, ".3f"), fmt(r.waypoint_cpu_per_1k, ".3f"), f"{r.client_cpu:.0%}",
            ]
        )
    return u.Table(
        ["path", "conns", "req/s", "p50 ms", "p99 ms", "added p50 ms", "proxies CPU s/1k req",
         "waypoint CPU s/1k req", "client CPU"],
        rows,
    )


def targets(results: list[Result]) -> list[str]:
    by = {(r.path, r.concurrency): r for r in results}
    lines = []
    wp = [r for r in results if r.waypoint_cpu_per_1k is not None]
    if wp:
        worst = max(r.waypoint_cpu_per_1k for r in wp if r.waypoint_cpu_per_1k is not None)
        each = ", ".join(f"{r.waypoint_cpu_per_1k:.3f} at {r.concurrency}" for r in wp)
        lines.append(
            f"waypoint CPU per 1000 requests: {each} (target <= {WAYPOINT_CPU_PER_1K}): "
            f"{l4._ok(worst <= WAYPOINT_CPU_PER_1K)}"
        )
    concs = sorted({r.concurrency for r in results})
    for c in concs:
        a, b = by.get(("direct", c)), by.get(("haproxy (mode http)", c))
        cc, d = by.get(("ztunnel pair", c)), by.get(("ztunnel -> waypoint -> ztunnel", c))
        if a and b and cc and d:
            hop, hap = d.p50_ms - cc.p50_ms, b.p50_ms - a.p50_ms
            ratio = hop / hap if hap > 0 else float("inf")
            lines.append(
                f"added p50 at {c} conns: waypoint hop (d-c) {hop:.3f} ms vs HAProxy (b-a) {hap:.3f} ms = "
                f"{ratio:.2f}x (target <= {ADDED_P50_VS_HAPROXY}x): {l4._ok(ratio <= ADDED_P50_VS_HAPROXY)}"
            )
    return lines


def median_results(runs: list[Result]) -> list[Result]:
    """One Result per (path, concurrency), in first-seen order: each figure the median of its rounds."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in runs:
        groups.setdefault((r.path, r.concurrency), []).append(r)

    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    out = []
    for (path, c), rs in groups.items():
        out.append(Result(
            path, c, statistics.median(r.rps for r in rs), statistics.median(r.p50_ms for r in rs),
            statistics.median(r.p99_ms for r in rs), med([r.proxy_cpu_per_1k for r in rs]),
            med([r.waypoint_cpu_per_1k for r in rs]), statistics.median(r.client_cpu for r in rs),
        ))
    return out


def traffic_table(results: list[Result]) -> u.Table:
    """Each routed path against the plain waypoint at the same concurrency (medians of the rounds)."""
    plain = {r.concurrency: r for r in results if r.path == PLAIN_WAYPOINT}
    rows = []
    for r in results:
        base = plain.get(r.concurrency)
        loss = 1 - r.rps / base.rps if base is not None and r is not base else None
        added = r.p50_ms - base.p50_ms if base is not None and r is not base else None
        cpu = None
        if base is not None and r is not base and r.waypoint_cpu_per_1k and base.waypoint_cpu_per_1k:
            cpu = (r.waypoint_cpu_per_1k / base.waypoint_cpu_per_1k - 1) * 100
        rows.append([
            r.path, str(r.concurrency), f"{r.rps:,.0f}", fmt(None if loss is None else loss * 100, "+.1f"),
            f"{r.p50_ms:.3f}", fmt(added, "+.3f"), f"{r.p99_ms:.3f}", fmt(r.waypoint_cpu_per_1k, ".3f"),
            fmt(cpu, "+.1f"),
        ])
    return u.Table(["path", "conns", "req/s", "loss vs plain %", "p50 ms", "p50 vs plain ms", "p99 ms",
                    "waypoint CPU s/1k req", "waypoint CPU vs plain %"], rows)


def traffic_targets(results: list[Result]) -> list[str]:
    plain = {r.concurrency: r for r in results if r.path == PLAIN_WAYPOINT}
    lines = []
    for r in results:
        base = plain.get(r.concurrency)
        if r.path in (ROUTES_FIRST, ROUTES_LAST) and base is not None:
            loss = 1 - r.rps / base.rps
            cpu = ""
            if r.waypoint_cpu_per_1k and base.waypoint_cpu_per_1k:
                # The waypoint's capacity (one event loop): 1 / its CPU per request.
                capacity = 1 - base.waypoint_cpu_per_1k / r.waypoint_cpu_per_1k
                cpu = f"; waypoint capacity from its CPU per request {-capacity:+.1%}"
            lines.append(
                f"{r.path} at {r.concurrency} conns: req/s {-loss:+.1%} vs the plain waypoint{cpu} "
                f"(target: loss < {ROUTES_LOSS_TARGET:.0%}): {l4._ok(loss < ROUTES_LOSS_TARGET)}"
            )
    return lines


def run_traffic(m: Mesh, concurrency: list[int], rounds: int, warmup: float, duration: float) -> list[Result]:
    """Every routed path and the plain waypoint, interleaved, ``rounds`` times per concurrency, the order
    rotated each round (so no path always runs first or after the same one); prints each measurement as
    it is taken and returns them all."""
    runs: list[Result] = []
    paths = [m.l7, *m.traffic]
    for c in concurrency:
        for i in range(rounds):
            for path in paths[i % len(paths):] + paths[: i % len(paths)]:
                runs.append(measure(path, c, warmup, duration))
                print(f"round {i + 1}: " + traffic_table(runs[-1:]).render().splitlines()[-1], flush=True)
    return runs


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per point, 300 idle connections")
    parser.add_argument("--duration", type=float, help="measured seconds per path and concurrency (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--idle", type=int, help="idle downstream connections for the RSS figure (default 2000; 0 skips)")
    parser.add_argument("--only", choices=["direct", "haproxy", "ztunnel", "waypoint"], action="append")
    parser.add_argument(
        "--traffic", action="store_true",
        help="measure routing instead (100x10 routes first/last, 90/10 split, retries) vs the plain waypoint",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--traffic: interleaved rounds per concurrency")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="run the waypoint under cProfile (CPU clock), print the top"
    )
    parser.add_argument("--workdir", type=Path, metavar="DIR", help="keep configs and logs here")
    parser.add_argument("--serve-http", nargs=2, metavar=("HOST", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-xds", nargs=3, metavar=("DIR", "HOST", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--load", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--profiled-waypoint", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_http:
        serve_http(args.serve_http[0], int(args.serve_http[1]))
        return 0
    if args.serve_xds:
        serve_xds(args.serve_xds[0], args.serve_xds[1], int(args.serve_xds[2]))
        return 0
    if args.profiled_waypoint:
        profiled_waypoint(args.profiled_waypoint)
        return 0
    if args.load:
        raw = json.loads(args.load)
        raw["target"] = tuple(raw["target"]) if raw["target"] else None
        print(json.dumps(run_load(LoadSpec(**raw))))
        return 0

    duration = args.duration or (2.0 if args.quick else 5.0)
    idle = args.idle if args.idle is not None else (0 if args.traffic else 300 if args.quick else 2000)
    only = {"waypoint"} if args.traffic else set(args.only or ["direct", "haproxy", "ztunnel", "waypoint"])
    u.raise_nofile(4 * idle + 2000)
    print(f"# L7 loopback benchmark: {l4.machine()}, load average {os.getloadavg()[0]:.2f}")
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# code measured: {ROOT} ({u.source_revision(ROOT)})")
    print(
        f"# 1 KiB GET requests, 1 KiB responses, keep-alive, one outstanding per connection; "
        f"{args.warmup:g} s warm-up + {duration:g} s measured per point; concurrencies {args.concurrency}"
    )

    results: list[Result] = []
    runs: list[Result] = []  # --traffic: every round's measurement
    notes: list[str] = []

    def run(path: Path_) -> None:
        for c in args.concurrency:
            results.append(measure(path, c, args.warmup, duration))
            print(table(results[-1:]).render().splitlines()[-1], flush=True)

    with ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = args.workdir
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-l7-")))
        backend = stack.enter_context(
            l4.child([sys.executable, __file__, "--serve-http", SERVER_IP, str(BACKEND_PORT)], tmp / "backend.log")
        )
        u.wait_port(SERVER_IP, BACKEND_PORT, timeout=START_TIMEOUT, alive=lambda: backend.poll() is None)
        print("# " + " | ".join((traffic_table if args.traffic else table)([]).headers), flush=True)
        if "direct" in only:
            run(Path_("direct", SERVER_IP, BACKEND_PORT))
        if "haproxy" in only:
            with haproxy(tmp) as path:
                run(path)
        if only & {"ztunnel", "waypoint"}:
            with mesh(tmp, args.profile) as m:
                notes += check_mesh(m)
                if args.traffic:
                    notes += check_traffic(m)
                    split_before = [waypoint_requests("200", h) for h in (HOST_SPLIT, HOST_SPLIT_B)]
                    runs = run_traffic(m, args.concurrency, args.rounds, args.warmup, duration)
                    split = [waypoint_requests("200", h) - b for h, b in zip((HOST_SPLIT, HOST_SPLIT_B),
                                                                              split_before, strict=True)]
                    if sum(split):
                        notes.append(f"90/10 split as served: {split[0] / sum(split):.1%} to {HOST_SPLIT}, "
                                     f"{split[1] / sum(split):.1%} to {HOST_SPLIT_B} ({sum(split):,.0f} requests)")
                elif "ztunnel" in only:
                    run(m.l4)
                if "waypoint" in only and not args.traffic:
                    run(m.l7)
                if idle:
                    base, rss, hbone = asyncio.run(_hold_idle(m.l7, idle, m.waypoint_pid))
                    notes.append(
                        f"waypoint RSS per idle downstream connection: {(rss - base) / idle / 1024:.1f} KiB "
                        f"({base / 2**20:.1f} -> {rss / 2**20:.1f} MiB with {idle} open, one GET answered on each, "
                        f"carried by {hbone} HBONE connections from node-1)"
                    )
                    print(f"# {notes[-1]}", flush=True)

    print()
    if args.traffic:
        medians = median_results(runs)
        print(f"# medians of {args.rounds} interleaved rounds")
        print(traffic_table(medians).render())
        print()
        for line in [*notes, *traffic_targets(medians)]:
            print(line)
    else:
        print(table(results).render())
        print()
        for line in [*notes, *targets(results)]:
            print(line)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    if args.profile is not None:
        prof = args.profile / "waypoint.prof"
        if prof.exists():
            print("\n# cProfile of the waypoint (whole run, CPU time of its event-loop thread), top 30 by own time:")
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(30)
            print("# top 30 by cumulative time:")
            pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(30)
        else:
            print("# no waypoint profile: did it exit cleanly on SIGTERM?")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except u.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

"""Benchmark: the L4 data plane on loopback — direct vs a stunnel pair vs a ztunnel pair, in one run.

Paths: (a) client -> server; (b) client -> stunnel (client mode) -> TLS 1.3 mTLS -> stunnel (server
mode) -> server; (c) client -> SOCKS5 on node-1's ztunnel -> HBONE (mTLS, HTTP/2 CONNECT) -> node-2's
ztunnel -> server. Both ztunnels are real ``ztunnel`` processes in dedicated mode with a local config
file (LOCAL_XDS_PATH) and the fake CA; the server is a separate process. Per path it reports
single-stream throughput (best of 3), 1 KiB request/response latency (p50, p99 on one connection), the
proxies' CPU seconds per 1000 requests, and for ztunnel the memory per idle tunnel with many open and
whether a new connection on a warm pool opened a new TLS connection. Never part of the test run.

    .venv/bin/python bench/l4.py [--quick] [--tunnels 10000] [--profile DIR | --memory-profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util as u  # noqa: E402  (bench/ is not a package)

SERVER_IP = "127.0.42.12"  # the server workload, on node-2
CLIENT_IP = "127.0.42.11"  # the client workload, on node-1
STUNNEL_CLIENT_IP = "127.0.42.21"
STUNNEL_SERVER_IP = "127.0.42.22"
START_TIMEOUT = 30.0

# Targets from issue 3.
THROUGHPUT_VS_STUNNEL = 0.8
ADDED_P50_VS_STUNNEL = 1.5
IDLE_TUNNEL_BYTES = 16 * 1024


@dataclass
class Result:
    name: str
    throughput_gbps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_per_1k: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Path_:
    """One way from the client to the server: how to connect, and which processes to charge CPU to."""

    name: str
    echo: u.Connector
    sink: u.Connector
    proxy_pids: list[int]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def child(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with stdout+stderr to ``log``, terminated (then killed) on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- measurements ---------------------------------------------------------------------------------


def measure(path: Path_, nbytes: int, trips: int) -> Result:
    result = Result(path.name)
    best = min(u.throughput_once(path.sink, nbytes) for _ in range(3))
    result.throughput_gbps = nbytes * 8 / best / 1e9
    cpu_before = sum(u.cpu_seconds(pid) for pid in path.proxy_pids)
    samples = u.round_trips(path.echo, trips)
    cpu_after = sum(u.cpu_seconds(pid) for pid in path.proxy_pids)
    result.p50_ms = u.percentile(samples, 50) * 1e3
    result.p99_ms = u.percentile(samples, 99) * 1e3
    if path.proxy_pids:
        # The warm-up round trips are charged too: slightly pessimistic, never flattering.
        result.cpu_per_1k = (cpu_after - cpu_before) / (trips + 50) * 1000
    return result


# --- (b) stunnel pair -----------------------------------------------------------------------------


def write_stunnel_certs(tmp: Path) -> None:
    """A CA and two P-256 leaves (client, server) for mutual TLS between the stunnels."""
    from meshcore.tls import certs

    now = datetime.now(UTC)
    ca_key = certs.generate_key()
    ca = certs.build_ca_certificate(
        ca_key,
        common_name="bench CA",
        organization="bench",
        not_before=now,
        not_after=now + timedelta(days=1),
    )
    (tmp / "ca.pem").write_text(certs.cert_to_pem(ca))
    for name in ("client", "server"):
        key = certs.generate_key()
        leaf = certs.build_leaf_certificate(
            key.public_key(),
            issuer_cert=ca,
            issuer_key=ca_key,
            not_before=now - timedelta(minutes=1),
            not_after=now + timedelta(days=1),
            dns_names=[f"{name}.bench"],
        )
        (tmp / f"{name}.pem").write_text(certs.cert_to_pem(leaf))
        key_path = tmp / f"{name}.key"
        key_path.touch(mode=0o600)
        key_path.write_text(certs.key_to_pem(key))


def stunnel_conf(tmp: Path, role: str, services: dict[str, tuple[str, str]]) -> Path:
    lines = [
        "foreground = yes",
        "pid =",
        f"output = {tmp / (role + '-stunnel.log')}",
        "debug = 6",
        "",
    ]
    for name, (accept, connect) in services.items():
        lines += [
            f"[{name}]",
            f"client = {'yes' if role == 'client' else 'no'}",
            f"accept = {accept}",
            f"connect = {connect}",
            f"cert = {tmp / (role + '.pem')}",
            f"key = {tmp / (role + '.key')}",
            f"CAfile = {tmp / 'ca.pem'}",
            "verifyChain = yes",
            "sslVersionMin = TLSv1.3",
            "socket = l:TCP_NODELAY=1",
            "socket = r:TCP_NODELAY=1",
            "",
        ]
    conf = tmp / f"{role}-stunnel.conf"
    conf.write_text("\n".join(lines))
    return conf


@contextmanager
def stunnel_pair(tmp: Path, echo_port: int, sink_port: int) -> Iterator[Path_]:
    binary = shutil.which("stunnel4") or shutil.which("stunnel")
    if binary is None:
        raise u.BenchError("stunnel is not installed (Debian package stunnel4)")
    write_stunnel_certs(tmp)
    c_echo, c_sink = free_port(STUNNEL_CLIENT_IP), free_port(STUNNEL_CLIENT_IP)
    s_echo, s_sink = free_port(STUNNEL_SERVER_IP), free_port(STUNNEL_SERVER_IP)
    server_conf = stunnel_conf(
        tmp,
        "server",
        {
            "echo": (f"{STUNNEL_SERVER_IP}:{s_echo}", f"{SERVER_IP}:{echo_port}"),
            "sink": (f"{STUNNEL_SERVER_IP}:{s_sink}", f"{SERVER_IP}:{sink_port}"),
        },
    )
    client_conf = stunnel_conf(
        tmp,
        "client",
        {
            "echo": (f"{STUNNEL_CLIENT_IP}:{c_echo}", f"{STUNNEL_SERVER_IP}:{s_echo}"),
            "sink": (f"{STUNNEL_CLIENT_IP}:{c_sink}", f"{STUNNEL_SERVER_IP}:{s_sink}"),
        },
    )
    with ExitStack() as stack:
        server = stack.enter_context(child([binary, str(server_conf)], tmp / "server-stunnel.out"))
        client = stack.enter_context(child([binary, str(client_conf)], tmp / "client-stunnel.out"))
        for proc, ip, port in ((server, STUNNEL_SERVER_IP, s_sink), (client, STUNNEL_CLIENT_IP, c_sink)):
            try:
                u.wait_port(ip, port, timeout=START_TIMEOUT, alive=lambda p=proc: p.poll() is None)
            except u.BenchError as e:
                raise u.BenchError(f"{e}\n{tail(tmp / 'server-stunnel.log')}") from None
        yield Path_(
            "stunnel pair",
            u.tcp_connector(STUNNEL_CLIENT_IP, c_echo),
            u.tcp_connector(STUNNEL_CLIENT_IP, c_sink),
            [client.pid, server.pid],
        )
        log = (tmp / "server-stunnel.log").read_text(errors="replace")
        if "TLSv1.3 ciphersuite" not in log or "Certificate accepted" not in log:
            raise u.BenchError(
                f"the stunnel pair did not negotiate mutual TLS 1.3:\n{tail(tmp / 'server-stunnel.log')}"
            )


# --- report ---------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(results: list[Result]) -> u.Table:
    direct = next((r for r in results if r.name == "direct"), None)
    rows = []
    for r in results:
        added = None
        if direct is not None and r is not direct and r.p50_ms is not None and direct.p50_ms is not None:
            added = r.p50_ms - direct.p50_ms
        rows.append(
            [
                r.name,
                fmt(r.throughput_gbps, ".2f"),
                fmt(r.p50_ms, ".3f"),
                fmt(r.p99_ms, ".3f"),
                fmt(added, ".3f"),
                fmt(r.cpu_per_1k, ".3f"),
            ]
        )
    return u.Table(
        ["path", "throughput Gbit/s", "p50 ms", "p99 ms", "added p50 ms", "proxy CPU s / 1000 req"], rows
    )


def targets(results: list[Result], extra: dict[str, str]) -> list[str]:
    by = {r.name: r for r in results}
    lines: list[str] = []
    direct, st, zt = by.get("direct"), by.get("stunnel pair"), by.get("ztunnel pair")
    if st and zt and st.throughput_gbps and zt.throughput_gbps:
        ratio = zt.throughput_gbps / st.throughput_gbps
        ok = ratio >= THROUGHPUT_VS_STUNNEL
        lines.append(
            f"throughput ztunnel/stunnel = {ratio:.2f} (target >= {THROUGHPUT_VS_STUNNEL}): {_ok(ok)}"
        )
    if direct and st and zt and None not in (direct.p50_ms, st.p50_ms, zt.p50_ms):
        assert direct.p50_ms is not None and st.p50_ms is not None and zt.p50_ms is not None
        added_st, added_zt = st.p50_ms - direct.p50_ms, zt.p50_ms - direct.p50_ms
        ratio = added_zt / added_st if added_st > 0 else float("inf")
        ok = ratio <= ADDED_P50_VS_STUNNEL
        lines.append(f"added p50 ztunnel/stunnel = {ratio:.2f} (target <= {ADDED_P50_VS_STUNNEL}): {_ok(ok)}")
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return lines


def _ok(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine() -> str:
    return (
        f"{os.cpu_count()} cores (shared), {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}"
    )


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller transfers, fewer round trips and tunnels"
    )
    parser.add_argument("--mib", type=int, help="MiB per throughput run (default 256, quick 32)")
    parser.add_argument("--round-trips", type=int, help="1 KiB round trips (default 5000, quick 500)")
    parser.add_argument(
        "--tunnels",
        type=int,
        help="idle tunnels for the memory figure (default 10000, quick 1000; 0 skips it)",
    )
    parser.add_argument("--only", choices=["direct", "stunnel", "ztunnel"], action="append")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="run the ztunnels under cProfile, write DIR/node-N.prof"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep certificates, configs and logs here (default: a temp dir)",
    )
    parser.add_argument(
        "--memory-profile",
        type=Path,
        metavar="DIR",
        help="run the ztunnels under tracemalloc and show what the idle tunnels allocate (slower; RSS inflated)",
    )
    parser.add_argument("--traced-ztunnel", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=3, metavar=("HOST", "ECHO", "SINK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        u.serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return 0
    if args.traced_ztunnel:
        from ztunnel.__main__ import main as ztunnel_main

        sys.argv = ["ztunnel"]
        u.traced_main(args.traced_ztunnel, ztunnel_main)
        return 0

    nbytes = (args.mib or (32 if args.quick else 256)) << 20
    trips = args.round_trips or (500 if args.quick else 5000)
    tunnels = args.tunnels if args.tunnels is not None else (1000 if args.quick else 10000)
    only = set(args.only or ["direct", "stunnel", "ztunnel"])
    u.raise_nofile(2 * tunnels + 1000)
    print(f"# L4 loopback benchmark: {machine()}")
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# throughput: {nbytes >> 20} MiB one way, best of 3; latency: {trips} x 1 KiB round trips")

    results: list[Result] = []
    extra: dict[str, str] = {}
    with ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = args.workdir
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-l4-")))
        echo_port, sink_port = free_port(SERVER_IP), free_port(SERVER_IP)
        server = stack.enter_context(
            child(
                [sys.executable, __file__, "--serve", SERVER_IP, str(echo_port), str(sink_port)],
                tmp / "server.log",
            )
        )
        u.wait_port(SERVER_IP, sink_port, timeout=START_TIMEOUT, alive=lambda: server.poll() is None)

        if "direct" in only:
            direct = Path_(
                "direct", u.tcp_connector(SERVER_IP, echo_port), u.tcp_connector(SERVER_IP, sink_port), []
            )
            results.append(measure(direct, nbytes, trips))
            print(results_table(results[-1:]).render().splitlines()[-1], flush=True)
        if "stunnel" in only:
            with stunnel_pair(tmp, echo_port, sink_port) as path:
                results.append(measure(path, nbytes, trips))
            print(results_table(results[-1:]).render().splitlines()[-1], flush=True)
        if "ztunnel" in only:
            results.append(
                run_ztunnel(
                    tmp,
                    echo_port,
                    sink_port,
                    nbytes,
                    trips,
                    tunnels,
                    extra,
                    Profiling(args.profile, args.memory_profile),
                )
            )

    print()
    print(results_table(results).render())
    print()
    for line in targets(results, extra):
        print(line)
    return 0


# --- (c) ztunnel pair -----------------------------------------------------------------------------

NODE_IPS = {"node-1": "127.0.42.1", "node-2": "127.0.42.2"}
HBONE_PORT = 15008
ADMIN_PORT, STATS_PORT, READY_PORT, SOCKS5_PORT = 15000, 15020, 15021, 15080

LOCAL_CONFIG = f"""\
workloads:
- {{name: client, namespace: bench, serviceAccount: client, workloadIps: [{CLIENT_IP}], protocol: HBONE,
   node: node-1}}
- {{name: server, namespace: bench, serviceAccount: server, workloadIps: [{SERVER_IP}], protocol: HBONE,
   node: node-2}}
"""


def ztunnel_env(tmp: Path, node: str) -> dict[str, str]:
    ip = NODE_IPS[node]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDS_", "CA_"))}
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
            # One access-log line per connection is part of the cost; warning keeps it off for the
            # 10,000-tunnel run the way a busy node would sample it, and is reported as such.
            "LOG_LEVEL": os.environ.get("BENCH_ZTUNNEL_LOG_LEVEL", "warning"),
        }
    )
    return env


def wait_ready(ip: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://{ip}:{READY_PORT}/healthz/ready"
    while True:
        if proc.poll() is not None:
            raise u.BenchError(f"ztunnel at {ip} exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise u.BenchError(f"ztunnel at {ip} not ready after {START_TIMEOUT}s:\n{tail(log)}")
        time.sleep(0.1)


@dataclass
class Profiling:
    """How to run the ztunnels: under cProfile (``cpu``) or tracemalloc (``memory``), or neither."""

    cpu: Path | None = None
    memory: Path | None = None

    def argv(self, node: str) -> list[str]:
        if self.cpu is not None:
            self.cpu.mkdir(parents=True, exist_ok=True)
            return [sys.executable, "-m", "cProfile", "-o", str(self.cpu / f"{node}.prof"), "-m", "ztunnel"]
        if self.memory is not None:
            self.memory.mkdir(parents=True, exist_ok=True)
            return [sys.executable, __file__, "--traced-ztunnel", str(self.memory)]
        return [sys.executable, "-m", "ztunnel"]


@contextmanager
def ztunnel_pair(tmp: Path, echo_port: int, sink_port: int, profiling: Profiling) -> Iterator[Path_]:
    """Both ztunnels running and ready; the path's ``proxy_pids`` are node-2's then node-1's."""
    (tmp / "mesh.yaml").write_text(LOCAL_CONFIG)
    (tmp / "fake-ca").mkdir(exist_ok=True)
    with ExitStack() as stack:
        procs = []
        for node in ("node-2", "node-1"):
            log = tmp / f"{node}-ztunnel.log"
            proc = stack.enter_context(child(profiling.argv(node), log, env=ztunnel_env(tmp, node)))
            wait_ready(NODE_IPS[node], proc, log)
            procs.append(proc)
        socks = (NODE_IPS["node-1"], SOCKS5_PORT)
        # For attaching perf from outside: ``perf record -g -p $(cat DIR/ztunnel.pids)``.
        (tmp / "ztunnel.pids").write_text(",".join(str(p.pid) for p in procs))
        yield Path_(
            "ztunnel pair",
            u.socks5_connector(socks, SERVER_IP, echo_port, source=CLIENT_IP),
            u.socks5_connector(socks, SERVER_IP, sink_port, source=CLIENT_IP),
            [p.pid for p in procs],
        )


def warm_pool_handshakes(path: Path_) -> tuple[int, int]:
    """HBONE (TLS) connections to the server's ztunnel before and after a new app connection on a warm pool."""
    with path.echo() as sock:  # warm the pool, then leave it idle
        sock.sendall(b"w")
        u.recv_exactly(sock, 1)
    before = u.established_to(SERVER_IP, HBONE_PORT)
    with path.echo() as sock:
        sock.sendall(b"n")
        u.recv_exactly(sock, 1)
        after = u.established_to(SERVER_IP, HBONE_PORT)
    return before, after


def _poke(node: str) -> Callable[[], None]:
    def poke() -> None:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://{NODE_IPS[node]}:{READY_PORT}/healthz/ready", timeout=5).close()

    return poke


def idle_tunnel_memory(
    path: Path_, echo_port: int, count: int, profiling: Profiling
) -> tuple[float, int, int]:
    """(bytes per idle tunnel over both ztunnels, tunnels opened, HBONE connections carrying them)."""
    pids = dict(zip(("node-2", "node-1"), path.proxy_pids, strict=True))
    snaps: dict[str, list[str]] = {node: [] for node in pids}

    def snapshot() -> None:
        if profiling.memory is not None:
            for node, pid in pids.items():
                n = len(snaps[node])
                snaps[node].append(u.request_snapshot(pid, str(profiling.memory), n, _poke(node)))

    snapshot()
    base = sum(u.rss_bytes(pid) for pid in pids.values())

    async def hold() -> tuple[int, int, int]:
        socks = (NODE_IPS["node-1"], SOCKS5_PORT)
        writers = await u.open_idle_tunnels(count, socks, SERVER_IP, echo_port, source=CLIENT_IP)
        try:
            await asyncio.sleep(1.0)  # let the proxies finish their bookkeeping for the last ones
            rss = sum(u.rss_bytes(pid) for pid in pids.values())
            hbone = u.established_to(SERVER_IP, HBONE_PORT)
            await asyncio.to_thread(snapshot)
            return rss, len(writers), hbone
        finally:
            for w in writers:
                w.close()

    rss, opened, hbone = asyncio.run(hold())
    for node, taken in snaps.items():
        if not taken:
            continue
        before, after = taken
        print(f"\n# {node}'s ztunnel: live allocations added per idle tunnel, by call site (tracemalloc)")
        for line in u.allocation_growth(before, after, opened):
            print(f"#   {line}")
    return (rss - base) / opened, opened, hbone


def run_ztunnel(
    tmp: Path,
    echo_port: int,
    sink_port: int,
    nbytes: int,
    trips: int,
    tunnels: int,
    extra: dict[str, str],
    profiling: Profiling,
) -> Result:
    with ztunnel_pair(tmp, echo_port, sink_port, profiling) as path:
        result = measure(path, nbytes, trips)
        print(results_table([result]).render().splitlines()[-1], flush=True)
        before, after = warm_pool_handshakes(path)
        ok = after == before
        extra["new connection on a warm pool"] = (
            f"HBONE connections {before} -> {after}: {'no new TLS handshake' if ok else 'NEW TLS CONNECTION'}"
            f" ({_ok(ok)})"
        )
        print(f"# warm pool: {extra['new connection on a warm pool']}", flush=True)
        if tunnels:
            per, opened, hbone = idle_tunnel_memory(path, echo_port, tunnels, profiling)
            ok = per < IDLE_TUNNEL_BYTES
            traced = " (RSS inflated by tracemalloc)" if profiling.memory is not None else ""
            extra["memory per idle tunnel"] = (
                f"{per / 1024:.1f} KiB over both ztunnels at {opened} tunnels on {hbone} HBONE connections"
                f" (target < {IDLE_TUNNEL_BYTES // 1024} KiB): {_ok(ok)}{traced}"
            )
            print(f"# idle tunnels: {extra['memory per idle tunnel']}", flush=True)
    if profiling.cpu is not None:
        for node in ("node-1", "node-2"):
            prof = profiling.cpu / f"{node}.prof"
            if not prof.exists():
                print(f"# no profile for {node}: did ztunnel exit cleanly on SIGTERM?", flush=True)
                continue
            print(f"\n# cProfile of {node}'s ztunnel (whole run), top 25 by own time:")
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)
    return result


if __name__ == "__main__":
    try:
        sys.exit(main())
    except u.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

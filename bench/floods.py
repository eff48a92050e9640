"""Benchmark: HTTP/2 and handshake floods against the HBONE listener, for any source tree (before/after).

For each source tree given with ``--tree`` (e.g. the commit before the flood fixes, checked out in a git
worktree, and the current checkout) and each flood, it starts fresh processes:

- **app**: a loopback echo server (its own process, stdlib + uvloop), counting the connections it got;
- **server**: an HBONE listener (``serve_hbone`` on 127.0.0.1, mTLS with a certificate from the fake CA
  whose root is shared through a temp dir) whose ``on_tunnel`` dials the app and relays, as ztunnel's
  inbound does. It runs with ``PYTHONPATH=<tree>``, so that tree's ``meshcore`` is what is measured, and
  with ztunnel's defaults (uvloop, listener defaults, ``RLIMIT_NOFILE`` 20,000 as in issue 12). It only
  uses APIs present both before (722cce8) and after the fixes;
- **good client**: its own process, one HBONE connection, echo round trips (CONNECT, 4 bytes, EOF, echo,
  close) every ``--good-interval`` seconds with a ``--good-timeout`` per round trip (a failure makes it
  reconnect), each timestamped on the system-wide monotonic clock.

Then the bench process samples the server's VmRSS (/proc/<pid>/status) and open fds (/proc/<pid>/fd)
every 10 ms from a thread, lets the good client run alone for a baseline, runs the flood from its own
event loop (the raw attacker of the test kit, ``meshcore.testing.h2attack``), closes the attacking
connections, waits for the server to settle (fds back near the baseline, bounded), and reports: the
good client's p50/p99/max and failures during [attack start, settled], the server's peak RSS and fds in
that window, RSS and fds once settled, whether the attacking connection was cut (GOAWAY with its code,
reset/EOF, or still open), how many connections reached the app, and the server's own counters.

Floods: ``rapid-reset-10k``/``rapid-reset-25k`` (HEADERS(CONNECT)+RST_STREAM pairs in batches of 500),
``continuation`` (8 connections, each HEADERS without END_HEADERS + 63 x 1 MiB CONTINUATION),
``ping`` (PINGs in batches of 5000 from a peer with a 4 KiB receive buffer that never reads, up to 2M),
``idle-handshakes`` (5000 TCP connections that never start TLS, held 5 s, below the 10 s handshake
timeout; a fresh good connection is tried while they are held). Every step has a deadline; every child
is killed at the end of its run. Never part of the test run.

    .venv/bin/python bench/floods.py --tree before=/tmp/before-fixes --tree after=. [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util as u  # noqa: E402  (bench/ is not a package)

REPO = Path(__file__).resolve().parent.parent
TRUST_DOMAIN = "cluster.local"
SERVER_SA = ("default", "ztunnel")
CLIENT_SA = ("default", "sleep")
HOST = "127.0.0.1"
AUTHORITY = "127.0.0.1:80"  # the good client's tunnels: the server dials the app's "good" port
ATTACK_AUTHORITY = "127.0.0.1:81"  # the attacker's: the app's "attack" port (counted apart)
MiB = 1 << 20
START_TIMEOUT = 30.0
SAMPLE_INTERVAL = 0.01
BASELINE_SECONDS = 1.0
SETTLE_TIMEOUT = 15.0
SETTLE_EXTRA = 1.0  # after fds are back: let the allocator and late callbacks run before reading RSS
CUT_WAIT = 5.0  # how long after its last frame an attacker waits for GOAWAY/EOF before saying "open"
SERVER_NOFILE = 20_000  # issue 12's measurements ran with this limit


# --- children ---------------------------------------------------------------------------------------


def _write_json(path: str, data: object) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.rename(tmp, path)


def _run_loop(main: Callable[[], Awaitable[None]], loop_name: str) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def child_server(args: argparse.Namespace) -> None:
    """The HBONE listener under test. Imports come from PYTHONPATH=<tree>: keep to 722cce8's APIs."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # exactly --nofile, lower than the bench's own
    resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, max(hard, args.nofile)))

    import dataclasses

    import meshcore
    from meshcore.aio.hbone_server import HboneServerCounters, TunnelRequest, serve_hbone
    from meshcore.aio.relay import relay
    from meshcore.aio.streams import AsyncioByteStream
    from meshcore.identity import SpiffeId
    from meshcore.logs import configure_logging
    from meshcore.tls.contexts import server_context
    from meshcore.tls.verify import verify_peer

    try:
        from meshcore.testing.shared_ca import SharedFakeCa
    except ImportError:  # 722cce8: the shared fake CA still lived in ztunnel
        from ztunnel.fake_ca import SharedFakeCa  # type: ignore[no-redef]

    configure_logging(args.log_level, "json")

    async def main() -> None:
        ca = SharedFakeCa(Path(args.ca_dir), TRUST_DOMAIN)
        bundle = await ca.fetch(SpiffeId(TRUST_DOMAIN, *SERVER_SA))
        counters = HboneServerCounters()

        async def on_tunnel(request: TunnelRequest) -> None:  # ztunnel's inbound, minus policy
            port = args.attack_app_port if request.authority == ATTACK_AUTHORITY else args.app_port
            reader, writer = await asyncio.open_connection(HOST, port)
            upstream = AsyncioByteStream(reader, writer)
            try:
                stream = await request.accept()
            except BaseException:
                writer.close()
                raise
            await relay(stream, upstream)

        server = await serve_hbone(
            HOST, 0, server_context(bundle),
            lambda der: verify_peer(der, trust_domain=TRUST_DOMAIN), on_tunnel,
            counters=counters,
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        _write_json(args.ready, {"port": server.port, "pid": os.getpid(), "meshcore": meshcore.__file__})
        await stop.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await server.aclose()
        _write_json(args.out, dataclasses.asdict(counters))

    _run_loop(main, args.loop)


def child_echo(args: argparse.Namespace) -> None:
    """The app the server dials: echo on two ports (good, attack), counting connections per port."""
    u.raise_nofile(args.nofile)
    stats = {which: {"accepted": 0, "open": 0, "peak_open": 0} for which in ("good", "attack")}

    class Echo(asyncio.Protocol):
        def __init__(self, which: str) -> None:
            self.counts = stats[which]

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.counts["accepted"] += 1
            self.counts["open"] += 1
            self.counts["peak_open"] = max(self.counts["peak_open"], self.counts["open"])

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

        def eof_received(self) -> bool:
            return False  # close once the tunnel half-closed and the echo is written

        def connection_lost(self, exc: Exception | None) -> None:
            self.counts["open"] -= 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = {w: await loop.create_server(lambda w=w: Echo(w), HOST, 0, backlog=4096) for w in stats}
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        ports = {w: s.sockets[0].getsockname()[1] for w, s in servers.items()}
        _write_json(args.ready, {"ports": ports, "pid": os.getpid()})
        await stop.wait()
        for server in servers.values():
            server.close()
        _write_json(args.out, stats)

    _run_loop(main, args.loop)


def child_good(args: argparse.Namespace) -> None:
    """The well-behaved client: round trips on its own connection until SIGTERM (or --max-seconds)."""
    from meshcore.aio.hbone_client import HboneClient
    from meshcore.identity import SpiffeId
    from meshcore.testing.shared_ca import SharedFakeCa
    from meshcore.tls.contexts import client_context
    from meshcore.tls.verify import verify_peer

    async def main() -> None:
        ca = SharedFakeCa(Path(args.ca_dir), TRUST_DOMAIN)
        ctx = client_context(await ca.fetch(SpiffeId(TRUST_DOMAIN, *CLIENT_SA)))
        expected = [SpiffeId(TRUST_DOMAIN, *SERVER_SA)]
        records: list[tuple[float, float | None, str | None]] = []  # (start, seconds | None, error)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        client: HboneClient | None = None
        ready = False
        deadline = time.monotonic() + args.max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                async with asyncio.timeout(args.timeout):
                    if client is None:
                        client = await HboneClient.connect(
                            HOST, args.port, ssl_context=ctx, verify=lambda der: verify_peer(der, expected=expected)
                        )
                    stream = await client.open_tunnel(AUTHORITY)
                    await stream.send_all(b"ping")
                    await stream.send_eof()
                    echoed = await stream.receive_some()
                    await stream.aclose()
                if echoed != b"ping":
                    raise RuntimeError(f"echo returned {echoed!r}")
                records.append((started, time.monotonic() - started, None))
                if not ready:
                    _write_json(args.ready, {"pid": os.getpid()})
                    ready = True
            except Exception as exc:  # noqa: BLE001 - recorded: failures are the measurement
                records.append((started, None, f"{type(exc).__name__}: {exc}"[:200]))
                if client is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2):
                            await client.aclose()
                client = None  # reconnect on the next round trip
                await asyncio.sleep(0.05)
            await asyncio.sleep(args.interval)
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.aclose()
        _write_json(args.out, records)

    _run_loop(main, args.loop)


# --- the bench process: children, sampling --------------------------------------------------------


class BenchError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    ready_path: Path
    out_path: Path
    log_path: Path
    killed: bool = False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready after {timeout:.0f} s: {self.tail()}")
            time.sleep(0.02)
        return dict(json.loads(self.ready_path.read_text()))

    def stop(self, timeout: float = 15.0) -> Any:
        """SIGTERM, wait (bounded), SIGKILL if needed; return what it wrote to --out (or None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(self.out_path.read_text())
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-800:]
        return ""


def start_child(kind: str, workdir: Path, pythonpath: Path, extra: list[str]) -> Child:
    ready, out, log = workdir / f"{kind}.ready", workdir / f"{kind}.out", workdir / f"{kind}.log"
    for path in (ready, out):
        path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(pythonpath), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), kind, "--ready", str(ready), "--out", str(out), *extra]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
    return Child(kind.lstrip("_"), proc, ready, out, log)


class Sampler:
    """VmRSS and open fds of one process every ``interval`` seconds, timestamped (monotonic), taken by a
    child process (``_sample``) so the attacker's CPU in this process cannot delay a sample; it appends one
    line per sample to a file this side reads whenever it needs the figures."""

    def __init__(self, pid: int, run_dir: Path, interval: float = SAMPLE_INTERVAL) -> None:
        self.path = run_dir / "samples.txt"
        self.child = start_child(
            "_sample", run_dir, REPO, ["--pid", str(pid), "--interval", str(interval), "--samples", str(self.path)]
        )
        self.child.wait_ready()

    @property
    def samples(self) -> list[tuple[float, int, int]]:
        out = []
        with open(self.path, encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:  # the last line may be half written
                    out.append((float(parts[0]), int(parts[1]), int(parts[2])))
        return out

    def stop(self) -> None:
        self.child.stop(5)
        self.child.kill()

    def latest(self) -> tuple[float, int, int]:
        return self.samples[-1]

    def window(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


def child_sample(args: argparse.Namespace) -> None:
    """Append ``monotonic rss_bytes fds`` for --pid every --interval seconds until SIGTERM or it exits."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(args.samples, "w", encoding="ascii", buffering=1) as out:
        _write_json(args.ready, {"pid": os.getpid()})
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                rss = _vm_rss(args.pid)
                fds = len(os.listdir(f"/proc/{args.pid}/fd"))
            except (FileNotFoundError, ProcessLookupError):
                break  # the process is gone
            out.write(f"{time.monotonic():.4f} {rss} {fds}\n")
            next_at += args.interval
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at, delay = time.monotonic(), 0.0
            stop.wait(delay)
    _write_json(args.out, {})


def _vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


# --- floods (run in the bench process's event loop) -------------------------------------------------


@dataclass
class Attack:
    """What one flood did and how the server answered it."""

    sent: str = ""
    cut: str = ""  # "GOAWAY ENHANCE_YOUR_CALM", "reset/EOF", "open after 5 s", or per-connection counts
    notes: list[str] = field(default_factory=list)


def _code_name(code: int) -> str:
    from h2.errors import ErrorCodes

    try:
        return ErrorCodes(code).name
    except ValueError:
        return hex(code)


async def _outcome(peer: Any, wait: float = CUT_WAIT) -> str:
    """Read until GOAWAY (its code) or EOF/reset; "open" if neither within ``wait`` seconds."""
    try:
        async with asyncio.timeout(wait):
            code = await peer.read_goaway()
    except TimeoutError:
        return f"open after {wait:.0f} s"
    return f"GOAWAY {_code_name(code)}" if code is not None else "reset/EOF"


def _summarise(outcomes: list[str]) -> str:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    if len(outcomes) == 1:
        return outcomes[0]
    return ", ".join(f"{n}x {what}" for what, n in sorted(counts.items()))


async def flood_rapid_reset(port: int, ctx: Any, pairs: int) -> Attack:
    from meshcore.testing.h2attack import RawH2Peer

    attack = Attack()
    peer = await RawH2Peer.connect(HOST, port, ctx)
    sent, started, write_error = 0, time.monotonic(), None
    try:
        while sent < pairs and not peer.writer.transport.is_closing():
            batch = min(500, pairs - sent)
            peer.write(peer.request_and_reset(ATTACK_AUTHORITY, batch))
            try:
                await peer.drain()
            except (ConnectionError, OSError) as exc:
                write_error = type(exc).__name__
                break
            sent += batch
        attack.sent = f"{sent:,} pairs in {time.monotonic() - started:.2f} s"
        attack.cut = await _outcome(peer)
        if write_error:
            attack.cut += f" ({write_error} while sending)"
    finally:
        peer.abort()
    return attack


async def flood_continuation(port: int, ctx: Any, connections: int, frames: int) -> Attack:
    from meshcore.testing.h2attack import RawH2Peer

    peers = [await RawH2Peer.connect(HOST, port, ctx) for _ in range(connections)]
    written = [0] * connections

    async def one(i: int, peer: Any) -> str:
        stream_id, headers = peer.unfinished_headers(ATTACK_AUTHORITY)
        peer.write(headers)
        error = ""
        try:
            for _ in range(frames):
                if peer.writer.transport.is_closing():
                    break
                peer.write(peer.continuation(stream_id, MiB - 1024))
                await peer.drain()
                written[i] += 1
        except (ConnectionError, OSError) as exc:
            error = f" ({type(exc).__name__} while sending)"
        return await _outcome(peer) + error

    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(*(one(i, p) for i, p in enumerate(peers)))
    finally:
        for peer in peers:
            peer.abort()
    attack = Attack(
        sent=f"{connections} conns x HEADERS + {min(written)}..{max(written)} x 1 MiB CONTINUATION "
        f"in {time.monotonic() - started:.2f} s",
        cut=_summarise(list(outcomes)),
    )
    return attack


async def flood_ping(port: int, ctx: Any, limit: int) -> Attack:
    from meshcore.testing.h2attack import RawH2Peer

    peer = await RawH2Peer.connect(HOST, port, ctx, receive_buffer=4096)
    batch = peer.pings(5000)
    sent, started, write_error = 0, time.monotonic(), ""
    try:
        try:
            async with asyncio.timeout(60):
                while sent < limit and not peer.writer.transport.is_closing():
                    peer.write(batch)
                    await peer.drain()
                    sent += 5000
        except (ConnectionError, OSError) as exc:
            write_error = f" ({type(exc).__name__} while sending)"
        except TimeoutError:
            write_error = " (sending stopped at the 60 s bound)"
        attack = Attack(sent=f"{sent:,} PINGs in {time.monotonic() - started:.2f} s")
        attack.cut = await _outcome(peer, wait=3.0) + write_error  # reads (PINGs' ACKs) only from here on
    finally:
        peer.abort()
    return attack


async def flood_idle(port: int, ctx: Any, count: int, hold: float) -> Attack:
    """``count`` TCP connections that never send a byte, held ``hold`` s; a new good connection is tried."""
    from meshcore.aio.hbone_client import HboneClient
    from meshcore.identity import SpiffeId
    from meshcore.tls.verify import verify_peer

    lost: list[float] = []

    class Idle(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(time.monotonic())

    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    failed: dict[str, int] = {}
    started = time.monotonic()

    async def open_one() -> None:
        try:
            async with asyncio.timeout(10):
                transport, _ = await loop.create_connection(Idle, HOST, port)
            transports.append(transport)
        except (OSError, TimeoutError) as exc:
            failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1

    try:
        for first in range(0, count, 250):
            await asyncio.gather(*(open_one() for _ in range(min(250, count - first))))
        opened_in = time.monotonic() - started
        held_from = time.monotonic()
        probe_started = time.monotonic()
        expected = [SpiffeId(TRUST_DOMAIN, *SERVER_SA)]
        try:
            async with asyncio.timeout(5):
                client = await HboneClient.connect(
                    HOST, port, ssl_context=ctx, verify=lambda der: verify_peer(der, expected=expected)
                )
                try:
                    stream = await client.open_tunnel(AUTHORITY)
                    await stream.send_all(b"ping")
                    await stream.send_eof()
                    ok = await stream.receive_some() == b"ping"
                    await stream.aclose()
                finally:
                    await client.aclose()
            probe = f"new good connection: {'served' if ok else 'wrong echo'} in {time.monotonic() - probe_started:.2f} s"
        except Exception as exc:  # noqa: BLE001 - the probe's failure is a measurement
            probe = f"new good connection: failed after {time.monotonic() - probe_started:.2f} s ({type(exc).__name__})"
        await asyncio.sleep(max(0.0, hold - (time.monotonic() - held_from)))
        reset_at_connect = failed.pop("ConnectionResetError", 0)
        attack = Attack(
            sent=f"{count:,} idle TCP conns in {opened_in:.2f} s ({len(transports):,} connected), held {hold:.0f} s"
            + (f"; other connect failures {failed}" if failed else ""),
            cut=f"{reset_at_connect + len(lost):,} of {count:,} cut ({reset_at_connect:,} reset while connecting, "
            f"{len(lost):,} closed while held)",
            notes=[probe],
        )
    finally:
        for transport in transports:
            transport.abort()
    return attack


@dataclass(frozen=True)
class Flood:
    name: str
    timeout: float
    run: Callable[[int, Any], Awaitable[Attack]]


def floods(quick: bool) -> dict[str, Flood]:
    scale = 10 if quick else 1
    return {
        "rapid-reset-10k": Flood("rapid-reset-10k", 60, lambda p, c: flood_rapid_reset(p, c, 10_000 // scale)),
        "rapid-reset-25k": Flood("rapid-reset-25k", 90, lambda p, c: flood_rapid_reset(p, c, 25_000 // scale)),
        "continuation": Flood(
            "continuation", 120, lambda p, c: flood_continuation(p, c, 8 if not quick else 2, 63 if not quick else 8)
        ),
        "ping": Flood("ping", 90, lambda p, c: flood_ping(p, c, 2_000_000 // scale)),
        "idle-handshakes": Flood("idle-handshakes", 90, lambda p, c: flood_idle(p, c, 5000 // scale, 5.0)),
    }


# --- one run: one tree, one flood -------------------------------------------------------------------


@dataclass
class Tree:
    label: str
    path: Path
    commit: str
    dirty: bool


@dataclass
class RunResult:
    flood: str
    tree: str
    repeat: int
    good_base_p50_ms: float | None = None
    good_p50_ms: float | None = None
    good_p99_ms: float | None = None
    good_max_ms: float | None = None
    good_ok: int = 0
    good_failures: int = 0
    good_errors: list[str] = field(default_factory=list)
    rss_base_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    fds_base: int = 0
    fds_peak: int = 0
    fds_after: int = 0
    sent: str = ""
    cut: str = ""
    notes: list[str] = field(default_factory=list)
    attack_seconds: float = 0.0
    settle_seconds: float = 0.0
    app: dict[str, dict[str, int]] = field(default_factory=dict)
    server_counters: dict[str, int] = field(default_factory=dict)
    server_log_lines: int = 0
    samples: int = 0
    max_sample_gap_ms: float = 0.0
    error: str | None = None
    load_1m: float = 0.0  # load average when the run started (the machine's noise)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def run_one(tree: Tree, flood: Flood, repeat: int, workdir: Path, ca_dir: Path, client_ctx: Any,
            args: argparse.Namespace) -> RunResult:
    result = RunResult(flood.name, tree.label, repeat, load_1m=round(os.getloadavg()[0], 2))
    run_dir = workdir / f"{flood.name}-{tree.label}-{repeat}"
    run_dir.mkdir(parents=True)
    children: list[Child] = []
    sampler: Sampler | None = None
    try:
        echo = start_child("_echo", run_dir, REPO, ["--loop", args.loop, "--nofile", "60000"])
        children.append(echo)
        app_ports = echo.wait_ready()["ports"]
        server = start_child(
            "_server", run_dir, tree.path,
            ["--loop", args.loop, "--ca-dir", str(ca_dir), "--app-port", str(app_ports["good"]),
             "--attack-app-port", str(app_ports["attack"]),
             "--nofile", str(args.server_nofile), "--log-level", args.server_log_level],
        )
        children.append(server)
        ready = server.wait_ready()
        port, pid = int(ready["port"]), int(ready["pid"])
        if not str(ready["meshcore"]).startswith(str(tree.path)):
            raise BenchError(f"the server imported {ready['meshcore']}, not the tree {tree.path}")
        sampler = Sampler(pid, run_dir)
        good = start_child(
            "_good", run_dir, REPO,
            ["--loop", args.loop, "--ca-dir", str(ca_dir), "--port", str(port),
             "--interval", str(args.good_interval), "--timeout", str(args.good_timeout)],
        )
        children.append(good)
        good.wait_ready()
        time.sleep(BASELINE_SECONDS)
        base_start = time.monotonic() - BASELINE_SECONDS
        base = sampler.window(base_start, time.monotonic())
        result.rss_base_mb = round(max(s[1] for s in base) / MiB, 1)
        result.fds_base = max(s[2] for s in base)

        attack_start = time.monotonic()
        try:
            attack = _run_attack(flood, port, client_ctx)
        except TimeoutError:
            attack = Attack(cut=f"attack not finished at its {flood.timeout:.0f} s bound (aborted)")
        attack_end = time.monotonic()
        result.sent, result.cut, result.notes = attack.sent, attack.cut, attack.notes
        result.attack_seconds = round(attack_end - attack_start, 2)

        # Settled: fds back within 10 of the baseline (bounded), then a little longer for RSS.
        deadline = attack_end + SETTLE_TIMEOUT
        while time.monotonic() < deadline and server.proc.poll() is None:
            with contextlib.suppress(OSError):
                if len(os.listdir(f"/proc/{pid}/fd")) <= result.fds_base + 10:
                    break
            time.sleep(0.05)
        time.sleep(SETTLE_EXTRA)
        settled = time.monotonic()
        result.settle_seconds = round(settled - attack_end, 2)
        if server.proc.poll() is not None:
            result.notes.append(f"server exited with {server.proc.returncode} during the run")
        window = sampler.window(attack_start, settled)
        result.rss_peak_mb = round(max(s[1] for s in window) / MiB, 1)
        result.fds_peak = max(s[2] for s in window)
        _, rss_after, fds_after = sampler.latest()
        result.rss_after_mb, result.fds_after = round(rss_after / MiB, 1), fds_after
        times = [s[0] for s in sampler.window(base_start, settled)]
        result.samples = len(times)
        result.max_sample_gap_ms = _ms(max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0))

        records = good.stop() or []
        before = [r[1] for r in records if r[0] < attack_start and r[1] is not None]
        during = [r for r in records if attack_start <= r[0] <= settled]
        ok = [r[1] for r in during if r[1] is not None]
        result.good_ok, result.good_failures = len(ok), len(during) - len(ok)
        result.good_errors = sorted({r[2] for r in during if r[2]})[:3]
        if before:
            result.good_base_p50_ms = _ms(u.percentile(before, 50))
        if ok:
            result.good_p50_ms = _ms(u.percentile(ok, 50))
            result.good_p99_ms = _ms(u.percentile(ok, 99))
            result.good_max_ms = _ms(max(ok))
    except Exception as exc:  # noqa: BLE001 - one run's failure is reported, the others still run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if sampler is not None:
            sampler.stop()
        for child in reversed(children):
            out = child.stop()
            if child.name == "server" and child.killed:
                result.notes.append("the server did not stop within 15 s of SIGTERM: killed, no counters")
            if child.name == "server" and isinstance(out, dict):
                result.server_counters = {k: v for k, v in out.items() if v}
            elif child.name == "echo" and isinstance(out, dict):
                result.app = out
            child.kill()
        for child in children:
            if child.name == "server":
                with contextlib.suppress(OSError):
                    result.server_log_lines = sum(1 for _ in child.log_path.open("rb"))
    return result


def _run_attack(flood: Flood, port: int, ctx: Any) -> Attack:
    """The attacker runs on asyncio's own loop, as in the adversarial tests: its ``drain`` waits for the
    TLS transport's buffer (uvloop's SSL transport took megabytes into its own buffer at once, so a flood
    was "sent" before the server saw it and the abort that ends the attack dropped the rest)."""

    async def bounded() -> Attack:
        async with asyncio.timeout(flood.timeout):
            return await flood.run(port, ctx)

    return asyncio.run(bounded())


# --- report -----------------------------------------------------------------------------------------


def describe_tree(spec: str) -> Tree:
    label, _, path_text = spec.rpartition("=")
    path = Path(path_text).resolve()
    if not (path / "meshcore" / "aio" / "hbone_server.py").is_file():
        raise SystemExit(f"--tree {spec}: {path} has no meshcore/aio/hbone_server.py")
    commit = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "meshcore"], capture_output=True, text=True,
            check=True,
        ).stdout.strip()
    )
    return Tree(label or commit, path, commit, dirty)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def table(results: list[RunResult]) -> str:
    lines = [
        "| flood | tree | run | good p50 / p99 / max ms (ok, failed) | peak RSS MB (base) | RSS after MB "
        "| peak fds (base) | fds after | attack's app dials (most at once) | attacker |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.flood} | {r.tree} | {r.repeat} | error: {r.error} | | | | | | |")
            continue
        good = f"{_fmt(r.good_p50_ms)} / {_fmt(r.good_p99_ms)} / {_fmt(r.good_max_ms)} ({r.good_ok}, {r.good_failures})"
        dials = r.app.get("attack", {})
        app = f"{dials.get('accepted', 0):,} ({dials.get('peak_open', 0):,})"
        lines.append(
            f"| {r.flood} | {r.tree} | {r.repeat} | {good} | {r.rss_peak_mb:,.0f} ({r.rss_base_mb:,.0f}) "
            f"| {r.rss_after_mb:,.0f} | {r.fds_peak:,} ({r.fds_base}) | {r.fds_after:,} | {app} | {r.cut} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="[LABEL=]PATH",
                        help="a source tree to measure (repeat: before=/tmp/before-fixes after=.)")
    parser.add_argument("--flood", action="append", choices=list(floods(False)), help="default: all")
    parser.add_argument("--repeat", type=int, default=1, help="runs per flood and tree (interleaved)")
    parser.add_argument("--quick", action="store_true", help="a tenth of each flood (to try the script)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="as ztunnel: uvloop")
    parser.add_argument("--server-nofile", type=int, default=SERVER_NOFILE)
    parser.add_argument("--server-log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--good-interval", type=float, default=0.01, help="pause between good round trips (s)")
    parser.add_argument("--good-timeout", type=float, default=5.0, help="a good round trip failing after (s)")
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()

    trees = [describe_tree(spec) for spec in args.tree]
    selected = [floods(args.quick)[name] for name in (args.flood or list(floods(args.quick)))]
    u.raise_nofile(60_000)
    print(f"# {sys.executable} {' '.join(sys.argv)}")
    print(f"# {os.cpu_count()} cores (shared), {platform.machine()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, loop {args.loop}")
    for tree in trees:
        print(f"# tree {tree.label}: {tree.path} at {tree.commit}{' + uncommitted meshcore changes' if tree.dirty else ''}")
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    with _workdir(args.workdir) as workdir:
        ca_dir = workdir / "ca"
        client_ctx = _client_context(ca_dir)  # creates the shared root before any child reads it
        results: list[RunResult] = []
        for repeat in range(1, args.repeat + 1):
            for flood in selected:
                for tree in trees:
                    result = run_one(tree, flood, repeat, workdir, ca_dir, client_ctx, args)
                    results.append(result)
                    print(_one_line(result), flush=True)
        print(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        print(table(results))
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 1 if any(r.error for r in results) else 0


def _one_line(r: RunResult) -> str:
    if r.error:
        return f"{r.flood} [{r.tree} #{r.repeat}] ERROR {r.error}"
    return (
        f"{r.flood} [{r.tree} #{r.repeat}] sent {r.sent}; attacker: {r.cut}; good p50/p99/max "
        f"{_fmt(r.good_p50_ms)}/{_fmt(r.good_p99_ms)}/{_fmt(r.good_max_ms)} ms (base p50 {_fmt(r.good_base_p50_ms)}), "
        f"ok {r.good_ok}, failed {r.good_failures} {r.good_errors or ''}; RSS {r.rss_base_mb:.0f} -> peak "
        f"{r.rss_peak_mb:.0f} -> after {r.rss_after_mb:.0f} MB; fds {r.fds_base} -> {r.fds_peak} -> {r.fds_after}; "
        f"app {r.app}; attack {r.attack_seconds} s, settle {r.settle_seconds} s; server {r.server_counters}; "
        f"log lines {r.server_log_lines}; {r.samples} samples, max gap {r.max_sample_gap_ms} ms; load {r.load_1m}"
        + (f"; {'; '.join(r.notes)}" if r.notes else "")
    )


def _client_context(ca_dir: Path) -> Any:
    from meshcore.identity import SpiffeId
    from meshcore.testing.shared_ca import SharedFakeCa
    from meshcore.tls.contexts import client_context

    ca = SharedFakeCa(ca_dir, TRUST_DOMAIN)
    return client_context(asyncio.run(ca.fetch(SpiffeId(TRUST_DOMAIN, *CLIENT_SA))))


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="floods-") as tmp:
        yield Path(tmp)


CHILDREN = {"_server": child_server, "_echo": child_echo, "_good": child_good, "_sample": child_sample}


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"floods.py {argv[0]}")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--ca-dir")
    parser.add_argument("--port", type=int)
    parser.add_argument("--app-port", type=int)
    parser.add_argument("--attack-app-port", type=int)
    parser.add_argument("--nofile", type=int, default=SERVER_NOFILE)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--samples")
    CHILDREN[argv[0]](parser.parse_args(argv[1:]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        child_main(sys.argv[1:])
    else:
        sys.exit(main())

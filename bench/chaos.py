"""Chaos on the local cluster: kill -9 the mesh's processes under steady cross-node traffic, restart them,
rotate certificates with a short TTL, and report what users would have seen.

A two-node local cluster with the mesh (``ambientctl.cluster``: its own prefix and state directory under
/tmp, always removed, also on failure, Ctrl-C or SIGTERM) runs namespace ``chaos`` (ambient):
- on node-2, ``server`` (the shipped HTTP echo app, Service ``echo``, port 80 -> 8080) and ``sink`` (this
  file's ``serve-idle``: a 1-byte TCP echo for idle tunnels, Service ``sink``, port 9000);
- on node-1, ``client`` running this file's ``load``: one short HTTP request on a new connection every
  1/rate s (open loop: the schedule does not wait for answers) to ``echo.chaos``, each outcome a JSON line
  with its CLOCK_MONOTONIC start and end (one clock for every process on the machine);
- on node-1, ``holder-1`` and ``holder-2`` running this file's ``hold`` (several processes per pod): idle
  tunnels to ``sink.chaos``, each proven by a 1-byte echo when opened and when checked;
- AuthorizationPolicies (ALLOW client -> echo, ALLOW holder -> sink, a namespace DENY for a namespace that
  does not exist), so there is policy to lose.
Faults, one at a time and then together: kill -9 node-1's ztunnel, node-1's node agent, istiod-lite, all
three; each stays dead for ``--down`` s, then ``Mesh.start()`` (idempotent: it starts exactly the
components that are not running, in dependency order, each waited for until ready) restarts it. Last, a
certificate rotation window: every component runs with ``SECRET_TTL`` = ``MAX_WORKLOAD_CERT_TTL`` =
``--cert-ttl`` (ztunnel renews at half life) and the window lasts 2.5 TTLs with no other fault.
Per phase: requests failed (ended after the fault began), the first failure and the recovery (first
success after the last failure) measured from the kill, the restart's readiness, tunnels held before /
surviving / held again after a refill, config lost (the store's objects' labels+spec and both ztunnels'
``/config_dump`` workloads, services, policies and local workload states, before vs after, polled for up
to ``CONVERGE_S`` s), and plaintext bytes between pods on node-1's link. The capture (scapy
``LinkCapture`` on eth0 in node-1's netns) runs throughout in overlapping windows, so there is no gap;
a window that hits its packet cap is reported (a gap would then be possible).
Invariants: load stays bounded (``--rate`` requests/s, tunnels opened 100 at a time); every wait has a
deadline; nothing is left behind (the cluster's ``down`` sweeps every process in its namespaces).
Never part of the test run; needs root.

    .venv/bin/python bench/chaos.py [--rate 25] [--tunnels 10000] [--down 3] [--cert-ttl 30] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import queue
import random
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if TYPE_CHECKING:
    from ambientctl.cluster.testing import MeshCluster

NS = "chaos"
ECHO_PORT = 8080
SINK_PORT = 9000
HOLDER_PODS = ("holder-1", "holder-2")
START_TIMEOUT = 90.0
CONVERGE_S = 30.0
RECOVER_TIMEOUT = 90.0
SETTLE_S = 3.0  # consecutive seconds of successes that end a fault's window
OPEN_CONCURRENCY = 100  # tunnels being opened at once, per holder process
CHECK_TIMEOUT = 30.0
WINDOW_S = 10.0  # capture window length (windows overlap: the next starts before the last stops)
WINDOW_MAX_PACKETS = 300_000
ROTATION_SAMPLE_S = 5.0  # a config_dump with 10,000 connections is several MB: not every second


# ============================================================================ in-pod programs


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _use_uvloop() -> None:
    with suppress(ImportError):
        import uvloop

        uvloop.install()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def serve_idle(port: int) -> None:
    """The sink pod: echo every byte back, on as many connections as the fd limit allows."""
    _raise_nofile()
    _use_uvloop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, "0.0.0.0", port, backlog=4096, reuse_address=True)
        print(f"sink listening on :{port}", flush=True)
        async with server:
            await asyncio.Event().wait()

    asyncio.run(main())


def load(url_host: str, port: int, rate: float, timeout: float, marker: str, duration: float) -> None:
    """The client pod: one request per 1/rate s on a new connection until stdin closes or ``duration``;
    prints ``[start, end, ok, error]`` per request (CLOCK_MONOTONIC seconds)."""
    _use_uvloop()
    ip = socket.gethostbyname(url_host)  # the Service VIP from the pod's /etc/hosts

    async def one(seq: int) -> None:
        start = time.monotonic()
        error = ""
        ok = False
        writer = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(ip, port)
                path = f"/{marker}-{seq}"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {url_host}\r\nConnection: close\r\n\r\n".encode())
                data = await reader.read(-1)
            status = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b"?"
            ok = status == b"200" and path.encode() in data
            error = "" if ok else f"HTTP {status.decode(errors='replace')}" if data else "EOF"
        except TimeoutError:
            error = "timeout"
        except OSError as e:
            error = type(e).__name__
        finally:
            if writer is not None:
                writer.close()
        print(json.dumps([round(start, 4), round(time.monotonic(), 4), ok, error]), flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        stdin_closed.add_done_callback(lambda _: stop.set())
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        began = time.monotonic()
        due = began
        seq = 0
        while not stop.is_set() and time.monotonic() - began < duration:
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
            if stop.is_set():
                break
            task = asyncio.create_task(one(seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            seq += 1
            due = max(due + interval, time.monotonic() - interval)  # never a burst to catch up
        if tasks:
            await asyncio.wait(tasks, timeout=timeout + 1)
        os._exit(0)  # the stdin reader thread cannot be interrupted

    asyncio.run(main())


class _Tunnel(asyncio.Protocol):
    def __init__(self, holder: _Holder) -> None:
        self.holder = holder
        self.transport: Any = None
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.holder.open:
            self.holder.open.discard(self)
            self.holder.closed += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("closed"))

    async def ping(self, within: float) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(b"p")
        async with asyncio.timeout(within):
            await self.waiter


@dataclass
class _Holder:
    ip: str
    port: int
    open: set[_Tunnel] = field(default_factory=set)
    closed: int = 0

    async def open_to(self, target: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        errors: dict[str, int] = {}
        started = time.monotonic()
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> None:
            async with gate:
                tunnel = _Tunnel(self)
                try:
                    async with asyncio.timeout(15):
                        await loop.create_connection(lambda: tunnel, self.ip, self.port)
                    await tunnel.ping(15)
                except (OSError, TimeoutError) as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    if tunnel.transport is not None:
                        tunnel.transport.abort()
                    return
                self.open.add(tunnel)

        await asyncio.gather(*(one() for _ in range(max(0, target - len(self.open)))))
        return {"open": len(self.open), "errors": errors, "s": round(time.monotonic() - started, 2)}

    async def check(self) -> dict[str, Any]:
        before = len(self.open)
        gate = asyncio.Semaphore(500)
        answered = 0

        async def one(tunnel: _Tunnel) -> None:
            nonlocal answered
            async with gate:
                try:
                    await tunnel.ping(CHECK_TIMEOUT)
                    answered += 1
                except (OSError, TimeoutError):
                    pass

        await asyncio.gather(*(one(t) for t in list(self.open)))
        return {"open": before, "echoed": answered, "closed_total": self.closed}


def hold(host: str, port: int) -> None:
    """A holder process: commands on stdin (``open N``, ``check``), one JSON answer line each."""
    _raise_nofile()
    _use_uvloop()

    async def main() -> None:
        holder = _Holder(socket.gethostbyname(host), port)
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            words = line.split()
            if words[:1] == ["open"]:
                answer = await holder.open_to(int(words[1]))
            elif words[:1] == ["check"]:
                answer = await holder.check()
            else:
                answer = {"error": f"unknown command {line.strip()!r}"}
            print(json.dumps(answer), flush=True)
        for tunnel in list(holder.open):
            tunnel.transport.abort()

    asyncio.run(main())


# ============================================================================ orchestration: pieces


class Child:
    """A process in a pod (``ip netns exec``), its stdout lines read by a thread into a queue."""

    def __init__(
        self, argv: Sequence[str], stderr: Path, on_line: Callable[[str], None] | None = None
    ) -> None:
        with open(stderr, "ab") as err:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.stderr = stderr
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._on_line = on_line
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._on_line is not None:
                self._on_line(line)
            else:
                self.lines.put(line)
        self.lines.put(None)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchFailed(
                f"pod process {self.proc.args[4:7]} gave no answer in {timeout:g} s (stderr: {self.stderr})"
            ) from None
        if line is None:
            raise BenchFailed(
                f"pod process {self.proc.args[4:7]} exited ({self.proc.poll()}; stderr: {self.stderr})"
            )
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        with suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class BenchFailed(RuntimeError):
    """The campaign could not go on (a pod did not start, a component did not come back)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    start: float
    end: float
    ok: bool
    error: str


class Load:
    """The client pod's request loop, its outcomes collected as they arrive."""

    def __init__(self, mc: MeshCluster, rate: float, timeout: float, duration: float) -> None:
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self.marker = "chaos-" + "".join(random.choices(string.ascii_lowercase, k=12))
        argv = [
            sys.executable, str(Path(__file__).resolve()), "load", "echo." + NS, "80",
            "--rate", str(rate), "--timeout", str(timeout), "--marker", self.marker, "--duration", str(duration),
        ]  # fmt: skip
        self.child = Child(
            mc.cluster.exec_argv("client", NS, argv), mc.cluster.procs.log_path("chaos-load"), self._add
        )

    def _add(self, line: str) -> None:
        try:
            start, end, ok, error = json.loads(line)
        except ValueError:
            return
        with self._lock:
            self.outcomes.append(Outcome(start, end, ok, error))

    def since(self, t: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.end >= t]

    def steady_since(self, t: float, seconds: float) -> bool:
        """Every request that started in the last ``seconds`` (and after ``t``) succeeded, and there were
        some: the fault is over as users see it."""
        now = time.monotonic()
        recent = [o for o in self.since(t) if o.start >= max(t, now - seconds - 1.0) and o.end <= now]
        span = recent[-1].start - recent[0].start if recent else 0.0
        return bool(recent) and span >= seconds * 0.8 and all(o.ok for o in recent)

    def close(self) -> None:
        self.child.close()


class Holders:
    """Idle tunnels held by several processes in the holder pods."""

    def __init__(self, mc: MeshCluster, processes: int) -> None:
        self.children = []
        for i in range(processes):
            argv = [sys.executable, str(Path(__file__).resolve()), "hold", "sink." + NS, str(SINK_PORT)]
            pod = HOLDER_PODS[i % len(HOLDER_PODS)]
            self.children.append(
                Child(mc.cluster.exec_argv(pod, NS, argv), mc.cluster.procs.log_path(f"chaos-hold-{i}"))
            )

    def _all(self, command: Callable[[int], str], timeout: float) -> list[dict[str, Any]]:
        for i, child in enumerate(self.children):
            child.send(command(i))
        return [child.answer(timeout) for child in self.children]

    def open_to(self, total: int) -> dict[str, Any]:
        share = [
            total // len(self.children) + (1 if i < total % len(self.children) else 0)
            for i in range(len(self.children))
        ]
        answers = self._all(lambda i: f"open {share[i]}", timeout=max(300.0, total / 10))
        errors: dict[str, int] = {}
        for a in answers:
            for k, v in a["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {"open": sum(a["open"] for a in answers), "errors": errors, "s": max(a["s"] for a in answers)}

    def check(self) -> dict[str, int]:
        answers = self._all(lambda _: "check", timeout=CHECK_TIMEOUT + 30)
        return {k: sum(a[k] for a in answers) for k in ("open", "echoed", "closed_total")}

    def close(self) -> None:
        for child in self.children:
            child.close()


@dataclass
class Window:
    started: float
    stopped: float
    packets: int
    capped: bool
    pod_plaintext_bytes: int
    pod_ports: tuple[int, ...]
    markers: int
    other_ports: tuple[int, ...]
    offending: list[str]


class RollingCapture:
    """node-1's link captured throughout in overlapping windows, each summarized and dropped."""

    def __init__(self, netns: str, pod_cidr: str, marker: bytes) -> None:
        self.netns = netns
        self.pod_cidr = pod_cidr
        self.marker = marker
        self.windows: list[Window] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RollingCapture:
        from ambientctl.capture import LinkCapture

        self._first = LinkCapture(self.netns, "eth0", max_packets=WINDOW_MAX_PACKETS, time_limit=WINDOW_S * 3)
        self._first.start()
        self._first_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        from ambientctl.capture import CaptureError, LinkCapture

        current, since = self._first, self._first_at
        while True:
            last = self._stop.wait(WINDOW_S)
            nxt = None
            if not last:
                try:
                    nxt = LinkCapture(
                        self.netns, "eth0", max_packets=WINDOW_MAX_PACKETS, time_limit=WINDOW_S * 3
                    ).start()
                except CaptureError as e:
                    self.errors.append(str(e))
            stopped = time.monotonic()
            self.windows.append(self._summarize(current.stop(), since, stopped))
            if nxt is None:
                return
            current, since = nxt, time.monotonic()

    def _summarize(self, packets: list[Any], started: float, stopped: float) -> Window:
        from ambientctl.capture import summarize

        pods = summarize(packets, markers=[self.marker], between=[self.pod_cidr])
        everything = summarize(packets)
        offending = [
            f"{f.client} -> {f.server} ({f.payload_bytes} B, tls={f.tls})"
            for f in pods.flows
            if f.payload_bytes and (f.server_port != 15008 or f.tls is False)
        ]
        plaintext = sum(
            f.payload_bytes
            for f in pods.flows
            if f.payload_bytes and (f.server_port != 15008 or f.tls is False)
        )
        return Window(
            started=started,
            stopped=stopped,
            packets=len(packets),
            capped=len(packets) >= WINDOW_MAX_PACKETS,
            pod_plaintext_bytes=plaintext,
            pod_ports=pods.server_ports,
            markers=len(pods.markers_found),
            other_ports=tuple(p for p in everything.server_ports if p not in pods.server_ports),
            offending=offending,
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def between(self, t0: float, t1: float) -> list[Window]:
        return [w for w in list(self.windows) if w.stopped >= t0 and w.started <= t1]


# ---------------------------------------------------------------------------- config fingerprints


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def admin_get(mc: MeshCluster, node: str, path: str) -> tuple[int, bytes]:
    """``GET path`` on the node's ztunnel admin port, the whole body (``Mesh.ztunnel_get`` stops at
    1 MiB: a config_dump listing 10,000 connections is larger)."""
    import http.client

    from ambientctl.cluster.mesh import ZTUNNEL_ADMIN_PORT
    from meshcore.aio.netns import NetnsHandle, make_marked_socket

    with NetnsHandle.open(str(mc.cluster.net.netns_path(mc.node_netns(node)))) as handle:
        sock = handle.run(make_marked_socket, socket.AF_INET, socket.SOCK_STREAM, 0, 0)
    conn = http.client.HTTPConnection("127.0.0.1", ZTUNNEL_ADMIN_PORT, timeout=30)
    try:
        sock.settimeout(30)
        sock.connect(("127.0.0.1", ZTUNNEL_ADMIN_PORT))
        conn.sock = sock
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as e:
        raise OSError(f"bad answer from the admin port: {e}") from e
    finally:
        conn.close()
        sock.close()


def config_fingerprint(mc: MeshCluster) -> dict[str, str]:
    """What must survive every fault: ``where/kind/key`` -> digest of its content."""
    from ambientctl.cluster.mesh import ztunnel_name

    out: dict[str, str] = {}
    for r in mc.store.list():
        out[f"store/{r.kind}/{r.namespace}/{r.name}"] = _digest({"labels": r.labels, "spec": r.spec})
    for node in ("node-1", "node-2"):
        if mc.cluster.find_component(ztunnel_name(node)) is None:
            out[f"{node}/ztunnel"] = "not running"
            continue
        try:
            status, body = admin_get(mc, node, "/config_dump")
        except OSError as e:
            out[f"{node}/ztunnel"] = f"unreachable: {e}"
            continue
        if status != 200:
            out[f"{node}/ztunnel"] = f"/config_dump answered {status}"
            continue
        dump = json.loads(body)
        for w in dump.get("workloads", []):
            out[f"{node}/workload/{w['uid']}"] = _digest(w)
        for s in dump.get("services", []):
            out[f"{node}/service/{s['namespace']}/{s['hostname']}"] = _digest(s)
        for p in dump.get("policies", []):
            out[f"{node}/policy/{p['namespace']}/{p['name']}"] = _digest(p)
        for uid, st in dump.get("workloadState", {}).items():
            out[f"{node}/local/{uid}"] = st.get("state", "?")
    return out


def config_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lost = [f"lost {k}" for k in before if k not in after]
    changed = [f"changed {k}" for k in before if k in after and after[k] != before[k]]
    added = [f"added {k}" for k in after if k not in before]
    return lost + changed + added


def converge(mc: MeshCluster, before: dict[str, str]) -> tuple[list[str], float]:
    """Differences left after waiting up to ``CONVERGE_S`` for them to vanish; and how long it took."""
    started = time.monotonic()
    while True:
        diff = config_diff(before, config_fingerprint(mc))
        if not diff or time.monotonic() - started >= CONVERGE_S:
            return diff, time.monotonic() - started
        time.sleep(0.5)


def certificates(mc: MeshCluster, node: str) -> dict[str, tuple[str, str]]:
    """identity -> (leaf serial, expiry) as the node's ztunnel shows them."""
    try:
        status, body = admin_get(mc, node, "/config_dump")
    except OSError:
        return {}
    if status != 200:
        return {}
    out = {}
    for c in json.loads(body).get("certificates", []):
        chain = c.get("certChain") or []
        if chain:
            out[c["identity"]] = (chain[0]["serialNumber"], chain[0]["expirationTime"])
    return out


# ---------------------------------------------------------------------------- the campaign


@dataclass
class PhaseResult:
    name: str
    down_s: float | None = None
    restart_ready_s: float | None = None
    requests: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_failure_s: float | None = None
    recovered_s: float | None = None
    tunnels_before: int = 0
    tunnels_survived: int = 0
    tunnels_after: int = 0
    config_lost: list[str] = field(default_factory=list)
    converged_s: float = 0.0
    plaintext_bytes: int = 0
    markers_seen: int = 0
    restart_steps: dict[str, float] = field(default_factory=dict)
    # Re-opening the tunnels a fault closed (after the fault's window): requests meanwhile, failed.
    refill_requests: int = 0
    refill_failed: int = 0
    refill_s: float = 0.0
    rotations: dict[str, int] = field(default_factory=dict)
    expired_samples: dict[str, int] = field(default_factory=dict)
    min_validity_s: dict[str, float] = field(default_factory=dict)
    note: str = ""


def yaml_docs(tunnel_processes: int) -> list[str]:
    from ambientctl.cluster.testing import AMBIENT, echo_pod, namespace, service, sleeper_pod

    chaos = str(Path(__file__).resolve())
    sink = f"""apiVersion: v1
kind: Pod
metadata: {{name: sink, namespace: {NS}, labels: {{app: sink}}}}
spec:
  nodeName: node-2
  serviceAccountName: sink
  containers:
  - name: sink
    image: local
    command: [{sys.executable}, {chaos}, serve-idle, --port, "{SINK_PORT}"]
    ports: [{{name: tcp, containerPort: {SINK_PORT}}}]
"""
    sink_service = f"""apiVersion: v1
kind: Service
metadata: {{name: sink, namespace: {NS}}}
spec:
  selector: {{app: sink}}
  ports: [{{name: tcp, port: {SINK_PORT}, targetPort: {SINK_PORT}}}]
"""

    def allow(name: str, app: str, sa: str) -> str:
        return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{NS}/sa/{sa}]}}}}]
"""

    deny = f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-elsewhere, namespace: {NS}}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{namespaces: [elsewhere]}}}}]
"""
    return [
        namespace(NS, AMBIENT),
        echo_pod("server", NS, "node-2", {"app": "echo"}, sa="server"),
        sink,
        service("echo", NS, {"app": "echo"}),
        sink_service,
        sleeper_pod("client", NS, "node-1", sa="client"),
        *(sleeper_pod(p, NS, "node-1", sa="holder") for p in HOLDER_PODS),
        allow("allow-client", "echo", "client"),
        allow("allow-holder", "sink", "holder"),
        deny,
    ]


def kill9(mc: MeshCluster, names: Sequence[str]) -> None:
    from ambientctl.cluster.testing import wait_for

    records = [mc.cluster.find_component(n) for n in names]
    missing = [n for n, r in zip(names, records, strict=True) if r is None]
    if missing:
        raise BenchFailed(f"not running before the fault: {missing}")
    for r in records:
        assert r is not None
        os.kill(r.pid, signal.SIGKILL)
    for n in names:
        wait_for(f"{n} gone", lambda n=n: mc.cluster.find_component(n) is None, 10)


def settle(load: Load, since: float, result: PhaseResult) -> None:
    """Wait (bounded) for ``SETTLE_S`` s of nothing but successes after ``since``."""
    deadline = time.monotonic() + RECOVER_TIMEOUT
    while not load.steady_since(since, SETTLE_S):
        if time.monotonic() >= deadline:
            result.note = f"no {SETTLE_S:g} s of steady success within {RECOVER_TIMEOUT:g} s"
            return
        time.sleep(0.2)


def measure_window(load: Load, t_kill: float, t_end: float, result: PhaseResult) -> None:
    window = [o for o in load.since(t_kill) if o.start <= t_end]
    result.requests = len(window)
    failures = [o for o in window if not o.ok]
    result.failed = len(failures)
    for o in failures:
        result.errors[o.error] = result.errors.get(o.error, 0) + 1
    if failures:
        result.first_failure_s = max(0.0, min(o.end for o in failures) - t_kill)
        last_failure = max(o.start for o in failures)
        after = [o for o in window if o.ok and o.start > last_failure]
        result.recovered_s = min(o.end for o in after) - t_kill if after else None
    else:
        result.recovered_s = 0.0


def run_fault(
    mc: MeshCluster, load: Load, holders: Holders, cap: RollingCapture, name: str, victims: Sequence[str],
    down: float, tunnels: int,
) -> PhaseResult:  # fmt: skip
    result = PhaseResult(name)
    before = config_fingerprint(mc)
    held = holders.check() if tunnels else {"echoed": 0}
    result.tunnels_before = held["echoed"]
    print(f"-- {name}: kill -9 {', '.join(victims)} (tunnels held: {result.tunnels_before})", flush=True)
    t_kill = time.monotonic()
    kill9(mc, victims)
    time.sleep(max(0.0, down - (time.monotonic() - t_kill)))  # the outage itself: the fault under test
    result.down_s = time.monotonic() - t_kill
    status = mc.mesh.start()  # starts exactly what is not running, each waited for until ready
    result.restart_ready_s = time.monotonic() - t_kill
    result.restart_steps = {step: round(s, 2) for step, s in status.timings}
    settle(load, t_kill, result)
    t_end = time.monotonic()
    measure_window(load, t_kill, t_end, result)
    if tunnels:
        result.tunnels_survived = holders.check()["echoed"]
        if result.tunnels_survived < tunnels:
            refill = PhaseResult("refill")
            t_refill = time.monotonic()
            holders.open_to(tunnels)
            settle(load, t_refill, refill)
            measure_window(load, t_refill, time.monotonic(), refill)
            result.refill_requests, result.refill_failed = refill.requests, refill.failed
            result.refill_s = round(time.monotonic() - t_refill, 1)
        result.tunnels_after = holders.check()["echoed"]
    result.config_lost, result.converged_s = converge(mc, before)
    windows = cap.between(t_kill, time.monotonic())
    result.plaintext_bytes = sum(w.pod_plaintext_bytes for w in windows)
    result.markers_seen = sum(w.markers for w in windows)
    print(f"   {json.dumps(asdict(result))}", flush=True)
    return result


def run_rotation(
    mc: MeshCluster,
    load: Load,
    holders: Holders,
    cap: RollingCapture,
    window: float,
    ttl: float,
    tunnels: int,
) -> PhaseResult:
    """No fault: certificates renewing under traffic. Per identity: renewals seen, samples where the
    certificate served had expired, the least validity left at any sample."""
    result = PhaseResult(f"certificate rotation ({window:g} s, TTL {ttl:g} s)")
    before = config_fingerprint(mc)
    result.tunnels_before = holders.check()["echoed"] if tunnels else 0
    print(f"-- {result.name}", flush=True)
    t0 = time.monotonic()
    seen: dict[str, set[str]] = {}
    while time.monotonic() - t0 < window:
        for node in ("node-1", "node-2"):
            for identity, (serial, expiry) in certificates(mc, node).items():
                key = f"{node} {identity.rsplit('/', 1)[-1]}"
                seen.setdefault(key, set()).add(serial)
                left = (
                    datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - datetime.now(UTC)
                ).total_seconds()
                result.min_validity_s[key] = round(min(left, result.min_validity_s.get(key, left)), 1)
                if left < -1.0:  # expirationTime has whole seconds
                    result.expired_samples[key] = result.expired_samples.get(key, 0) + 1
        time.sleep(ROTATION_SAMPLE_S)
    t_end = time.monotonic()
    measure_window(load, t0, t_end, result)
    result.rotations = {k: len(v) - 1 for k, v in sorted(seen.items())}
    if tunnels:
        result.tunnels_survived = holders.check()["echoed"]
        result.tunnels_after = result.tunnels_survived
    result.config_lost, result.converged_s = converge(mc, before)
    windows = cap.between(t0, time.monotonic())
    result.plaintext_bytes = sum(w.pod_plaintext_bytes for w in windows)
    result.markers_seen = sum(w.markers for w in windows)
    print(f"   {json.dumps(asdict(result))}", flush=True)
    return result


@contextmanager
def mesh_cluster(extra_env: dict[str, str], log_level: str, keep_logs: str | None) -> Iterator[MeshCluster]:
    """A two-node cluster with the mesh, own prefix and state dir; always removed."""
    from ambientctl.cluster import Cluster, ClusterSpec
    from ambientctl.cluster.mesh import Mesh, MeshSettings
    from ambientctl.cluster.testing import MeshCluster
    from meshcore.store import SqliteStore, store_path

    prefix = "k" + "".join(random.choices(string.ascii_lowercase + string.digits, k=3)) + "-"
    state_dir = Path(tempfile.mkdtemp(prefix="chaos", dir="/tmp"))
    cluster = Cluster(state_dir, prefix=prefix)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, state_dir, True)
        if keep_logs:  # after `down` (the logs' last lines), before the state dir goes
            stack.callback(shutil.copytree, cluster.procs.log_dir, keep_logs, dirs_exist_ok=True)
        stack.callback(cluster.down)
        cluster.up(ClusterSpec(nodes=2, prefix=prefix))
        mesh = Mesh(cluster, MeshSettings(extra_env=extra_env, log_level=log_level))
        mesh.start()
        store = SqliteStore(store_path(state_dir))
        stack.callback(store.close)
        print(f"-- cluster {prefix} up in {state_dir}", flush=True)
        yield MeshCluster(cluster, mesh, store, state_dir)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(results: Sequence[PhaseResult], tunnels: int) -> str:
    head = (
        "| phase | down s | restarted+ready s | requests | failed | first failure s | recovered s "
        "| tunnels before / survived / after | config lost | plaintext bytes (pods, node-1 link) |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in results:
        t = f"{r.tunnels_before} / {r.tunnels_survived} / {r.tunnels_after}" if tunnels else "-"
        rows.append(
            f"| {r.name} | {_fmt(r.down_s)} | {_fmt(r.restart_ready_s)} | {r.requests} | {r.failed} "
            f"| {_fmt(r.first_failure_s)} | {_fmt(r.recovered_s)} | {t} | {len(r.config_lost)} | {r.plaintext_bytes} |"
        )
    return "\n".join(rows)


def campaign(args: argparse.Namespace) -> int:
    from ambientctl.cluster import ClusterSpec
    from ambientctl.cluster.mesh import ISTIOD, agent_name, ztunnel_name
    from ambientctl.cluster.testing import wait_for
    from meshcore.logs import configure_logging

    sys.path.insert(0, str(BENCH))
    import _util as u

    configure_logging("warning")
    u.raise_nofile(65536)  # inherited by the mesh's processes and the pods
    ttl = f"{args.cert_ttl}s"
    extra_env = {"SECRET_TTL": ttl, "MAX_WORKLOAD_CERT_TTL": ttl, "DEFAULT_WORKLOAD_CERT_TTL": ttl}
    print(
        f"# chaos on the local cluster: {os.cpu_count()} cores (shared), {platform.machine()}, Linux "
        f"{platform.release()}, Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}, "
        f"load {os.getloadavg()[0]:.1f}, at {u.source_revision(ROOT)}"
    )
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    results: list[PhaseResult] = []
    summary: dict[str, Any] = {}
    started = time.monotonic()
    with ExitStack() as stack:
        mc = stack.enter_context(mesh_cluster(extra_env, args.log_level, args.keep_logs))
        mc.apply(*yaml_docs(args.processes))
        pods = [("server", NS), ("sink", NS), ("client", NS), *((p, NS) for p in HOLDER_PODS)]
        mc.wait_running(pods, timeout=START_TIMEOUT)
        mc.wait_redirection(pods, "enabled", timeout=START_TIMEOUT)
        node_1 = mc.node_netns("node-1")
        load = Load(mc, args.rate, args.timeout, duration=3600)
        stack.callback(load.close)
        cap = RollingCapture(node_1, ClusterSpec(nodes=2).networking.pod_subnet, load.marker.encode())
        cap.start()
        stack.callback(cap.stop)
        wait_for("the first successful request", lambda: any(o.ok for o in load.since(0)), START_TIMEOUT)
        holders = Holders(mc, args.processes)
        stack.callback(holders.close)
        held: dict[str, Any] = {"open": 0, "errors": {}, "s": 0.0}
        if args.tunnels:
            print(f"-- opening {args.tunnels} idle tunnels from {args.processes} processes", flush=True)
            opening = PhaseResult(f"opening {args.tunnels} idle tunnels (no fault)")
            t_open = time.monotonic()
            held = holders.open_to(args.tunnels)
            print(f"   {held}", flush=True)
            settle(load, t_open, opening)
            measure_window(load, t_open, time.monotonic(), opening)
            opening.tunnels_after = held["open"]
            opening.errors = {**opening.errors, **{f"tunnel open {k}": v for k, v in held["errors"].items()}}
            results.append(opening)
        summary["tunnels_opened"] = held
        base = PhaseResult(f"no fault ({args.baseline:g} s)")
        t0 = time.monotonic()
        time.sleep(args.baseline)
        measure_window(load, t0, time.monotonic(), base)
        base.tunnels_before = base.tunnels_after = base.tunnels_survived = (
            holders.check()["echoed"] if args.tunnels else 0
        )
        results.append(base)
        z, a = ztunnel_name("node-1"), agent_name("node-1")
        faults = [
            ("kill -9 ztunnel (node-1)", [z]),
            ("kill -9 node agent (node-1)", [a]),
            ("kill -9 istiod-lite", [ISTIOD]),
            ("kill -9 all three", [z, a, ISTIOD]),
        ]
        for name, victims in faults:
            results.append(run_fault(mc, load, holders, cap, name, victims, args.down, args.tunnels))
        window = args.rotation_window or 2.5 * args.cert_ttl
        results.append(run_rotation(mc, load, holders, cap, window, args.cert_ttl, args.tunnels))
        cap.stop()
        windows = cap.windows
        summary.update(
            capture_windows=len(windows),
            capture_packets=sum(w.packets for w in windows),
            capture_capped_windows=sum(1 for w in windows if w.capped),
            capture_errors=cap.errors,
            pod_plaintext_bytes=sum(w.pod_plaintext_bytes for w in windows),
            pod_ports=sorted({p for w in windows for p in w.pod_ports}),
            other_ports=sorted({p for w in windows for p in w.other_ports}),
            markers_seen=sum(w.markers for w in windows),
            offending_flows=[f for w in windows for f in w.offending][:20],
            requests_total=len(load.since(0)),
            requests_failed_total=sum(1 for o in load.since(0) if not o.ok),
            minutes=round((time.monotonic() - started) / 60, 1),
        )
    print()
    print(table(results, args.tunnels))
    print()
    for k, v in summary.items():
        print(f"- {k}: {v}")
    for r in results:
        if r.config_lost:
            print(f"- {r.name}: config differences: {r.config_lost[:10]}")
        if r.rotations:
            print(f"- {r.name}: renewals seen per identity: {r.rotations}")
            print(f"- {r.name}: least validity left (s): {r.min_validity_s}")
            print(f"- {r.name}: samples serving an expired certificate: {r.expired_samples or 'none'}")
        if r.refill_requests:
            print(
                f"- {r.name}: re-opening the tunnels took {r.refill_s:g} s; requests meanwhile "
                f"{r.refill_requests}, failed {r.refill_failed}"
            )
        if r.restart_steps:
            print(f"- {r.name}: Mesh.start() steps (s): {r.restart_steps}")
        if r.errors:
            print(f"- {r.name}: failures: {r.errors}")
        if r.note:
            print(f"- {r.name}: {r.note}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": [asdict(r) for r in results], "summary": summary}, indent=2)
        )
    bad = (
        summary["pod_plaintext_bytes"]
        or summary["markers_seen"]
        or any(r.config_lost or r.expired_samples for r in results)
    )
    return 1 if bad else 0


_MAIN_PID = os.getpid()


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM unwinds as Ctrl-C does, so the cluster is removed. A forked child that inherited this
    handler (pyroute2 forks to create namespaces, and stops its child with SIGTERM) must die as by
    default, never unwind into the parent's code."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("serve-idle")
    p.add_argument("--port", type=int, default=SINK_PORT)
    p = sub.add_parser("load")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--rate", type=float, default=25.0)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--marker", default="chaos")
    p.add_argument("--duration", type=float, default=3600.0)
    p = sub.add_parser("hold")
    p.add_argument("host")
    p.add_argument("port", type=int)
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second from the client pod")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds a request may take")
    parser.add_argument("--tunnels", type=int, default=10_000, help="idle tunnels to hold (0: none)")
    parser.add_argument("--processes", type=int, default=4, help="holder processes (over two pods)")
    parser.add_argument("--down", type=float, default=3.0, help="seconds a killed component stays dead")
    parser.add_argument("--cert-ttl", type=int, default=30, help="SECRET_TTL and the CA's max TTL, seconds")
    parser.add_argument(
        "--rotation-window", type=float, help="seconds of the rotation phase (default 2.5 x --cert-ttl)"
    )
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of traffic before any fault")
    parser.add_argument("--log-level", default="warning", help="the mesh components' log level")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep-logs", help="copy every component's and pod's log here at the end")
    args = parser.parse_args()
    if args.command == "serve-idle":
        serve_idle(args.port)
        return 0
    if args.command == "load":
        load(args.host, args.port, args.rate, args.timeout, args.marker, args.duration)
        return 0
    if args.command == "hold":
        hold(args.host, args.port)
        return 0
    if os.geteuid() != 0:
        print("bench/chaos.py needs root (network namespaces, nftables, packet capture)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    sys.path.insert(0, str(ROOT))
    return campaign(args)


if __name__ == "__main__":
    sys.exit(main())

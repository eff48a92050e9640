"""Benchmark: control-plane scale — full sync of many delta-xDS clients, then one pod change reaching all.

Applies N pods (over 100 nodes and 20 ambient namespaces) and M services to a fresh embedded store, starts
``istiod-lite`` as a subprocess (so its peak memory is its own: VmHWM from /proc), connects C delta-xDS
clients (``meshcore.aio.XdsClient`` with node credentials from the CA, spread over several client
processes so client-side decoding does not starve istiod), and reports: time until every client has
ACKed the full state, istiod's peak RSS, then, per one-pod change applied to the store the way
``ambientctl apply`` does, the time until every client holds it and the resources and bytes istiod pushed
per client (deltas of its /metrics counters). Never part of the test run.

    .venv/bin/python bench/controlplane.py [--pods 10000 --services 1000 --clients 50 --procs 5 --changes 7]
        [--store sqlite|kubernetes|both]

``--store kubernetes`` runs istiod-lite on the Kubernetes store against the API server stand-in (a thread of
this process) instead of the embedded store; ``both`` runs the two one after the other and compares them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from istiod_lite.app import load_ca
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.config import IstiodConfig
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient
from meshcore.logs import configure_logging
from meshcore.proto import discovery_pb2_grpc, workload_pb2
from meshcore.state import ProxyState
from meshcore.store.paths import store_path
from meshcore.store.resource import Resource
from meshcore.store.sqlite import SqliteStore
from meshcore.tls.contexts import channel_credentials, channel_options
from meshcore.xds import ZTUNNEL_TYPE_URLS, DeltaXdsClientProtocol

NODES = 100
NAMESPACES = 20
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
READY_TIMEOUT = 120.0
SYNC_TIMEOUT = 300.0
CHANGE_TIMEOUT = 30.0


# --- the cluster --------------------------------------------------------------------------------------


def cluster(pods: int, services: int) -> list[Resource]:
    """Namespaces (all ambient), Services with a selector and a named targetPort, pods behind them."""
    per_ns = max(1, services // NAMESPACES)
    out: list[Resource] = [Resource(kind="Namespace", name=f"ns-{n}", labels=AMBIENT) for n in range(NAMESPACES)]
    for s in range(services):
        n, i = s % NAMESPACES, s // NAMESPACES
        out.append(
            Resource(
                kind="Service",
                name=f"svc-{i}",
                namespace=f"ns-{n}",
                spec={
                    "clusterIP": f"10.96.{s >> 8 & 255}.{s & 255}",
                    "selector": {"app": f"app-{i}"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            )
        )
    for p in range(pods):
        out.append(pod(p, per_ns, version="v1"))
    return out


def pod(p: int, per_ns: int, *, version: str) -> Resource:
    n, i = p % NAMESPACES, (p // NAMESPACES) % per_ns
    return Resource(
        kind="Pod",
        name=f"app-{i}-{p}",
        namespace=f"ns-{n}",
        labels={"app": f"app-{i}", "version": version},
        spec={
            "nodeName": f"node-{p % NODES}",
            "serviceAccountName": f"app-{i}",
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        status={"phase": "Running", "podIP": f"10.{128 + (p >> 16 & 127)}.{p >> 8 & 255}.{p & 255}"},
    )


def pod_uid(resource: Resource) -> str:
    return f"Kubernetes//Pod/{resource.namespace}/{resource.name}"


# --- client processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    node: str
    key_pem: str
    chain_pem: str
    roots_pem: str


def client_process(
    conn: Connection, target: str, creds: list[Credential], expect: tuple[int, int], kind: str
) -> None:
    """Entry point of one client process: runs its clients and answers the parent's commands."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    configure_logging("warning")
    asyncio.run(_clients(conn, target, creds, expect, kind))


class RealClient:
    """ztunnel's own client: ``XdsClient`` decoding every resource into a ``ProxyState`` (``apply_delta``)."""

    def __init__(self, target: str, cred: Credential, expect: tuple[int, int]) -> None:
        self.expect = expect
        self.cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
        self.client = XdsClient(
            target,
            channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
            node_id=f"ztunnel~10.0.0.1~ztunnel-{cred.node}.istio-system~istio-system.svc.cluster.local",
            metadata={"NODE_NAME": cred.node},
            cell=self.cell,
            channel_options=channel_options(),
        )

    async def run(self) -> None:
        await self.client.run()

    def close(self) -> None:
        self.client.close()

    async def synced(self) -> float:
        n_workloads, n_services = self.expect
        await self.client.ready.wait()  # set once the first response of each type is applied and ACKed
        await self.cell.wait_for(
            lambda s: len(s.workloads) >= n_workloads and len(s.services) >= n_services, timeout=SYNC_TIMEOUT
        )
        return time.monotonic()

    async def seen(self, uid: str, revision: str) -> float | None:
        def has_it(state: ProxyState) -> bool:
            w = state.find_workload(uid)
            return w is not None and w.canonical_revision == revision

        try:
            await self.cell.wait_for(has_it, timeout=CHANGE_TIMEOUT)
        except TimeoutError:
            return None
        return time.monotonic()


class LightClient:
    """The same delta-xDS stream (TLS, node credential, sans-IO ``DeltaXdsClientProtocol``, an ACK per
    response) without decoding resources into a ProxyState: it only tracks names and versions. Isolates
    istiod's cost from the clients' on a machine where both share two cores."""

    def __init__(self, target: str, cred: Credential, expect: tuple[int, int]) -> None:
        self.expect = expect
        self.protocol = DeltaXdsClientProtocol(
            f"ztunnel~10.0.0.1~ztunnel-{cred.node}.istio-system~istio-system.svc.cluster.local",
            {"NODE_NAME": cred.node},
            ZTUNNEL_TYPE_URLS,
        )
        self.channel = grpc.aio.secure_channel(
            target,
            channel_credentials(cred.roots_pem, cred.key_pem, cred.chain_pem),
            options=[("grpc.max_receive_message_length", 200 * 1024 * 1024), *channel_options()],
        )
        self.held: dict[str, bytes] = {}  # address resource name -> its latest serialized body
        self.progress = asyncio.Event()
        self.call: Any = None

    async def run(self) -> None:
        self.call = discovery_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).DeltaAggregatedResources()
        try:
            for request in self.protocol.start(now=time.monotonic()):
                await self.call.write(request)
            while (response := await self.call.read()) is not grpc.aio.EOF:
                received = self.protocol.receive(response)
                if received.type_url.endswith("istio.workload.Address"):
                    self.held.update(received.bodies)
                    for name in received.removals:
                        self.held.pop(name, None)
                await self.call.write(self.protocol.ack(received.type_url, received.nonce))
                self.progress.set()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            await self.channel.close(grace=None)

    def close(self) -> None:
        if self.call is not None:
            self.call.cancel()

    async def _until(self, predicate: Any, timeout: float) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.progress.clear()
                    await self.progress.wait()
        except TimeoutError:
            return False
        return True

    async def synced(self) -> float:
        n_workloads, n_services = self.expect

        def full() -> bool:
            pods = sum(1 for name in self.held if "//Pod/" in name)
            return self.protocol.ready and pods >= n_workloads and len(self.held) - pods >= n_services

        await self._until(full, SYNC_TIMEOUT)
        return time.monotonic()

    async def seen(self, uid: str, revision: str) -> float | None:
        def has_it() -> bool:
            body = self.held.get(uid)
            return body is not None and workload_pb2.Address.FromString(body).workload.canonical_revision == revision

        return time.monotonic() if await self._until(has_it, CHANGE_TIMEOUT) else None


async def _clients(
    conn: Connection, target: str, creds: list[Credential], expect: tuple[int, int], kind: str
) -> None:
    factory = RealClient if kind == "xds" else LightClient
    clients: list[RealClient | LightClient] = []
    tasks: list[asyncio.Task[None]] = []
    conn.send(("hello",))  # imports done: the parent starts its clock after every process says hello
    while True:
        command, *args = await asyncio.to_thread(conn.recv)
        if command == "connect":
            clients = [factory(target, cred, expect) for cred in creds]
            tasks = [asyncio.create_task(c.run()) for c in clients]
            conn.send(("synced", list(await asyncio.gather(*(c.synced() for c in clients)))))
        elif command == "await":
            uid, revision = args
            waits = [asyncio.create_task(c.seen(uid, revision)) for c in clients]
            conn.send(("armed",))
            conn.send(("seen", list(await asyncio.gather(*waits))))
        elif command == "cpu":
            conn.send(("cpu", time.process_time()))
        elif command == "stop":
            for c in clients:
                c.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.send(("stopped",))
            return


# --- istiod -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"istiod-lite exited with {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if http_get(url).strip() == "ready":
                return
        except OSError:
            pass
        time.sleep(0.05)  # polling a process we started, bounded by the deadline
    sys.exit(f"istiod-lite not ready after {READY_TIMEOUT:.0f} s; see {log}")


METRICS = {
    "istiod_lite_xds_resources_pushed_total": "resources",
    "istiod_lite_xds_bytes_pushed_total": "bytes",
    "pilot_xds_push_time_count": "responses",
    "pilot_xds_push_time_sum": "push_seconds",  # from the change being set to its response written
    "istiod_lite_registry_recompute_seconds_count": "updates",
    "istiod_lite_registry_recompute_seconds_sum": "update_seconds",
}


def counters(metrics_url: str) -> dict[str, float]:
    """istiod's counters this benchmark reads, summed over labels."""
    out = dict.fromkeys(METRICS.values(), 0.0)
    for family in text_string_to_metric_families(http_get(metrics_url)):
        for sample in family.samples:
            if sample.name in METRICS:
                out[METRICS[sample.name]] += sample.value
    return out


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after[key] - before[key]


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def synced_streams(syncz_url: str) -> tuple[int, int]:
    """(streams, streams whose every type is SYNCED) from /debug/syncz."""
    streams = json.loads(http_get(syncz_url))
    ok = sum(1 for s in streams if s["types"] and all(t["status"] == "SYNCED" for t in s["types"].values()))
    return len(streams), ok


# --- the run ------------------------------------------------------------------------------------------


class SqliteBackend:
    """The embedded store (what the local cluster uses): resources applied to ``store.db`` in the state dir."""

    name = "sqlite"

    def __init__(self, state_dir: Path, resources: list[Resource]) -> None:
        self.store = SqliteStore(store_path(state_dir))
        self.store.apply(resources)
        self.state_dir = state_dir

    def env(self) -> dict[str, str]:
        return {}

    def load_ca(self) -> CertificateAuthority:
        return load_ca(IstiodConfig(state_dir=self.state_dir), datetime.now(UTC))  # creates the root istiod loads

    def write(self, changed: Resource) -> None:
        self.store.apply([changed])  # what `ambientctl apply -f pod.yaml` does

    def close(self) -> None:
        self.store.close()


class KubernetesBackend:
    """The API server stand-in (``meshcore.testing.kube_api``) on a thread of this process, holding the
    resources as API objects; istiod-lite runs with ``STORE=kubernetes`` and a kubeconfig pointing at it, so
    its start is the reflectors' paginated list of every kind plus the registry; a pod change is a write to
    the API server by another client (what ``kubectl apply`` does), reaching istiod through its watch."""

    name = "kubernetes"

    def __init__(self, state_dir: Path, resources: list[Resource]) -> None:
        from meshcore.store.kubernetes import to_manifest
        from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig

        self._to_manifest = to_manifest
        self.api = ThreadedKubeApi().start()
        system = Resource(kind="Namespace", name="istio-system")  # the CA Secret and the leader Lease
        docs = [to_manifest(r, with_status=True) for r in [system, *resources]]

        def load() -> None:
            for doc in docs:
                self.api.server.put_object(doc)

        self.api.call(load)
        self.kubeconfig = Path(write_kubeconfig(state_dir / "kubeconfig", self.api.url))
        self.state_dir = state_dir

    def env(self) -> dict[str, str]:
        return {"STORE": "kubernetes", "KUBECONFIG": str(self.kubeconfig), "POD_NAME": "istiod-bench"}

    def load_ca(self) -> CertificateAuthority:
        from meshcore.store.kubernetes import load_configuration

        # Creates istio-ca-secret in the stand-in; istiod-lite reads the same root from it.
        configuration = load_configuration(host=self.api.url)
        return load_ca(IstiodConfig(state_dir=self.state_dir), datetime.now(UTC), kubernetes=configuration)

    def write(self, changed: Resource) -> None:
        self.api.call(self.api.server.put_object, self._to_manifest(changed, with_status=True))

    def close(self) -> None:
        self.api.stop()


BACKENDS = {"sqlite": SqliteBackend, "kubernetes": KubernetesBackend}


@dataclass
class Figures:
    """One backend's run, for the comparison table."""

    backend: str
    startup: float
    cpu_ready: float
    full_sync: float
    rss_ready: str
    peak_rss: str
    change_median: float
    change_max: float
    client_median: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--procs", type=int, default=5, help="client processes the clients are spread over")
    parser.add_argument("--changes", type=int, default=7, help="one-pod changes to time")
    parser.add_argument(
        "--client",
        choices=["xds", "light"],
        default="xds",
        help="xds: ztunnel's XdsClient (decodes into a ProxyState); light: same stream, no decoding",
    )
    parser.add_argument(
        "--store",
        choices=["sqlite", "kubernetes", "both"],
        default="sqlite",
        help="istiod-lite's store: the embedded SQLite store, the Kubernetes store against the API stand-in, "
        "or both one after the other in this run (then a comparison table)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the state dir (and istiod's log)")
    args = parser.parse_args()

    configure_logging("warning")
    figures = [measure(args, name) for name in (["sqlite", "kubernetes"] if args.store == "both" else [args.store])]
    if len(figures) > 1:
        print()
        print(f"| measure ({args.pods} pods, {args.services} services, {args.clients} clients) | "
              + " | ".join(f.backend for f in figures) + " |")
        print("|---|" + "---|" * len(figures))
        rows = [
            ("istiod-lite start to ready (store synced, registry built): wall / CPU",
             [f"{f.startup:.1f} s / {f.cpu_ready:.1f} s" for f in figures]),
            (f"full sync: all {args.clients} clients hold and ACKed the full state",
             [f"{f.full_sync:.2f} s" for f in figures]),
            ("istiod-lite RSS when ready / peak (VmHWM)", [f"{f.rss_ready} / {f.peak_rss}" for f in figures]),
            (f"one pod change reaches all {args.clients} clients: median / max of {args.changes}",
             [f"{f.change_median * 1000:.0f} ms / {f.change_max * 1000:.0f} ms" for f in figures]),
            ("one pod change, median client: median", [f"{f.client_median * 1000:.0f} ms" for f in figures]),
        ]
        for label, cells in rows:
            print(f"| {label} | " + " | ".join(cells) + " |")


def measure(args: argparse.Namespace, backend_name: str) -> Figures:
    """One full run (store, istiod-lite, clients, full sync, pod changes) on one backend; prints its table."""
    print(f"=== store: {backend_name} ===")
    state_dir = Path(tempfile.mkdtemp(prefix="bench-cp-"))
    print(f"state dir {state_dir}")
    resources = cluster(args.pods, args.services)
    started = time.perf_counter()
    backend = BACKENDS[backend_name](state_dir, resources)
    print(f"store ({backend_name}): wrote {len(resources)} resources in {time.perf_counter() - started:.1f} s")

    ca = backend.load_ca()
    creds = []
    for c in range(args.clients):
        issued = ca.issue_node_credential(f"node-{c % NODES}", datetime.now(UTC))
        creds.append(Credential(f"node-{c % NODES}", issued.key_pem, issued.chain_pem, issued.roots_pem))

    xds_port, mon_port = free_port(), free_port()
    log = state_dir / "istiod.log"
    env = {**os.environ, "LOG_LEVEL": "warning", **backend.env()}
    started = time.perf_counter()
    with log.open("wb") as log_file:
        istiod = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "istiod_lite",
                "--state-dir",
                str(state_dir),
                "--xds-address",
                f"127.0.0.1:{xds_port}",
                "--monitoring-address",
                f"127.0.0.1:{mon_port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{mon_port}"
    workers: list[tuple[mp.process.BaseProcess, Connection]] = []
    try:
        wait_ready(f"{base}/ready", istiod, log)
        startup = time.perf_counter() - started
        cpu_ready = cpu_seconds(istiod.pid)  # less at the mercy of other load on the machine than the wall time
        rss_ready = proc_status(istiod.pid)["VmRSS"]
        print(f"istiod-lite: ready in {startup:.1f} s, {cpu_ready:.1f} s of CPU (pid {istiod.pid}), RSS {rss_ready} "
              "before any client")

        ctx = mp.get_context("spawn")
        procs = max(1, min(args.procs, args.clients))
        for w in range(procs):
            parent, child = ctx.Pipe()
            share = creds[w::procs]
            p = ctx.Process(
                target=client_process,
                args=(child, f"127.0.0.1:{xds_port}", share, (args.pods, args.services), args.client),
                daemon=True,
            )
            p.start()
            workers.append((p, parent))

        for _, conn in workers:
            expect(conn, "hello", 60)
        cpu_before = cpu_seconds(istiod.pid)
        clients_cpu_before = client_cpu(workers)
        sync_before = counters(f"{base}/metrics")
        t0 = time.monotonic()
        for _, conn in workers:
            conn.send(("connect",))
        sync_times = [t for _, conn in workers for t in expect(conn, "synced", SYNC_TIMEOUT)[0]]
        # Every client applied the full state and wrote its ACK; wait for istiod to have read every ACK.
        deadline = time.monotonic() + 30
        while (synced := synced_streams(f"{base}/debug/syncz"))[1] < args.clients and time.monotonic() < deadline:
            time.sleep(0.01)
        acked = time.monotonic()
        streams, ok = synced
        full_sync = acked - t0
        cpu_sync = cpu_seconds(istiod.pid) - cpu_before
        clients_cpu = client_cpu(workers) - clients_cpu_before
        sync_after = counters(f"{base}/metrics")
        status = proc_status(istiod.pid)
        print(
            f"full sync: {len(sync_times)} clients hold {args.pods} workloads + {args.services} services "
            f"after {max(sync_times) - t0:.2f} s (median client {statistics.median(sync_times) - t0:.2f} s), "
            f"all ACKs read by istiod after {full_sync:.2f} s; "
            f"syncz: {ok}/{streams} streams SYNCED; CPU: istiod {cpu_sync:.1f} s, clients {clients_cpu:.1f} s; "
            f"{delta(sync_after, sync_before, 'resources') / args.clients:.0f} resources, "
            f"{delta(sync_after, sync_before, 'bytes') / args.clients / 1e6:.2f} MB per client"
        )
        print(f"istiod-lite memory: peak RSS (VmHWM) {status['VmHWM']}, now (VmRSS) {status['VmRSS']}")

        per_ns = max(1, args.services // NAMESPACES)
        latencies: list[float] = []
        medians: list[float] = []
        per_client: list[tuple[float, float]] = []
        server_side: list[float] = []  # istiod's mean time from the registry update to each response written
        registry: list[float] = []  # istiod's registry update (incremental) + handing it to the push server
        for i in range(args.changes):
            index = (i * 7919) % args.pods
            changed = pod(index, per_ns, version=f"v{i + 2}")
            before = counters(f"{base}/metrics")
            for _, conn in workers:
                conn.send(("await", pod_uid(changed), f"v{i + 2}"))
            for _, conn in workers:
                expect(conn, "armed", 10)
            t_change = time.monotonic()
            backend.write(changed)
            seen = [t for _, conn in workers for t in expect(conn, "seen", CHANGE_TIMEOUT + 5)[0]]
            missing = sum(1 for t in seen if t is None)
            if missing:
                sys.exit(f"change {i}: {missing} client(s) never saw the pod change")
            arrivals = [t - t_change for t in seen if t is not None]
            # The counters are bumped as each response is written; give the last writes a moment to land.
            after = before
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                after = counters(f"{base}/metrics")
                if delta(after, before, "responses") >= args.clients:
                    break
                time.sleep(0.02)
            latencies.append(max(arrivals))
            medians.append(statistics.median(arrivals))
            per_client.append(
                (delta(after, before, "resources") / args.clients, delta(after, before, "bytes") / args.clients)
            )
            responses, updates = delta(after, before, "responses"), delta(after, before, "updates")
            server_side.append(delta(after, before, "push_seconds") / responses if responses else float("nan"))
            registry.append(delta(after, before, "update_seconds") / updates if updates else float("nan"))
            print(
                f"pod change {i + 1}: all {len(arrivals)} clients after {max(arrivals) * 1000:.0f} ms "
                f"(first {min(arrivals) * 1000:.0f} ms, median {statistics.median(arrivals) * 1000:.0f} ms); per client "
                f"{per_client[-1][0]:.1f} resources, {per_client[-1][1]:.0f} bytes; istiod: registry update "
                f"{registry[-1] * 1000:.1f} ms, change set -> response written {server_side[-1] * 1000:.0f} ms "
                "(mean over streams)"
            )
        status = proc_status(istiod.pid)

        print()
        print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}")
        print(f"date: {datetime.now(UTC).date().isoformat()}")
        print(
            f"command: .venv/bin/python bench/controlplane.py --pods {args.pods} --services {args.services} "
            f"--clients {args.clients} --procs {procs} --changes {args.changes} --client {args.client} "
            f"--store {args.store}"
        )
        print()
        print(f"| measure (store: {backend_name}) | value | target |")
        print("|---|---|---|")
        print(f"| istiod-lite start (load store, compute, serialize): wall / CPU | {startup:.1f} s / {cpu_ready:.1f} s | |")
        print(f"| full sync: all {args.clients} clients hold and ACKed the full state | {full_sync:.2f} s | < 10 s |")
        print(f"| CPU during the full sync: istiod-lite / all client processes | {cpu_sync:.1f} s / {clients_cpu:.1f} s | |")
        print(f"| istiod-lite RSS when ready, before clients | {rss_ready} | |")
        print(f"| istiod-lite peak RSS (VmHWM) | {status['VmHWM']} | |")
        print(
            f"| one pod change reaches all {args.clients} clients: median / max of {args.changes} | "
            f"{statistics.median(latencies) * 1000:.0f} ms / {max(latencies) * 1000:.0f} ms | < 200 ms |"
        )
        print(
            f"| one pod change, median client: median / max | "
            f"{statistics.median(medians) * 1000:.0f} ms / {max(medians) * 1000:.0f} ms | |"
        )
        print(
            f"| istiod-lite registry update for one pod change: median / max | "
            f"{statistics.median(registry) * 1000:.1f} ms / {max(registry) * 1000:.1f} ms | a few ms |"
        )
        print(
            f"| istiod-lite change set -> response written, mean over streams: median / max | "
            f"{statistics.median(server_side) * 1000:.0f} ms / {max(server_side) * 1000:.0f} ms | |"
        )
        print(
            f"| pushed per client per pod change: resources / bytes (max) | "
            f"{max(r for r, _ in per_client):.0f} / {max(b for _, b in per_client):.0f} B | O(1) |"
        )
        return Figures(backend_name, startup, cpu_ready, full_sync, rss_ready, status["VmHWM"], statistics.median(latencies),
                       max(latencies), statistics.median(medians))
    finally:
        for _, conn in workers:
            try:
                conn.send(("stop",))
                expect(conn, "stopped", 20)
            except (OSError, EOFError, TimeoutError):
                pass
        for p, _ in workers:
            p.join(5)
            if p.is_alive():
                p.terminate()
        istiod.terminate()
        try:
            istiod.wait(20)
        except subprocess.TimeoutExpired:
            istiod.kill()
        backend.close()
        if not args.keep:
            shutil.rmtree(state_dir, ignore_errors=True)


def client_cpu(workers: list[tuple[mp.process.BaseProcess, Connection]]) -> float:
    """CPU seconds the client processes have used so far, summed."""
    for _, conn in workers:
        conn.send(("cpu",))
    return sum(expect(conn, "cpu", 30)[0] for _, conn in workers)


def expect(conn: Connection, what: str, timeout: float) -> list[Any]:
    """The next message from a client process, which must be ``what``; its arguments."""
    if not conn.poll(timeout):
        raise TimeoutError(f"no {what!r} from a client process after {timeout:.0f} s")
    kind, *args = conn.recv()
    if kind != what:
        raise RuntimeError(f"expected {what!r} from a client process, got {kind!r}")
    return args


if __name__ == "__main__":
    main()

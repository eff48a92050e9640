"""Benchmark: how fast the node agent captures pods — `namespace enable` with N running pods, and pod ADD.

Variants, alternated ``--repeat`` times in one run, each with a fresh store, agent and pods, on this
machine's real kernel: the agent with the ``nft`` binary (``NFT_PATH=nft``), with libnftables (the
default), and with ``--baseline DIR`` also an older source tree's agent and plugin ("before").
- N pods, each a network namespace with ``lo`` and a veth ``eth0`` (an address and a default route, so
  an outbound connection has somewhere to go; the peer stays in the pod, nothing touches the host), and
  a listener on 15001 (the stand-in for the in-pod ztunnel's, open before the pod is handed over).
- The node agent runs as its own process (``python -m ztunnel.cni.agent``: its own GIL, as deployed)
  on a fresh embedded store; a ``FakeZtunnel`` in this process takes the ZDS hand-offs and acks them.
- The pods are in the store (Running, on node-1) and the agent knows their netns from CNI ADD events,
  sent while their namespace was not enrolled (the agent answers "not captured").
- enable: the store label write ``istio.io/dataplane-mode=ambient`` on the namespace is t=0; measured
  until each pod's AddWorkload reaches the fake ztunnel, and until a TCP connection made inside the last
  pod handed over, to an outside address (10.255.0.1:80), is accepted by that pod's 15001 listener with
  SO_ORIGINAL_DST = 10.255.0.1:80: the first captured connection of the last pod. Also the agent's CPU
  (its threads, and its nft child processes).
- disable: the label removed; until every pod got its DelWorkload.
- pod ADD to ready, per pod in the enabled namespace (one at a time): the pod is added to the store,
  then the CNI ADD is made, either as the plugin's event (what ``ztunnel.cni.plugin`` sends the agent,
  without the plugin process) or as the plugin process itself (``python -m ztunnel.cni.plugin``, what a
  kubelet runs, Python start included). Measured until the AddWorkload reaches the fake ztunnel and
  until the ADD returns (the agent answers after the ack and the pod annotation).
Figures are medians over the repetitions; ADD latencies are pooled over them.

Needs root (netns, nftables). Everything it makes is removed at the end, also on failure. Never part of
the test run.

    .venv/bin/python bench/enroll.py [--pods 100] [--add-pods 30] [--repeat 3] [--only binary|library]
        [--baseline DIR] [--max-parallel N] [--log-dir DIR] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _util as u  # noqa: E402  (bench/ is not a package)
from pyroute2 import NetNS  # noqa: E402
from pyroute2 import netns as pyroute2_netns  # noqa: E402

from meshcore.aio.netns import NetnsHandle, socket_in_netns  # noqa: E402
from meshcore.logs import configure_logging  # noqa: E402
from meshcore.store import ResourceRef, SqliteStore, build_resource  # noqa: E402
from ztunnel.cni.events import PluginEvent, send_event  # noqa: E402
from ztunnel.cni.testing import FakeZtunnel  # noqa: E402
from ztunnel.inpod.errors import ZdsClosed  # noqa: E402
from ztunnel.inpod.protocol import AddWorkload, DelWorkload  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
NODE = "node-1"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
OUTSIDE = ("10.255.0.1", 80)
OUTBOUND_PORT = 15001
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
TIMEOUT = 120.0
TARGET_ENABLE_S = 1.0  # issue 4: enable-to-captured under 1 s for 100 running pods
BACKENDS = {"binary": "nft", "library": None}  # NFT_PATH for the agent; None: unset (libnftables)
LABELS = {"binary": "nft binary", "library": "libnftables", "before": "before (nft binary)"}


@dataclass
class Pod:
    name: str
    netns: str  # name under /var/run/netns
    uid: str = ""
    listener: socket.socket | None = None

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"


@dataclass
class Run:
    backend: str
    pods: int
    first_add_s: float = 0.0
    median_add_s: float = 0.0
    last_add_s: float = 0.0
    captured_conn_s: float = 0.0
    agent_cpu_s: float = 0.0
    agent_loop_cpu_s: float = 0.0  # of which the event-loop (main) thread
    nft_cpu_s: float = 0.0  # its finished child processes (nft, with the binary backend)
    release_s: float = 0.0
    event_add_s: list[float] = field(default_factory=list)
    event_ready_s: list[float] = field(default_factory=list)
    plugin_add_s: list[float] = field(default_factory=list)
    plugin_ready_s: list[float] = field(default_factory=list)


# --- pods --------------------------------------------------------------------------------------------


def make_pod(name: str, index: int) -> Pod:
    """A pod netns: lo up, veth eth0 with 10.201.x.y/16 and a default route, a listener on :15001."""
    pod = Pod(name=name, netns=f"bench-enroll-{os.getpid()}-{index}")
    pyroute2_netns.create(pod.netns)
    try:
        _wire_pod(pod, index)
    except BaseException:
        drop_pod(pod)
        raise
    return pod


def _wire_pod(pod: Pod, index: int) -> None:
    with NetNS(pod.netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname="eth0", kind="veth", peer="peer0")  # both ends stay in the pod
        ipr.link("set", index=ipr.link_lookup(ifname="peer0")[0], state="up")
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address=f"10.201.{index // 250}.{index % 250 + 1}", prefixlen=16)
        ipr.link("set", index=eth0, state="up")
        ipr.route("add", dst="0.0.0.0/0", oif=eth0)
    with NetnsHandle.open(pod.path) as handle:
        sock = socket_in_netns(handle, mark=0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", OUTBOUND_PORT))
    sock.listen(16)
    pod.listener = sock


def drop_pod(pod: Pod) -> None:
    if pod.listener is not None:
        pod.listener.close()
    with contextlib.suppress(OSError):
        pyroute2_netns.remove(pod.netns)


def captured_connection(pod: Pod) -> tuple[str, int]:
    """Connect from inside ``pod`` to OUTSIDE; the pod's 15001 listener must accept it. Returns the
    accepted connection's original destination."""
    assert pod.listener is not None
    with NetnsHandle.open(pod.path) as handle:
        client = socket_in_netns(handle, mark=0)
    pod.listener.settimeout(5)
    client.settimeout(5)
    try:
        client.connect(OUTSIDE)
        accepted, _ = pod.listener.accept()
        with accepted:
            raw = accepted.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntoa(addr), port
    finally:
        client.close()


def pod_doc(name: str, index: int) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench"}},
        "spec": {"nodeName": NODE, "serviceAccountName": "bench"},
        "status": {"phase": "Running", "podIP": f"10.201.{index // 250}.{index % 250 + 1}"},
    }


# --- the agent ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def agent_process(
    state: Path, nft: str | None, src: Path, max_parallel: int | None, profile: Path | None
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "NODE_NAME": NODE,
        "AMBIENT_STATE_DIR": str(state),
        "INPOD_UDS": str(state / "ztunnel.sock"),
        "CNI_EVENT_ADDRESS": str(state / "pluginevent.sock"),
        "NETNS_MAP_PATH": str(state / "pods.json"),
        "MONITORING_ADDR": "",
        "ADMIN_ADDR": "",  # the agent's /debug/pods: off (a fixed loopback port would clash across runs)
        "PROC_ROOT": str(state / "no-proc"),  # pods are known from CNI events; no /proc scan
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
    }
    env.pop("NFT_PATH", None)
    if nft is not None:
        env["NFT_PATH"] = nft
    if max_parallel is not None:
        env["MAX_PARALLEL"] = str(max_parallel)
    log = open(state / "agent.log", "wb")  # noqa: SIM115  (closed below)
    wrap = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    proc = subprocess.Popen(
        [sys.executable, *wrap, "-m", "ztunnel.cni.agent"],
        cwd=src,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


async def _greeted(fake: FakeZtunnel) -> FakeZtunnel:
    await fake.start()
    async with asyncio.timeout(10):
        await fake.wait_until(lambda: fake.snapshot_done)
    return fake


async def connect_fake_ztunnel(sock: Path, proc: subprocess.Popen[bytes]) -> FakeZtunnel:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise u.BenchError(f"node agent exited with {proc.returncode}; see its log")
        if os.path.exists(sock):  # noqa: ASYNC240  (a stat, once per 50 ms)
            with contextlib.suppress(OSError):
                return await _greeted(FakeZtunnel(sock))
        if time.monotonic() > deadline:
            raise u.BenchError("node agent did not open its ZDS socket within 30 s")
        await asyncio.sleep(0.05)


def main_thread_cpu(pid: int) -> float:
    """utime+stime of a process's main thread (the agent's event loop), from /proc/PID/task/PID/stat."""
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """cutime+cstime: CPU of a process's children it has waited for (the nft processes it ran)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


class AddClock:
    """Arrival time (perf_counter) of each AddWorkload/DelWorkload at the fake ztunnel: ``follow`` (run it
    as a task) stamps every packet as the fake wakes its waiters, right after it acked it."""

    def __init__(self, fake: FakeZtunnel) -> None:
        self.fake = fake
        self.seen = len(fake.requests)
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}

    def poll(self) -> None:
        now = time.perf_counter()
        for req in self.fake.requests[self.seen :]:
            if isinstance(req, AddWorkload):
                self.added.setdefault(req.uid, now)
            elif isinstance(req, DelWorkload):
                self.deleted.setdefault(req.uid, now)
        self.seen = len(self.fake.requests)

    async def follow(self) -> None:
        with contextlib.suppress(ZdsClosed):
            while True:
                await self.fake.wait_until(lambda: len(self.fake.requests) > self.seen)
                self.poll()

    async def until(self, done: object, what: str) -> None:
        def check() -> bool:
            self.poll()
            return bool(done() if callable(done) else done)

        try:
            async with asyncio.timeout(TIMEOUT):
                await self.fake.wait_until(check)
        except TimeoutError:
            raise u.BenchError(f"{what} not reached within {TIMEOUT:g}s") from None


# --- one backend ----------------------------------------------------------------------------------------


def cni_env(pod: Pod, command: str = "ADD") -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"c-{pod.name}",
        "CNI_NETNS": pod.path,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod.name}",
        "CNI_PATH": "/opt/cni/bin",
    }


def run_plugin(state: Path, pod: Pod, src: Path) -> subprocess.CompletedProcess[bytes]:
    conf = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambient-cni",
        "state_dir": str(state),
        "cni_event_address": str(state / "pluginevent.sock"),
        "event_timeout": 30,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.201.0.1/16"}]},
    }
    return subprocess.run(
        [sys.executable, "-m", "ztunnel.cni.plugin"],
        input=json.dumps(conf).encode(),
        env={**cni_env(pod), "PYTHONPATH": str(src)},
        cwd=src,
        capture_output=True,
        timeout=60,
        check=False,
    )


def event(pod: Pod, wait: bool) -> PluginEvent:
    return PluginEvent(
        cmd="add",
        pod_namespace=NAMESPACE,
        pod_name=pod.name,
        container_id=f"c-{pod.name}",
        netns=pod.path,
        ifname="eth0",
        wait=wait,
    )


async def run_backend(backend: str, args: argparse.Namespace, pods: list[Pod], extra: list[Pod]) -> Run:
    result = Run(backend, len(pods))
    with tempfile.TemporaryDirectory(prefix="bench-enroll-") as tmp:
        state = Path(tmp)
        store = SqliteStore(state / "store.db")
        try:
            ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            results = store.apply(
                [build_resource(ns)] + [build_resource(pod_doc(p.name, i)) for i, p in enumerate(pods)]
            )
            for pod, res in zip(pods, results[1:], strict=True):
                pod.uid = res.resource.uid
            profile = args.profile / f"agent-{backend}.prof" if args.profile else None
            src = args.baseline if backend == "before" else REPO
            nft = "nft" if backend == "before" else BACKENDS[backend]
            with agent_process(state, nft, src, args.max_parallel, profile) as proc:
                fake = await connect_fake_ztunnel(state / "ztunnel.sock", proc)
                try:
                    await measure(result, state, src, store, proc, fake, pods, extra)
                finally:
                    await fake.close()
        finally:
            store.close()
            if args.log_dir is not None:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                (args.log_dir / f"agent-{backend}.log").write_bytes((state / "agent.log").read_bytes())
    return result


async def measure(
    result: Run,
    state: Path,
    src: Path,
    store: SqliteStore,
    proc: subprocess.Popen[bytes],
    fake: FakeZtunnel,
    pods: list[Pod],
    extra: list[Pod],
) -> None:
    events = str(state / "pluginevent.sock")
    # The pods were started before their namespace was enrolled: the agent knows their netns.
    for pod in pods:
        reply = await asyncio.to_thread(send_event, events, event(pod, wait=False), 30)
        if not reply.ok or reply.captured:
            raise u.BenchError(f"CNI ADD of not-enrolled pod {pod.name}: {reply}")

    clock = AddClock(fake)
    follower = asyncio.create_task(clock.follow())
    try:
        await measure_with(result, events, src, store, proc, pods, extra, clock)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def measure_with(
    result: Run,
    events: str,
    src: Path,
    store: SqliteStore,
    proc: subprocess.Popen[bytes],
    pods: list[Pod],
    extra: list[Pod],
    clock: AddClock,
) -> None:
    state = Path(events).parent
    ns_ref = ResourceRef("Namespace", "", NAMESPACE)
    cpu0, loop0, kids0 = u.cpu_seconds(proc.pid), main_thread_cpu(proc.pid), children_cpu(proc.pid)
    t0 = time.perf_counter()
    store.set_labels(ns_ref, AMBIENT, [])
    uids = {p.uid for p in pods}
    await clock.until(lambda: uids <= clock.added.keys(), f"AddWorkload for all {len(pods)} pods")
    last = max(pods, key=lambda p: clock.added[p.uid])
    dst = await asyncio.to_thread(captured_connection, last)
    t_conn = time.perf_counter() - t0
    if dst != OUTSIDE:
        raise u.BenchError(f"the captured connection's original destination is {dst}, not {OUTSIDE}")
    times = sorted(clock.added[p.uid] - t0 for p in pods)
    result.first_add_s, result.median_add_s, result.last_add_s = times[0], u.percentile(times, 50), times[-1]
    result.captured_conn_s = t_conn
    await asyncio.sleep(0.3)  # let the annotations land before reading the agent's CPU
    result.agent_cpu_s = u.cpu_seconds(proc.pid) - cpu0
    result.agent_loop_cpu_s = main_thread_cpu(proc.pid) - loop0
    result.nft_cpu_s = children_cpu(proc.pid) - kids0

    # pod ADD to ready, one pod at a time, in the enrolled namespace
    half = len(extra) // 2
    for i, pod in enumerate(extra):
        res = store.apply([build_resource(pod_doc(pod.name, len(pods) + i))])[0]
        pod.uid = res.resource.uid
        t1 = time.perf_counter()
        if i < half:
            reply = await asyncio.to_thread(send_event, events, event(pod, wait=True), 30)
            ok, detail = reply.ok and reply.captured, str(reply)
        else:
            done = await asyncio.to_thread(run_plugin, state, pod, src)
            ok, detail = done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
        t_ready = time.perf_counter() - t1
        if not ok:
            raise u.BenchError(f"CNI ADD of {pod.name} failed: {detail[:500]}")
        await clock.until(lambda p=pod: p.uid in clock.added, f"AddWorkload for {pod.name}")
        t_add = clock.added[pod.uid] - t1
        (result.event_add_s if i < half else result.plugin_add_s).append(t_add)
        (result.event_ready_s if i < half else result.plugin_ready_s).append(t_ready)

    everyone = uids | {p.uid for p in extra}
    t2 = time.perf_counter()
    store.set_labels(ns_ref, {}, list(AMBIENT))
    await clock.until(lambda: everyone <= clock.deleted.keys(), "DelWorkload for every pod")
    result.release_s = max(clock.deleted[uid] for uid in everyone) - t2


# --- report -----------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def dist(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"{ms(u.percentile(samples, 50))} / {ms(u.percentile(samples, 99))}"


def med(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def pooled(runs: list[Run], attr: str) -> list[float]:
    return [x for r in runs for x in getattr(r, attr)]


def report(results: dict[str, list[Run]], args: argparse.Namespace) -> str:
    """One column per backend: the median over the repetitions (and the range of the key figure);
    ADD latencies pooled over them."""
    n, cols = args.pods, list(results.values())
    rows = [
        [f"enable -> AddWorkload of the first / median pod (of {n})"]
        + [f"{ms(med(rs, 'first_add_s'))} / {ms(med(rs, 'median_add_s'))}" for rs in cols],
        [f"enable -> AddWorkload of the last pod (all {n})"] + [ms(med(rs, "last_add_s")) for rs in cols],
        ["**enable -> first captured connection of the last pod** (range)"]
        + [
            f"**{ms(med(rs, 'captured_conn_s'))}** ({ms(min(r.captured_conn_s for r in rs))}"
            f"-{ms(max(r.captured_conn_s for r in rs))})"
            for rs in cols
        ],
        [f"node agent CPU for the {n} captures: its own threads (event loop) + nft processes"]
        + [
            f"{med(rs, 'agent_cpu_s'):.2f} s ({med(rs, 'agent_loop_cpu_s'):.2f} s)"
            f" + {med(rs, 'nft_cpu_s'):.2f} s"
            for rs in cols
        ],
        [f"disable -> DelWorkload of every pod ({n} + {args.add_pods})"]
        + [ms(med(rs, "release_s")) for rs in cols],
        [f"pod ADD event -> AddWorkload, p50 / p99 ({len(pooled(cols[0], 'event_add_s'))} pods)"]
        + [dist(pooled(rs, "event_add_s")) for rs in cols],
        ["pod ADD event -> ADD answered (after ack + annotation), p50 / p99"]
        + [dist(pooled(rs, "event_ready_s")) for rs in cols],
        [f"plugin process ADD -> AddWorkload, p50 / p99 ({len(pooled(cols[0], 'plugin_add_s'))} pods)"]
        + [dist(pooled(rs, "plugin_add_s")) for rs in cols],
        ["plugin process ADD -> plugin exits 0, p50 / p99"]
        + [dist(pooled(rs, "plugin_ready_s")) for rs in cols],
    ]
    table = u.Table(["measure"] + [LABELS[b] for b in results], rows)
    lines = [table.markdown(), ""]
    for backend, rs in results.items():
        worst = max(r.captured_conn_s for r in rs)
        verdict = "met" if worst < TARGET_ENABLE_S else "MISSED"
        lines.append(
            f"target enable-to-captured < {TARGET_ENABLE_S:g} s for {n} pods, {LABELS[backend]}: "
            f"median {med(rs, 'captured_conn_s'):.3f} s, worst {worst:.3f} s of {len(rs)} ({verdict})"
        )
    return "\n".join(lines)


def header(argv: list[str]) -> str:
    load = os.getloadavg()
    return (
        f"# bench/enroll.py — {os.cpu_count()} cores (shared), {platform.machine()}, Linux "
        f"{platform.release()}, Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load {load[0]:.1f}, at {u.source_revision(REPO)}\n"
        f"# command: .venv/bin/python bench/enroll.py {' '.join(argv)}"
    )


async def amain(args: argparse.Namespace) -> int:
    backends = [args.only] if args.only else list(BACKENDS)
    if args.baseline is not None:
        backends.insert(0, "before")
    results: dict[str, list[Run]] = {b: [] for b in backends}
    for rep in range(args.repeat):
        for backend in backends:  # alternated, so a busy spell of the machine hits both
            pods: list[Pod] = []
            extra: list[Pod] = []
            try:
                for i in range(args.pods):
                    pods.append(await asyncio.to_thread(make_pod, f"app-{i}", i))
                for i in range(args.add_pods):
                    extra.append(await asyncio.to_thread(make_pod, f"new-{i}", args.pods + i))
                run = await run_backend(backend, args, pods, extra)
            finally:
                for pod in pods + extra:
                    drop_pod(pod)
            results[backend].append(run)
            print(
                f"-- run {rep + 1}/{args.repeat}, {LABELS[backend]}: {len(pods)} pods captured, "
                f"last connection at {ms(run.captured_conn_s)}; "
                f"agent CPU {run.agent_cpu_s:.2f} s + nft {run.nft_cpu_s:.2f} s; "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print(report(results, args))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=100, help="running pods enrolled at once (default 100)")
    parser.add_argument("--add-pods", type=int, default=30, help="pods added one by one (default 30)")
    parser.add_argument("--only", choices=sorted(BACKENDS), help="measure one nft backend only")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the agent and plugin of this source tree (e.g. `git archive <commit>` unpacked), "
        "with the nft binary, as the 'before' column",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend, alternated (default 3)")
    parser.add_argument("--max-parallel", type=int, help="the agent's MAX_PARALLEL (default: its own)")
    parser.add_argument("--profile", type=Path, help="run the agents under cProfile, stats written here")
    parser.add_argument("--log-dir", type=Path, help="keep each agent's log here (agent-<backend>.log)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/enroll.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    print(header(sys.argv[1:]), flush=True)
    configure_logging("warning")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    u.raise_nofile(4096)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: where a pod start's time goes on the local cluster with the mesh (a profile of
``Kubelet.sync_pods`` -> ``Cluster.add_pod``).

A two-node ``MeshCluster`` comes up with the mesh; its kubelet process is stopped and a ``Kubelet`` runs in
this process instead, with a timer around each phase of a pod start: the cluster state lock (waiting and
holding), state-file loads and saves, the sandbox (netns, veth, addresses, routes, hosts files: ``net.apply``),
the CNI ADD (the ``ambient-cni`` plugin process, which waits for the node agent to install the pod's
redirection), the service-account token (``PodCredentials.ensure``), the process start
(``ProcessSupervisor.start``), the store writes and the Services' reprogramming (``sync_services``). Pods are
plain Pods (the image stand-in on :9080) in an ambient namespace, so every one is captured. Two rounds:
one pod alone (its phases), then ``--pods`` at once in one ``sync_pods`` (the wall time of the pass and the
sum of each phase over its pods: a phase whose sum exceeds the wall time ran concurrently), alternating
rounds with ``POD_START_WORKERS`` = 1 (pods start one at a time, as before the thread pool) and 8, each
followed by the removal of its pods in one ``sync_pods`` pass with each ``--remove-workers`` value
(``POD_REMOVE_WORKERS``: pods removed at once; a round per start/removal pair); CPU seconds spent by each
process during each round. Needs root.
Everything is removed at the end, also on failure. Never part of the test run.

    .venv/bin/python bench/cluster_pod_start.py [--pods 20] [--workers 1 8] [--remove-workers 1 3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from ambientctl.cluster import kubelet as kubelet_module
from ambientctl.cluster.kubelet import Kubelet
from ambientctl.cluster.mesh import KUBELET
from ambientctl.cluster.testing import AMBIENT, MeshCluster, namespace
from meshcore.store import ResourceRef, load_documents


class Phases:
    """Per-phase call count and total seconds (summed over threads)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.total[name] += seconds
            self.calls[name] += 1

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        setattr(obj, attr, timed)

    def wrap_lock(self, state_file: Any) -> None:
        inner = state_file.lock

        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[None]:
            start = time.perf_counter()
            with inner(*args, **kwargs):
                got = time.perf_counter()
                self.add("state lock: waiting", got - start)
                try:
                    yield
                finally:
                    self.add("state lock: held", time.perf_counter() - got)

        state_file.lock = timed

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()

    def show(self, title: str, wall: float) -> None:
        print(f"\n{title}: wall {wall * 1000:.0f} ms")
        print(f"  {'phase':<34} {'calls':>5} {'sum ms':>9} {'per call':>9}")
        for name in sorted(self.total, key=lambda n: -self.total[n]):
            n = self.calls[name]
            print(f"  {name:<34} {n:>5} {self.total[name] * 1000:>9.0f} {self.total[name] * 1000 / n:>9.1f}")


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """utime + stime of a live process, in seconds (0 when it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_snapshot(mc: MeshCluster) -> dict[str, float]:
    """CPU seconds so far of each mesh component, of the pods' processes, of this process (the kubelet)
    and of its reaped children (CNI plugin runs, ip/nft)."""
    out = {f"component {p.name}": cpu_of(p.pid) for p in mc.cluster.status().processes}
    out["pods' processes (sum)"] = sum(cpu_of(r.process.pid) for r in mc.cluster.pods() if r.process)
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["kubelet (this process)"] = me.ru_utime + me.ru_stime
    out["kubelet's exited children (CNI plugins, ip, nft)"] = kids.ru_utime + kids.ru_stime
    return out


def show_cpu(before: dict[str, float], after: dict[str, float], wall: float) -> None:
    print(f"  CPU seconds during the pass (wall {wall:.2f} s, {os.cpu_count()} cpus):")
    spent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    for name in sorted(spent, key=lambda k: -spent[k]):
        print(f"    {name:<52} {spent[name]:6.2f}")
    print(f"    {'total':<52} {sum(spent.values()):6.2f}")


def pod(name: str, node: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: prof, labels: {{app: prof}}}}
spec:
  nodeName: {node}
  containers:
  - {{name: app, image: example.com/prof:v1, ports: [{{containerPort: 9080}}]}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 8], help="POD_START_WORKERS of each round (1: serial)"
    )
    parser.add_argument(
        "--remove-workers",
        type=int,
        nargs="+",
        default=[getattr(kubelet_module, "POD_REMOVE_WORKERS", 1)],
        help="POD_REMOVE_WORKERS of each round (1: one removal at a time)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="how many times the --workers rounds run")
    args = parser.parse_args()
    print(f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, {time.ctime()}")
    print("$ " + " ".join([sys.executable, *sys.argv]))
    mc = MeshCluster.create(nodes=2)
    try:
        mc.cluster.stop_component(KUBELET)
        phases = Phases()
        kubelet = Kubelet(mc.cluster, mc.store)
        cluster = mc.cluster
        phases.wrap_lock(cluster._state)
        phases.wrap(cluster._state, "load", "state file: load")
        phases.wrap(cluster._state, "save", "state file: save")
        phases.wrap(cluster.net, "apply", "net.apply (sandbox, services)")
        phases.wrap(cluster.cni, "add", "CNI ADD (plugin + node agent)")
        phases.wrap(cluster.procs, "start", "process start")
        phases.wrap(cluster, "add_pod", "Cluster.add_pod (whole)")
        phases.wrap(kubelet.credentials, "ensure", "credentials (token, root)")
        phases.wrap(kubelet, "sync_services", "sync_services (whole)")
        phases.wrap(mc.store, "apply", "store apply")
        phases.wrap(mc.store, "set_status", "store set_status")
        mc.apply(namespace("prof", AMBIENT))
        kubelet.sync_pods()
        phases.reset()

        mc.store.apply(load_documents(pod("one", "node-1"), "bench"))
        start = time.perf_counter()
        report = kubelet.sync_pods()
        wall = time.perf_counter() - start
        assert not report.rejected, report.rejected
        phases.show("one pod, one sync_pods pass", wall)

        rounds = []
        pairs = [(w, r) for w in args.workers for r in args.remove_workers] * args.repeat
        for n, (workers, remove_workers) in enumerate(pairs):
            kubelet_module.POD_START_WORKERS = workers
            kubelet_module.POD_REMOVE_WORKERS = remove_workers
            phases.reset()
            names = [f"r{n}-p{i}" for i in range(args.pods)]
            docs = "---\n".join(pod(name, f"node-{1 + i % 2}") for i, name in enumerate(names))
            mc.store.apply(load_documents(docs, "bench"))
            cpu_before = cpu_snapshot(mc)
            start = time.perf_counter()
            report = kubelet.sync_pods()
            wall = time.perf_counter() - start
            assert not report.rejected, report.rejected
            mc.wait_redirection([(name, "prof") for name in names], "enabled", timeout=120)
            captured = time.perf_counter() - start
            title = f"round {n}: {args.pods} pods, one sync_pods pass, {workers} worker(s)"
            phases.show(title, wall)
            show_cpu(cpu_before, cpu_snapshot(mc), wall)
            mc.store.delete([ResourceRef("Pod", "prof", name) for name in names])
            start = time.perf_counter()
            report = kubelet.sync_pods()
            removal = time.perf_counter() - start
            assert len(report.removed) == args.pods, report
            load = os.getloadavg()[0]
            rounds.append((workers, wall, captured, remove_workers, removal, load))
        print(
            f"\n| workers | {args.pods} pods started (sync_pods) | all captured | removal workers"
            f" | {args.pods} pods removed | load |"
        )
        print("|---|---|---|---|---|---|")
        for workers, wall, captured, remove_workers, removal, load in rounds:
            print(
                f"| {workers} | {wall:.2f} s | {captured:.2f} s | {remove_workers} | {removal:.2f} s | {load:.1f} |"
            )
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    finally:
        mc.close()


if __name__ == "__main__":
    main()

"""Benchmark: one CNI plugin call (``ambient-cni``), the process the kubelet starts for every pod's ADD and
DEL: wall time and CPU seconds per call, for each source tree given, alternating, in one run.

Each tree's plugin runs as the console script does (a fresh ``python`` process, that tree first on
``sys.path``), against a real embedded store holding an enrolled pod (namespace labelled
``istio.io/dataplane-mode=ambient``) and a stand-in node agent (a thread answering every event
``ok``), so an ADD does everything a real one does except wait for nftables: read the network config,
read the store, tell the agent and wait for its reply. ``--importtime`` also prints each tree's
heaviest imports. Never part of the test run.

    .venv/bin/python bench/cni_plugin.py [--tree /tmp/before] [--calls 40] [--importtime]

The current checkout is always measured (as ``.``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from meshcore.store import SqliteStore, build_resource

ROOT = Path(__file__).resolve().parents[1]


def fake_agent(path: str, stop: threading.Event) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    server.settimeout(0.2)

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5)
                    buf = b""
                    while b"\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                    conn.sendall(b'{"ok":true,"captured":true}\n')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def make_store(state_dir: Path) -> None:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "bench", "labels": {"istio.io/dataplane-mode": "ambient"}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "bench"},
         "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "x"}]}},
    ]  # fmt: skip
    with SqliteStore(state_dir / "store.db") as store:
        store.apply([build_resource(d) for d in docs])


def wrapper(directory: Path, tree: Path) -> Path:
    """An ``ambient-cni`` like the console script, importing from ``tree``."""
    script = directory / "ambient-cni"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(tree)!r})\n"
        "from ztunnel.cni.plugin import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


def call(binary: Path, command: str, stdin: bytes) -> tuple[float, float]:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/var/run/netns/bench",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=web;K8S_POD_UID=u1",
        "CNI_PATH": str(binary.parent),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([str(binary)], input=stdin, env=env, capture_output=True, timeout=60)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{binary} {command} failed: {done.stdout!r} {done.stderr[-500:]!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def importtime(tree: Path, top: int = 12) -> list[str]:
    probe = f"import sys; sys.path.insert(0, {str(tree)!r}); import ztunnel.cni.plugin"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [f"{us / 1000:7.1f} ms {name}" for us, name in rows[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="another source tree (repeatable)")
    parser.add_argument("--calls", type=int, default=40, help="ADD and DEL calls per tree (alternated)")
    parser.add_argument("--importtime", action="store_true")
    opts = parser.parse_args()
    print(f"# {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}")  # fmt: skip
    print("# " + " ".join([sys.executable, *sys.argv]))
    trees = {str(Path(t).resolve()): Path(t).resolve() for t in opts.tree}
    trees["."] = ROOT
    with tempfile.TemporaryDirectory(prefix="cni-bench-") as tmp:
        work = Path(tmp)
        make_store(work)
        sock = str(work / "event.sock")
        stop = threading.Event()
        agent = fake_agent(sock, stop)
        conf = {
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni",
            "state_dir": str(work), "cni_event_address": sock,
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/32"}]},
        }  # fmt: skip
        stdin = json.dumps(conf).encode()
        binaries = {}
        for label, tree in trees.items():
            directory = work / f"bin-{len(binaries)}"
            directory.mkdir()
            binaries[label] = wrapper(directory, tree)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(opts.calls):
            for label, binary in binaries.items():
                for command in ("ADD", "DEL"):
                    results.setdefault((label, command), []).append(call(binary, command, stdin))
        stop.set()
        agent.join(timeout=5)
    print(f"\n{'tree':40} {'call':4} {'wall ms (median)':>17} {'CPU ms (median)':>16} {'CPU ms (mean)':>14}")
    for (label, command), samples in results.items():
        walls = sorted(w for w, _ in samples)
        cpus = sorted(c for _, c in samples)
        print(
            f"{label:40} {command:4} {walls[len(walls) // 2] * 1000:17.1f} {cpus[len(cpus) // 2] * 1000:16.1f} "
            f"{sum(cpus) / len(cpus) * 1000:14.1f}"
        )
    if opts.importtime:
        for label, tree in trees.items():
            print(f"\n# heaviest imports (cumulative, -X importtime) of {label}")
            print("\n".join(importtime(tree)))


if __name__ == "__main__":
    main()

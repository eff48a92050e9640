"""Test kit for the end-to-end tier and the benchmarks: a local cluster with the mesh, driven through the
store as a user would (not used by ambientctl itself).

``run_ambientctl`` runs the real CLI in a subprocess and ``alive`` tells whether a pid still runs.
``MeshCluster.create`` brings up a cluster (unique prefix, short state directory so unix socket paths
fit) and the mesh on it; ``close`` always brings it down. Pods run the shipped apps
(``ambientctl.apps.echo`` / ``client``) and requests are made from inside pods with ``client``, whose
JSON answer is returned. Every wait is bounded (``wait_for``); nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ambientctl.capture import CaptureSummary, LinkCapture, summarize
from ambientctl.cluster import Cluster, ClusterSpec
from ambientctl.cluster.mesh import Mesh, MeshSettings
from meshcore.store import ResourceRef, SqliteStore, load_documents, store_path

T = TypeVar("T")
PY = sys.executable
REDIRECTION = "ambient.istio.io/redirection"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def random_prefix() -> str:
    return "e" + "".join(random.choices(string.ascii_lowercase + string.digits, k=3)) + "-"


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0, poll: float = 0.1) -> T:
    """``check()``'s first truthy value; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {value!r})")
        time.sleep(poll)


def run_ambientctl(
    state_dir: Path, *args: str, check: bool = True, timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    """``python -m ambientctl --state-dir <state_dir> args...`` as a user runs it (bounded by ``timeout``);
    with ``check``, a non-zero exit fails the test naming the args, stdout and stderr."""
    done = subprocess.run(
        [PY, "-m", "ambientctl", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def alive(pid: int) -> bool:
    """A process with this pid exists and is not a zombie (from /proc/<pid>/stat's state field)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def namespace(name: str, labels: dict[str, str] | None = None) -> str:
    return (
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {json.dumps(labels or {})}}}\n"
    )


def echo_pod(name: str, ns: str, node: str, labels: dict[str, str] | None = None, sa: str = "default") -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {json.dumps(labels or {})}}}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  containers:
  - name: echo
    image: local
    command: [python, -m, ambientctl.apps.echo, --port, "8080"]
    ports: [{{name: http, containerPort: 8080}}]
"""


def sleeper_pod(name: str, ns: str, node: str, sa: str = "default") -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  containers: [{{name: main, image: local, command: [sleep, infinity]}}]
"""


def service(name: str, ns: str, selector: dict[str, str]) -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {json.dumps(selector)}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


def deny_policy(name: str, ns: str, selector: dict[str, str], source: dict[str, Any]) -> str:
    return f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {json.dumps(selector)}}}
  action: DENY
  rules:
  - from: [{{source: {json.dumps(source)}}}]
"""


@dataclass
class MeshCluster:
    cluster: Cluster
    mesh: Mesh
    store: SqliteStore
    state_dir: Path

    @classmethod
    def create(cls, nodes: int = 2, settings: MeshSettings | None = None) -> MeshCluster:
        """``settings``: the mesh's (e.g. ``extra_env`` with a short ``SECRET_TTL``); defaults otherwise."""
        prefix = random_prefix()
        state_dir = Path(tempfile.mkdtemp(prefix="e2e", dir="/tmp"))
        cluster = Cluster(state_dir, prefix=prefix)
        store = None
        try:
            cluster.up(ClusterSpec(nodes=nodes, prefix=prefix))
            mesh = Mesh(cluster, settings)
            mesh.start()
            store = SqliteStore(store_path(state_dir))
            return cls(cluster, mesh, store, state_dir)
        except BaseException:
            if store is not None:
                store.close()
            cluster.down()
            shutil.rmtree(state_dir, ignore_errors=True)
            raise

    def close(self) -> None:
        try:
            self.store.close()
            self.cluster.down()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- store ---------------------------------------------------------------------------------------------

    def apply(self, *docs: str) -> None:
        self.store.apply(load_documents("---\n".join(docs), "test"))

    def pod(self, name: str, ns: str) -> Any:
        return self.store.get(ResourceRef("Pod", ns, name))

    def wait_running(
        self, pods: Iterable[tuple[str, str]], timeout: float = 45.0
    ) -> dict[tuple[str, str], str]:
        """(name, ns) -> pod IP once every pod is Running."""
        wanted = list(pods)

        def running() -> dict[tuple[str, str], str] | None:
            found = {}
            for name, ns in wanted:
                p = self.pod(name, ns)
                if p is None or p.status.get("phase") != "Running":
                    return None
                found[(name, ns)] = p.status["podIP"]
            return found

        return wait_for(f"pods {wanted} running", running, timeout)

    def wait_redirection(
        self, pods: Iterable[tuple[str, str]], value: str | None, timeout: float = 30.0
    ) -> None:
        wanted = list(pods)
        wait_for(
            f"annotation {REDIRECTION}={value} on {wanted}",
            lambda: all(
                (p := self.pod(n, ns)) is not None and p.annotations.get(REDIRECTION) == value
                for n, ns in wanted
            ),
            timeout,
        )

    def set_namespace_labels(self, ns: str, add: dict[str, str], remove: Iterable[str] = ()) -> None:
        self.store.set_labels(ResourceRef("Namespace", "", ns), add, list(remove), create=True)

    def pid(self, name: str, ns: str) -> int:
        record = self.cluster.find_pod(name, ns)
        assert record is not None and record.process is not None
        return record.process.pid

    # -- traffic -------------------------------------------------------------------------------------------

    def request(
        self, pod: str, ns: str, url: str, *, count: int = 1, data: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        argv = [
            PY,
            "-m",
            "ambientctl.apps.client",
            "get",
            url,
            "--count",
            str(count),
            "--timeout",
            str(timeout),
        ]
        if data is not None:
            argv += ["--data", data]
        done = self.cluster.exec(pod, ns, argv, timeout=timeout * count + 30)
        assert done.stdout, f"client printed nothing (exit {done.returncode}): {done.stderr}"
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def hold(self, pod: str, ns: str, url: str, duration: float = 30.0) -> subprocess.Popen[str]:
        """A client in ``pod`` holding one connection open (a request every 0.1 s); read its lines."""
        argv = self.cluster.exec_argv(
            pod, ns, [PY, "-m", "ambientctl.apps.client", "hold", url, "--duration", str(duration)]
        )
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def dial(self, pod: str, ns: str, ip: str, port: int, timeout: float = 5.0) -> str:
        """Connect from ``pod``, send an HTTP request, report what came back: "answered: ..." with the
        first bytes, or how the connection ended without an answer."""
        script = f"""
import socket
try:
    s = socket.create_connection(({ip!r}, {port}), timeout={timeout})
except OSError as e:
    print("refused:", type(e).__name__); raise SystemExit
s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
try:
    data = s.recv(200)
except OSError as e:
    print("closed:", type(e).__name__); raise SystemExit
print("answered:", data[:40]) if data else print("closed: EOF")
"""
        done = self.cluster.exec(pod, ns, [PY, "-c", script], timeout=timeout + 20)
        return done.stdout.strip() or done.stderr.strip()

    def capture(
        self,
        netns: str,
        action: Callable[[], T],
        markers: Iterable[str] = (),
        iface: str = "eth0",
        between: Iterable[str] = ("10.244.0.0/16",),
    ) -> tuple[CaptureSummary, T]:
        """Run ``action`` while capturing ``iface`` in ``netns``; the summary of pod-to-pod flows."""
        with LinkCapture(netns, iface, time_limit=60) as cap:
            result = action()
        packets = cap.stop()
        return summarize(packets, markers=[m.encode() for m in markers], between=list(between)), result

    def node_netns(self, node: str) -> str:
        found = self.cluster.layout().find_node(node)
        assert found is not None
        return found.netns

    def pod_netns(self, name: str, ns: str) -> str:
        record = self.cluster.find_pod(name, ns)
        assert record is not None
        return record.netns


def ok_count(result: dict[str, Any]) -> int:
    return int(result["ok"])


def served_by(result: dict[str, Any]) -> set[str]:
    return {r["pod"] for r in result["results"] if r["ok"]}

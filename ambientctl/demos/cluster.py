"""``ambientctl demo``: the ambient mesh on a two-node local cluster, proven step by step (root).

Steps (each timed and checked; the first failure stops the run, which then cleans up and exits 1):
 1. bring up a two-node local cluster (prefix ``amdm-``, its own state directory) and the mesh on it;
 2. run a server (``ambientctl.apps.echo``) on node-2 behind the Service ``echo.demo`` and a client on
    node-1, through the store and the kubelet as ``ambientctl apply`` would;
 3. before the mesh: a request with a marker crosses the node link in plaintext (captured, seen);
 4. ``namespace enable demo``: both running pods are captured, no restart (same pids);
 5. requests across nodes by service name succeed, now through ztunnel and HBONE;
 6. a capture on node-1's link during a request with a fresh marker: only TLS to port 15008 crossed,
    and the marker is nowhere in it;
 7. a DENY AuthorizationPolicy for the client's identity: the request is refused;
 8. the policy deleted: the request is allowed again;
 9. a waypoint for the server's service account (``waypoint apply --service-account server``): istiod-lite
    makes its pod and Service, the kubelet runs it, and requests now reach the server from the waypoint;
10. an L7 policy at the waypoint allows ``GET /`` only: GET gets 200, POST gets 403 ``RBAC: access denied``;
11. the waypoint's metrics count both (``istio_requests_total`` with ``reporter="waypoint"``);
12. node-1's link still carries only TLS to port 15008, with the L7 hop in the path;
13. the waypoint removed: traffic is L4-only again (POST answered by the server);
then a summary table. The cluster is always brought down (also on failure and Ctrl-C / SIGTERM), and a
previous run's leftovers are swept first, so the demo can be re-run at will.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from ambientctl.capture import CaptureSummary, LinkCapture, summarize
from ambientctl.cluster import Cluster, ClusterError, ClusterSpec
from ambientctl.cluster.mesh import Mesh
from meshcore.store import ResourceRef, SqliteStore, load_documents, store_path

DEMO_PREFIX = "amdm-"
NAMESPACE = "demo"
SERVICE_URL = "http://echo.demo/"
DATAPLANE_MODE = "istio.io/dataplane-mode"
REDIRECTION = "ambient.istio.io/redirection"
CLIENT_PRINCIPAL = "cluster.local/ns/demo/sa/client"
WAYPOINT = "server-waypoint"
WAIT_S = 30.0
POLL_S = 0.1


class DemoFailed(Exception):
    """A step's check did not hold; the message says what was seen."""


@dataclass(frozen=True, slots=True)
class StepResult:
    name: str
    ok: bool
    detail: str
    seconds: float


def demo_state_dir() -> Path:
    """A fixed place, so a run after a crash finds (and removes) what the crashed run left."""
    return Path(tempfile.gettempdir()) / "ambient-mesh-demo"


def manifests(python: str) -> str:
    """The demo's workloads: the pods' commands run as is inside their network namespaces."""
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NAMESPACE}, labels: {{app: echo}}}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: echo
    image: local
    command: [{python}, -m, ambientctl.apps.echo, --port, "8080"]
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}, labels: {{app: client}}}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{{name: client, image: local, command: [sleep, infinity]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NAMESPACE}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


DENY_POLICY = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-client, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: ["{CLIENT_PRINCIPAL}"]}}}}]
"""


L7_POLICY = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: get-only, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: ["GET"], paths: ["/"]}}}}]
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; ``DemoFailed`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DemoFailed(f"{what}: not within {timeout:g} s")
        time.sleep(POLL_S)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cluster is brought down either way.

    Only in this process: a child forked from it (pyroute2 forks helpers to open netlink sockets in a
    namespace, and stops them with SIGTERM) must die as usual, not unwind a copy of the demo."""
    owner = os.getpid()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class LocalClusterDemo:
    """What every local-cluster demo shares: its own cluster (prefix ``prefix``, state in ``state_dir``),
    steps run in order (each timed, the first failure stops the run), a summary table, leftovers of an
    earlier run swept first and the cluster always brought down (also on failure, Ctrl-C or SIGTERM)."""

    prefix = DEMO_PREFIX

    def __init__(self, console: Console, state_dir: Path, *, python: str = sys.executable) -> None:
        self.console = console
        self.state_dir = state_dir
        self.python = python
        self.cluster = Cluster(state_dir, prefix=self.prefix)
        self.results: list[StepResult] = []

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        raise NotImplementedError

    def run(self, *, keep: bool = False) -> bool:
        with sigterm_as_interrupt():
            try:
                self._sweep()
                return self._steps()
            finally:
                if keep:
                    self.console.print(
                        f"\ncluster kept: `ambientctl --state-dir {self.state_dir} cluster status`; "
                        f"remove it with `ambientctl --state-dir {self.state_dir} cluster down`"
                    )
                else:
                    self._teardown()

    def _steps(self) -> bool:
        steps = self.steps()
        for number, (name, step) in enumerate(steps, 1):
            self.console.print(f"\n[bold cyan]{number}.[/] [bold]{name}[/]")
            started = time.monotonic()
            try:
                detail = step()
                ok = True
            except (DemoFailed, ClusterError) as e:
                detail, ok = str(e), False
            took = time.monotonic() - started
            self.results.append(StepResult(name, ok, detail, took))
            mark = "[green]ok[/]" if ok else "[red]FAILED[/]"
            self.console.print(f"   {mark} {detail}", highlight=False)
            if not ok:
                break
        self._summary()
        return all(r.ok for r in self.results) and len(self.results) == len(steps)

    def step_up(self) -> str:
        self.cluster.up(ClusterSpec(nodes=2, prefix=self.prefix))
        status = Mesh(self.cluster).start()
        timings = ", ".join(f"{name} {took:.1f}s" for name, took in status.timings)
        return f"2 nodes; istiod-lite at {status.istiod_address}; {timings}"

    def _store(self) -> SqliteStore:
        return SqliteStore(store_path(self.state_dir))

    def _deploy_waypoint(self, namespace: str, name: str, service_account: str) -> tuple[str, set[str]]:
        """Deploy a per-service-account waypoint and wait until istiod reports it Programmed; its first
        pod's name and the running pods' IPs (a Programmed waypoint without a running pod fails the step)."""
        from ambientctl.commands.waypoint import apply_waypoint, build_waypoint, is_programmed, to_resource

        with self._store() as store:
            apply_waypoint(store, to_resource(build_waypoint(name, namespace, service_account=service_account)))
            wait_for(
                f"waypoint {namespace}/{name} Programmed (its pod running, its Service with an address)",
                lambda: is_programmed(store.get(ResourceRef("Gateway", namespace, name))),
                timeout=60,
            )
            pods = [p for p in store.list("Pod", namespace)
                    if p.labels.get("gateway.networking.k8s.io/gateway-name") == name]
        ips = {p.status.get("podIP") for p in pods} - {None}
        if not ips:
            raise DemoFailed(f"waypoint {name} is Programmed but has no running pod")
        return pods[0].name, ips

    def _summary(self) -> None:
        table = Table(title="summary", title_justify="left")
        table.add_column("STEP")
        table.add_column("RESULT")
        table.add_column("TIME", justify="right")
        for r in self.results:
            table.add_row(r.name, "[green]ok[/]" if r.ok else "[red]FAILED[/]", f"{r.seconds:.1f}s")
        self.console.print()
        self.console.print(table)

    def _sweep(self) -> None:
        """Remove what an earlier run left (its recorded cluster, else anything with the demo's prefix)."""
        report = self.cluster.down()
        if report.had_state or report.netns_removed:
            self.console.print(
                f"removed a previous demo's leftovers ({len(report.netns_removed)} namespaces)"
            )
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(mode=0o700, parents=True)

    def _teardown(self) -> None:
        started = time.monotonic()
        try:
            report = self.cluster.down()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self.console.print(
            f"\ncluster removed: {len(report.netns_removed)} network namespaces, "
            f"{len(report.processes_stopped)} processes ({time.monotonic() - started:.1f}s)"
        )


class ClusterDemo(LocalClusterDemo):
    """``ambientctl demo``: the mesh, L4 and L7, step by step (see the module docstring)."""

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("cluster and mesh up", self.step_up),
            ("workloads running", self.step_workloads),
            ("plaintext before the mesh", self.step_plaintext),
            ("namespace enable demo", self.step_enable),
            ("requests across nodes", self.step_requests),
            ("node link carries only TLS", self.step_capture),
            ("DENY policy refuses", self.step_deny),
            ("policy removed: allowed", self.step_allow),
            ("waypoint for the server's account", self.step_waypoint),
            ("L7 policy: GET 200, POST 403", self.step_l7_policy),
            ("waypoint metrics count both", self.step_waypoint_metrics),
            ("with the waypoint: only TLS", self.step_capture_l7),
            ("waypoint removed: L4 only", self.step_waypoint_removed),
        ]

    # -- steps ---------------------------------------------------------------------------------------------

    def step_workloads(self) -> str:
        with self._store() as store:
            store.apply(load_documents(manifests(self.python), "demo manifests"))

            def running() -> bool:
                pods = [store.get(ResourceRef("Pod", NAMESPACE, n)) for n in ("server", "client")]
                return all(p is not None and p.status.get("phase") == "Running" for p in pods)

            wait_for("pods running", running)
            server = store.get(ResourceRef("Pod", NAMESPACE, "server"))
            client = store.get(ResourceRef("Pod", NAMESPACE, "client"))
            service = store.get(ResourceRef("Service", NAMESPACE, "echo"))
        assert server is not None and client is not None and service is not None
        self.pids = self._pids()
        return (
            f"server {server.status['podIP']} on node-2, client {client.status['podIP']} on node-1, "
            f"service echo.demo -> {service.spec.get('clusterIP')}"
        )

    def step_plaintext(self) -> str:
        marker = "plain-" + secrets.token_hex(6)
        summary, result = self._captured_request(marker)
        if not result["ok"]:
            raise DemoFailed(f"request failed: {result['results'][0]['error']}")
        if marker.encode() not in summary.markers_found:
            raise DemoFailed(
                f"expected to see {marker} in plaintext on the link; ports {summary.server_ports}"
            )
        return f"ports {list(summary.server_ports)} on the link; marker {marker} readable in the capture"

    def step_enable(self) -> str:
        started = time.monotonic()
        with self._store() as store:
            store.set_labels(
                ResourceRef("Namespace", "", NAMESPACE), {DATAPLANE_MODE: "ambient"}, [], create=True
            )

            def captured() -> bool:
                pods = [store.get(ResourceRef("Pod", NAMESPACE, n)) for n in ("server", "client")]
                return all(p is not None and p.annotations.get(REDIRECTION) == "enabled" for p in pods)

            wait_for("both pods captured (annotation ambient.istio.io/redirection=enabled)", captured)
        captured_s = time.monotonic() - started
        wait_for("first request through the mesh", lambda: self._request(timeout=3)["ok"])
        first_s = time.monotonic() - started
        if self._pids() != self.pids:
            raise DemoFailed(f"pods restarted: pids {self.pids} -> {self._pids()}")
        return (
            f"pods captured {captured_s * 1000:.0f} ms after the label, first request through the mesh "
            f"at {first_s * 1000:.0f} ms; no restart (pids {', '.join(map(str, self.pids))})"
        )

    def step_requests(self) -> str:
        result = self._request(count=5)
        if result["ok"] != 5:
            raise DemoFailed(f"{result['failed']} of 5 failed: {result['results']}")
        served = {r["pod"] for r in result["results"]}
        ms = sorted(r["ms"] for r in result["results"])
        return f"5/5 answered by {', '.join(sorted(served))} (median {ms[2]:.0f} ms, node-1 -> node-2)"

    def step_capture(self) -> str:
        marker = "secret-" + secrets.token_hex(8)
        summary, result = self._captured_request(marker)
        if not result["ok"]:
            raise DemoFailed(f"request failed: {result['results'][0]['error']}")
        if not summary.flows:
            raise DemoFailed("no pod traffic captured on node-1's link")
        if not summary.all_tls_on(15008):
            raise DemoFailed(f"non-TLS or non-15008 traffic crossed: {summary.flows}")
        if summary.markers_found:
            raise DemoFailed(f"the marker {marker} was seen in plaintext on the link")
        echoed = result["results"][0]["echo"]
        return (
            f"{summary.packets} packets, {summary.payload_bytes} payload bytes, ports {list(summary.server_ports)}, "
            f"all TLS records; marker {marker} echoed back by the server ({echoed == marker}) "
            "but absent from the wire"
        )

    def step_deny(self) -> str:
        with self._store() as store:
            store.apply(load_documents(DENY_POLICY, "deny-client"))
        started = time.monotonic()
        refused = wait_for("the request refused", lambda: _refused(self._request(timeout=3)))
        return (
            f"deny-client (principal {CLIENT_PRINCIPAL}) refused the request after "
            f"{(time.monotonic() - started) * 1000:.0f} ms: {refused}"
        )

    def step_allow(self) -> str:
        with self._store() as store:
            store.delete([ResourceRef("AuthorizationPolicy", NAMESPACE, "deny-client")])
        started = time.monotonic()
        wait_for("the request allowed again", lambda: self._request(timeout=3)["ok"])
        return f"allowed again {(time.monotonic() - started) * 1000:.0f} ms after the delete"

    def step_waypoint(self) -> str:
        started = time.monotonic()
        self.waypoint_pod, ips = self._deploy_waypoint(NAMESPACE, WAYPOINT, "server")
        programmed_s = time.monotonic() - started

        def via_waypoint() -> bool:
            result = self._request(timeout=3)
            return bool(result["ok"]) and str(result["results"][0].get("peer") or "").split(":")[0] in ips

        wait_for("requests reaching the server from the waypoint", via_waypoint, timeout=60)
        return (
            f"{NAMESPACE}/{WAYPOINT} (pod {self.waypoint_pod}, {', '.join(sorted(ips))}) programmed in "
            f"{programmed_s:.1f}s; the server now sees requests from the waypoint"
        )

    def step_l7_policy(self) -> str:
        with self._store() as store:
            store.apply(load_documents(L7_POLICY, "get-only"))
        started = time.monotonic()

        def post_denied() -> dict[str, Any] | None:
            first = self._request(data="hello", timeout=3)["results"][0]
            return first if first.get("status") == 403 else None

        denied = wait_for("POST answered 403 by the waypoint", post_denied)
        got = self._request(timeout=3)["results"][0]
        if got.get("status") != 200:
            raise DemoFailed(f"GET / should still be allowed, got {got.get('status')} {got.get('error')}")
        return (
            f"get-only applied; {(time.monotonic() - started) * 1000:.0f} ms later POST -> "
            f"{denied['status']} ({denied['error']}), GET / -> 200 from {got.get('pod')}"
        )

    def step_waypoint_metrics(self) -> str:
        script = (
            "import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:15020/metrics', timeout=5).read().decode())"
        )
        done = self.cluster.exec(self.waypoint_pod, NAMESPACE, [self.python, "-c", script], timeout=30)
        lines = [x for x in done.stdout.splitlines()
                 if x.startswith("istio_requests_total{") and 'reporter="waypoint"' in x]
        codes = {c: sum(float(x.rsplit(" ", 1)[1]) for x in lines if f'response_code="{c}"' in x)
                 for c in ("200", "403")}
        if not codes["200"] or not codes["403"]:
            raise DemoFailed(f"istio_requests_total at the waypoint lacks 200 or 403: {lines or done.stderr[-500:]}")
        return f"istio_requests_total{{reporter=\"waypoint\"}}: {codes['200']:.0f} x 200, {codes['403']:.0f} x 403"

    def step_capture_l7(self) -> str:
        marker = "l7-" + secrets.token_hex(8)
        summary, result = self._captured_request(marker, in_query=True)  # the policy allows GET / only
        first = result["results"][0]
        if not result["ok"]:
            raise DemoFailed(f"GET /?m={marker} failed: {first['error']}")
        if not summary.flows:
            raise DemoFailed("no pod traffic captured on node-1's link")
        if not summary.all_tls_on(15008):
            raise DemoFailed(f"non-TLS or non-15008 traffic crossed: {summary.flows}")
        if summary.markers_found:
            raise DemoFailed(f"the marker {marker} was seen in plaintext on the link")
        return (
            f"{summary.packets} packets, ports {list(summary.server_ports)}, all TLS records; GET /?m={marker} "
            f"answered by {first.get('pod')} through the waypoint, the marker absent from the wire"
        )

    def step_waypoint_removed(self) -> str:
        with self._store() as store:
            store.delete([ResourceRef("Gateway", NAMESPACE, WAYPOINT)])
        started = time.monotonic()
        wait_for("POST answered by the server again (no waypoint in the path)",
                 lambda: self._request(data="back", timeout=3)["results"][0].get("status") == 200, timeout=60)
        with self._store() as store:
            store.delete([ResourceRef("AuthorizationPolicy", NAMESPACE, "get-only")])
        return f"L4 only again {(time.monotonic() - started) * 1000:.0f} ms after the delete"

    # -- helpers -------------------------------------------------------------------------------------------

    def _pids(self) -> tuple[int, ...]:
        pods = {(p.spec.namespace, p.spec.name): p for p in self.cluster.pods()}
        return tuple(
            p.process.pid if (p := pods.get((NAMESPACE, n))) and p.process else 0
            for n in ("server", "client")
        )

    def _request(
        self, *, count: int = 1, data: str | None = None, timeout: float = 5.0, url: str = SERVICE_URL
    ) -> dict[str, Any]:
        argv = [self.python, "-m", "ambientctl.apps.client", "get", url, "--count", str(count)]
        argv += ["--timeout", str(timeout)]
        if data is not None:
            argv += ["--data", data]
        done = self.cluster.exec("client", NAMESPACE, argv, timeout=timeout * count + 30)
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise DemoFailed(
                f"the client printed no result (exit {done.returncode}): {done.stderr[-500:]}"
            ) from None
        return result

    def _captured_request(self, marker: str, *, in_query: bool = False) -> tuple[CaptureSummary, dict[str, Any]]:
        layout = self.cluster.layout()
        with LinkCapture(layout.nodes[0].netns, "eth0", time_limit=30) as capture:
            if in_query:
                result = self._request(url=f"{SERVICE_URL}?m={marker}")
            else:
                result = self._request(data=marker)
        # Pod-to-pod flows only (node-1's link also carries its ztunnel's xDS to istiod-lite).
        pods = [n.pod_cidr for n in layout.nodes]
        return summarize(capture.stop(), markers=[marker.encode()], between=pods), result


def _refused(result: dict[str, Any]) -> str | None:
    first = result["results"][0]
    return None if first["ok"] else (first["error"] or "refused")

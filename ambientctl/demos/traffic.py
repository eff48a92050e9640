"""``ambientctl demo traffic``: traffic management at the waypoint on a two-node local cluster (root).

Steps (each timed and checked; the first failure stops the run, which then cleans up and exits 1):
 1. bring up a two-node local cluster (prefix ``amtr-``, its own state directory) and the mesh on it;
 2. in the ambient namespace ``demo``: echo pods ``v1`` and ``v2`` (labels ``app: echo``, ``version``)
    behind the Service ``echo`` and the per-version Services ``echo-v1`` / ``echo-v2``, a pod ``flaky``
    that answers every other request 503 (``--fail-every 2``) behind ``flaky``, all of the service account
    ``server`` on node-2; a client on node-1;
 3. a waypoint for ``server`` (``waypoint apply --service-account server``), requests now through it;
 4-6. a canary HTTPRoute (parent: the Service ``echo``; backends ``echo-v1`` and ``echo-v2``) applied at
    100/0, then 90/10, then 50/50: ``REQUESTS`` requests at each weight, the counts per version printed
    and checked against the weights (a bounded tolerance, about four standard deviations);
 7. the flaky Service without a retry: about half the requests fail, counted;
 8. a VirtualService with ``retries`` for it: every request succeeds while the pod keeps failing every
    other one; the waypoint's ``waypoint_upstream_retries_total`` shows the retries it made;
then a summary table. How a step knows the waypoint applied a new version of a resource: each version
carries a rule ``GET /applied/<version>`` the waypoint answers with a redirect (nothing else answers a
redirect), so the first redirect proves that version is in force. The cluster is always brought down
(also on failure and Ctrl-C / SIGTERM, unless ``--keep``), and a previous run's leftovers are swept first.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ambientctl.demos.cluster import DemoFailed, LocalClusterDemo, wait_for
from meshcore.store import ResourceRef, load_documents

DEMO_PREFIX = "amtr-"
NAMESPACE = "demo"
WAYPOINT = "server-waypoint"
REQUESTS = 100
FLAKY_REQUESTS = 20
PODS = ("v1", "v2", "flaky", "client")


def traffic_demo_state_dir() -> Path:
    """A fixed place, so a run after a crash finds (and removes) what the crashed run left."""
    return Path(tempfile.gettempdir()) / "ambient-mesh-demo-traffic"


def manifests(python: str) -> str:
    def server(name: str, labels: str, *flags: str) -> str:
        args = "".join(f', "{f}"' for f in flags)
        return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {labels}}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: echo
    image: local
    command: [{python}, -m, ambientctl.apps.echo, --port, "8080"{args}]
    ports: [{{name: http, containerPort: 8080}}]
"""

    def svc(name: str, selector: str) -> str:
        return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  selector: {selector}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""

    return "---\n".join([
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}, labels: {{istio.io/dataplane-mode: ambient}}}}\n",
        server("v1", "{app: echo, version: v1}"),
        server("v2", "{app: echo, version: v2}"),
        server("flaky", "{app: flaky}", "--fail-every", "2"),
        f"""apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}, labels: {{app: client}}}}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{{name: client, image: local, command: [sleep, infinity]}}]
""",
        svc("echo", "{app: echo}"),
        svc("echo-v1", "{app: echo, version: v1}"),
        svc("echo-v2", "{app: echo, version: v2}"),
        svc("flaky", "{app: flaky}"),
    ])


def canary_route(v1: int, v2: int) -> str:
    """The canary HTTPRoute at weights v1/v2, with its version's ``/applied/...`` marker rule."""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-canary, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: Exact, value: /applied/canary-{v1}-{v2}}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /}}}}}}]
  - backendRefs:
    - {{name: echo-v1, port: 80, weight: {v1}}}
    - {{name: echo-v2, port: 80, weight: {v2}}}
"""


RETRY_VS = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky-retry, namespace: {NAMESPACE}}}
spec:
  hosts: [flaky.{NAMESPACE}.svc.cluster.local]
  http:
  - match: [{{uri: {{exact: /applied/flaky-retry}}}}]
    redirect: {{uri: /}}
  - route: [{{destination: {{host: flaky.{NAMESPACE}.svc.cluster.local}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
"""


def split_bounds(n: int, share: float) -> tuple[int, int]:
    """The counts a ``share`` of ``n`` requests may land on: about four standard deviations either side
    (exact at 0% and 100%)."""
    mean = n * share
    spread = 4 * (n * share * (1 - share)) ** 0.5
    return max(0, int(mean - spread)), min(n, int(mean + spread + 0.999))


class TrafficDemo(LocalClusterDemo):
    """``ambientctl demo traffic`` (see the module docstring)."""

    prefix = DEMO_PREFIX

    def __init__(self, console: Console, state_dir: Path, *, python: str = sys.executable) -> None:
        super().__init__(console, state_dir, python=python)
        self.numbers: list[tuple[str, str, str]] = []  # (what, configuration, outcome) for the last table
        self.waypoint_pod = ""

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("cluster and mesh up", self.step_up),
            ("workloads running", self.step_workloads),
            ("waypoint for the server's account", self.step_waypoint),
            ("canary 100/0", lambda: self.step_canary(100, 0)),
            ("canary 90/10", lambda: self.step_canary(90, 10)),
            ("canary 50/50", lambda: self.step_canary(50, 50)),
            ("flaky pod, no retry: errors", self.step_no_retry),
            ("retry absorbs the failures", self.step_retry),
        ]

    # -- steps ---------------------------------------------------------------------------------------------

    def step_workloads(self) -> str:
        with self._store() as store:
            store.apply(load_documents(manifests(self.python), "traffic demo manifests"))

            def ready() -> bool:
                pods = [store.get(ResourceRef("Pod", NAMESPACE, n)) for n in PODS]
                return all(p is not None and p.status.get("phase") == "Running"
                           and p.annotations.get("ambient.istio.io/redirection") == "enabled" for p in pods)

            wait_for("pods running and captured by the mesh", ready, timeout=60)
        wait_for("first request through the mesh", lambda: self._request("http://echo.demo/", timeout=3)[0]["ok"])
        return ("v1, v2 (echo), flaky (fails every other request) on node-2, account server; client on node-1; "
                "namespace demo in ambient mode")

    def step_waypoint(self) -> str:
        started = time.monotonic()
        self.waypoint_pod, ips = self._deploy_waypoint(NAMESPACE, WAYPOINT, "server")

        def via_waypoint() -> bool:
            first = self._request("http://echo.demo/", timeout=3)[0]
            return bool(first["ok"]) and str(first.get("peer") or "").split(":")[0] in ips

        wait_for("requests reaching the servers from the waypoint", via_waypoint, timeout=60)
        return f"{NAMESPACE}/{WAYPOINT} ({', '.join(sorted(ips))}) in {time.monotonic() - started:.1f}s"

    def step_canary(self, v1: int, v2: int) -> str:
        started = time.monotonic()
        self._apply(canary_route(v1, v2), "echo-canary")
        self._wait_applied("echo", f"canary-{v1}-{v2}")
        applied_ms = (time.monotonic() - started) * 1000
        results = self._request("http://echo.demo/", count=REQUESTS)
        served = Counter(r["pod"] for r in results if r["ok"])
        failed = REQUESTS - sum(served.values())
        if failed:
            raise DemoFailed(f"{failed} of {REQUESTS} requests failed: {_errors(results)}")
        low, high = split_bounds(REQUESTS, v2 / (v1 + v2))
        self.numbers.append((f"canary {v1}/{v2}", "HTTPRoute weights", f"v1 {served['v1']}, v2 {served['v2']}"))
        if not low <= served["v2"] <= high:
            raise DemoFailed(f"v2 got {served['v2']} of {REQUESTS}, expected {low}-{high} for {v1}/{v2}")
        return (f"HTTPRoute echo-canary at {v1}/{v2} in force {applied_ms:.0f} ms after apply; "
                f"{REQUESTS} requests: v1 {served['v1']}, v2 {served['v2']} (v2 within {low}-{high})")

    def step_no_retry(self) -> str:
        results = self._request("http://flaky.demo/", count=FLAKY_REQUESTS)
        errors = sum(1 for r in results if not r["ok"])
        low, high = split_bounds(FLAKY_REQUESTS, 0.5)
        self.numbers.append(("flaky pod", "no retry", f"{errors} of {FLAKY_REQUESTS} failed"))
        if not low <= errors <= high:
            raise DemoFailed(f"{errors} of {FLAKY_REQUESTS} failed; the flaky pod should fail about half")
        self.errors_without_retry = errors
        return f"{FLAKY_REQUESTS} requests to flaky.demo: {errors} failed ({_errors(results)})"

    def step_retry(self) -> str:
        retries_before = self._waypoint_retries()
        self._apply(RETRY_VS, "flaky-retry")
        self._wait_applied("flaky", "flaky-retry")
        results = self._request("http://flaky.demo/", count=FLAKY_REQUESTS)
        errors = sum(1 for r in results if not r["ok"])
        self.numbers.append(("flaky pod", "retries: 3 on 5xx", f"{errors} of {FLAKY_REQUESTS} failed"))
        if errors:
            raise DemoFailed(f"{errors} of {FLAKY_REQUESTS} still failed with the retry: {_errors(results)}")
        counts = [int(r["count"]) for r in results]
        pod_failures = (counts[-1] - counts[0] + 1) - FLAKY_REQUESTS  # what the pod got, less what it served
        retries = self._waypoint_retries() - retries_before
        if pod_failures < 1 or retries < pod_failures:
            raise DemoFailed(f"the pod failed {pod_failures} times, the waypoint retried {retries}")
        return (f"VirtualService flaky-retry (attempts 3, retryOn 5xx): errors {self.errors_without_retry} "
                f"-> 0 of {FLAKY_REQUESTS}; the pod still failed {pod_failures} times, the waypoint retried "
                f"{retries:.0f} (waypoint_upstream_retries_total)")

    # -- helpers -------------------------------------------------------------------------------------------

    def _apply(self, yaml: str, what: str) -> None:
        with self._store() as store:
            store.apply(load_documents(yaml, what))

    def _wait_applied(self, host: str, version: str) -> None:
        wait_for(f"{version} in force at the waypoint (GET /applied/{version} redirected)",
                 lambda: self._request(f"http://{host}.{NAMESPACE}/applied/{version}", timeout=3)[0]["status"]
                 in (301, 302), timeout=45)

    def _request(self, url: str, *, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        argv = [self.python, "-m", "ambientctl.apps.client", "get", url, "--count", str(count),
                "--timeout", str(timeout)]
        done = self.cluster.exec("client", NAMESPACE, argv, timeout=timeout * count + 30)
        try:
            results: list[dict[str, Any]] = json.loads(done.stdout)["results"]
        except (ValueError, KeyError, TypeError):
            raise DemoFailed(
                f"the client printed no result (exit {done.returncode}): {done.stderr[-500:]}"
            ) from None
        return results

    def _waypoint_retries(self) -> float:
        script = (
            "import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:15020/metrics', timeout=5).read().decode())"
        )
        done = self.cluster.exec(self.waypoint_pod, NAMESPACE, [self.python, "-c", script], timeout=30)
        lines = [x for x in done.stdout.splitlines() if x.startswith("waypoint_upstream_retries_total")]
        if not lines:
            raise DemoFailed(f"no waypoint_upstream_retries_total in the waypoint's metrics: {done.stderr[-300:]}")
        return sum(float(x.rsplit(" ", 1)[1]) for x in lines)

    def _summary(self) -> None:
        super()._summary()
        if self.numbers:
            numbers = Table(title=f"traffic ({REQUESTS} requests per canary step, {FLAKY_REQUESTS} to flaky)",
                            title_justify="left")
            for column in ("WHAT", "CONFIGURATION", "OUTCOME"):
                numbers.add_column(column)
            for row in self.numbers:
                numbers.add_row(*row)
            self.console.print(numbers)



def _errors(results: list[dict[str, Any]]) -> str:
    seen = Counter(str(r["status"] or r["error"]) for r in results if not r["ok"])
    return ", ".join(f"{n} x {what}" for what, n in seen.most_common()) or "none"

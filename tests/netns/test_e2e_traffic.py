"""Traffic management on the local cluster, end to end (root): the resources a user writes, compiled by
istiod-lite, pushed to a per-service-account waypoint made by ``ambientctl waypoint apply``, carried out
on requests from a client pod on the other node to echo pods (``ambientctl.apps.echo``, some told to fail).

Proves, each with its config applied and removed again: a 90/10 canary split (HTTPRoute with a Service
parent and two per-version backends, and VirtualService + DestinationRule subsets by ``version``) lands
within a bounded tolerance; a VirtualService retry hides a pod that fails every other request; an
injected 503 for 50% of requests lands within tolerance; a mirror pod receives one copy of every request (host suffixed ``-shadow``);
a DestinationRule's outlier detection ejects a failing pod and traffic keeps succeeding.

How a test knows its config reached the waypoint (no sleeps): every resource carries one extra rule,
``GET /applied-<name>`` answered by the waypoint with a redirect. Nothing else answers a redirect (the echo
pods answer 200 to any path), so the first redirect proves the waypoint holds that resource, and a 200
after the delete proves it is gone. Tolerances are about four standard deviations of the binomial count
(the waypoint's random source is not seeded on the cluster).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ambientctl.cluster.testing import (
    AMBIENT,
    MeshCluster,
    namespace,
    service,
    sleeper_pod,
    wait_for,
)
from meshcore.store import ResourceRef

pytestmark = pytest.mark.timeout(240)

NS = "shop"
SERVERS = ["v1", "v2", "flaky", "mirror", "pool-good", "pool-bad"]
PODS = [(p, NS) for p in [*SERVERS, "client"]]


def server_pod(name: str, labels: dict[str, str], *flags: str) -> str:
    """An echo pod of the ``server`` service account on node-2 (so behind its waypoint)."""
    args = "".join(f', "{f}"' for f in flags)
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {json.dumps(labels)}}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: echo
    image: local
    command: [python, -m, ambientctl.apps.echo, --port, "8080"{args}]
    ports: [{{name: http, containerPort: 8080}}]
"""


@pytest.fixture(scope="module")
def mc() -> Iterator[MeshCluster]:
    cluster = MeshCluster.create()
    try:
        cluster.apply(
            namespace(NS, AMBIENT),
            server_pod("v1", {"app": "echo", "version": "v1"}),
            server_pod("v2", {"app": "echo", "version": "v2"}),
            server_pod("flaky", {"app": "flaky"}, "--fail-every", "2"),
            server_pod("mirror", {"app": "mirror"}),
            server_pod("pool-good", {"app": "pool"}),
            server_pod("pool-bad", {"app": "pool"}, "--fail-every", "1"),
            sleeper_pod("client", NS, "node-1", sa="client"),
            service("echo", NS, {"app": "echo"}),
            service("echo-v1", NS, {"app": "echo", "version": "v1"}),
            service("echo-v2", NS, {"app": "echo", "version": "v2"}),
            service("flaky", NS, {"app": "flaky"}),
            service("echo-mirror", NS, {"app": "mirror"}),
            service("pool", NS, {"app": "pool"}),
        )
        cluster.wait_running(PODS)
        cluster.wait_redirection(PODS, "enabled")
        done = subprocess.run(
            [sys.executable, "-m", "ambientctl", "--state-dir", str(cluster.state_dir),
             "waypoint", "apply", "-n", NS, "--service-account", "server", "--wait"],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        ips = waypoint_ips(cluster)
        assert ips
        wait_for("requests reaching the servers from the waypoint",
                 lambda: peer_ip(get(cluster, "http://echo.shop/", timeout=3)[0]) in ips, timeout=60)
        yield cluster
    finally:
        cluster.close()


def waypoint_ips(mc: MeshCluster) -> set[str]:
    pods = [p for p in mc.store.list("Pod", NS) if p.labels.get("gateway.networking.k8s.io/gateway-name")]
    return {str(p.status["podIP"]) for p in pods if p.status.get("podIP")}


def peer_ip(result: dict[str, Any]) -> str:
    return str(result.get("peer") or "").split(":")[0]


def get(mc: MeshCluster, url: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = mc.request("client", NS, url, count=count, timeout=timeout)["results"]
    return results


def probe_status(mc: MeshCluster, host: str, name: str) -> int | None:
    status: int | None = get(mc, f"http://{host}.{NS}/applied-{name}", timeout=3)[0]["status"]
    return status


def probe_http_route(name: str) -> str:
    """An HTTPRoute rule answering ``/applied-<name>`` with a redirect from the waypoint."""
    return f"""
  - matches: [{{path: {{type: Exact, value: /applied-{name}}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /}},
                statusCode: 302}}}}]"""


def probe_vs_rule(name: str) -> str:
    """A VirtualService rule answering ``/applied-<name>`` with a redirect from the waypoint."""
    return f"""
  - match: [{{uri: {{exact: /applied-{name}}}}}]
    redirect: {{uri: /}}"""


@contextmanager
def applied(mc: MeshCluster, host: str, name: str, *docs: tuple[str, str]) -> Iterator[None]:
    """Apply ``docs`` ((kind, yaml) pairs, one carrying the probe rule ``name``), wait until the waypoint
    answers the probe; delete them afterwards (even on failure) and wait until the probe is gone."""
    refs = [ResourceRef(kind, NS, yaml_name(doc)) for kind, doc in docs]
    try:
        mc.apply(*(doc for _, doc in docs))
        wait_for(f"{name} at the waypoint (GET /applied-{name} redirected)",
                 lambda: probe_status(mc, host, name) in (301, 302), timeout=45)
        yield
    finally:
        mc.store.delete(refs)
    wait_for(f"{name} removed from the waypoint (GET /applied-{name} answered 200)",
             lambda: probe_status(mc, host, name) == 200, timeout=45)


def yaml_name(doc: str) -> str:
    return doc.split("metadata: {name: ", 1)[1].split(",", 1)[0]


def statuses(results: list[dict[str, Any]]) -> Counter[int | None]:
    return Counter(r["status"] for r in results)


# -- resources ------------------------------------------------------------------------------------------

CANARY_ROUTE = f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: canary-route, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:{probe_http_route("canary-route")}
  - backendRefs:
    - {{name: echo-v1, port: 80, weight: 90}}
    - {{name: echo-v2, port: 80, weight: 10}}
"""

SUBSETS = f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo-versions, namespace: {NS}}}
spec:
  host: echo.{NS}.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""

CANARY_VS = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: canary-vs, namespace: {NS}}}
spec:
  hosts: [echo.{NS}.svc.cluster.local]
  http:{probe_vs_rule("canary-vs")}
  - route:
    - {{destination: {{host: echo.{NS}.svc.cluster.local, subset: v1}}, weight: 90}}
    - {{destination: {{host: echo.{NS}.svc.cluster.local, subset: v2}}, weight: 10}}
"""

RETRY_VS = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky-retry, namespace: {NS}}}
spec:
  hosts: [flaky.{NS}.svc.cluster.local]
  http:{probe_vs_rule("flaky-retry")}
  - route: [{{destination: {{host: flaky.{NS}.svc.cluster.local}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
"""

FAULT_VS = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo-fault, namespace: {NS}}}
spec:
  hosts: [echo.{NS}.svc.cluster.local]
  http:{probe_vs_rule("echo-fault")}
  - route: [{{destination: {{host: echo.{NS}.svc.cluster.local}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
"""

MIRROR_VS = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo-mirror, namespace: {NS}}}
spec:
  hosts: [echo.{NS}.svc.cluster.local]
  http:{probe_vs_rule("echo-mirror")}
  - route: [{{destination: {{host: echo.{NS}.svc.cluster.local}}}}]
    mirror: {{host: echo-mirror.{NS}.svc.cluster.local}}
    mirrorPercentage: {{value: 100}}
"""

OUTLIER_DR = f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pool-outliers, namespace: {NS}}}
spec:
  host: pool.{NS}.svc.cluster.local
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 50}}
"""

POOL_VS = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pool-route, namespace: {NS}}}
spec:
  hosts: [pool.{NS}.svc.cluster.local]
  http:{probe_vs_rule("pool-route")}
  - route: [{{destination: {{host: pool.{NS}.svc.cluster.local}}}}]
"""


# -- tests ----------------------------------------------------------------------------------------------

N_SPLIT = 200  # 10% of 200: 20 expected, sd 4.2; 4 sd either side


@pytest.mark.parametrize(
    "docs",
    [
        pytest.param((("HTTPRoute", CANARY_ROUTE),), id="an HTTPRoute with two per-version backends splits 90/10"),
        pytest.param((("DestinationRule", SUBSETS), ("VirtualService", CANARY_VS)),
                     id="a VirtualService over DestinationRule subsets splits 90/10"),
    ],
)
def test_a_canary_split_lands_within_tolerance(mc: MeshCluster, docs: tuple[tuple[str, str], ...]) -> None:
    name = yaml_name(docs[-1][1])
    with applied(mc, "echo", name, *docs):
        results = get(mc, "http://echo.shop/", count=N_SPLIT)
    served = Counter(r["pod"] for r in results if r["ok"])
    assert sum(served.values()) == N_SPLIT, statuses(results)
    assert 3 <= served["v2"] <= 37, served
    assert served["v1"] == N_SPLIT - served["v2"], served


def test_a_retry_hides_a_pod_that_fails_every_other_request(mc: MeshCluster) -> None:
    before = get(mc, "http://flaky.shop/", count=10)
    assert statuses(before) == {200: 5, 503: 5}, statuses(before)  # no retry: every other request fails
    with applied(mc, "flaky", "flaky-retry", ("VirtualService", RETRY_VS)):
        results = get(mc, "http://flaky.shop/", count=30)
    assert statuses(results) == {200: 30}, statuses(results)
    counts = [r["count"] for r in results]
    assert counts[-1] - counts[0] > 30, counts  # the pod kept failing: the retries absorbed its failures


N_FAULT = 200  # 50% of 200: 100 expected, sd 7.1; 4 sd either side


def test_an_injected_503_for_half_the_requests_lands_within_tolerance(mc: MeshCluster) -> None:
    with applied(mc, "echo", "echo-fault", ("VirtualService", FAULT_VS)):
        results = get(mc, "http://echo.shop/", count=N_FAULT)
    seen = statuses(results)
    assert set(seen) == {200, 503}, seen
    assert 72 <= seen[503] <= 128, seen
    aborted = [r for r in results if r["status"] == 503]
    assert all(r["pod"] is None for r in aborted), aborted[:3]  # answered by the waypoint, not a pod


def test_a_mirror_pod_receives_a_copy_of_every_request(mc: MeshCluster) -> None:
    def shadow_copies() -> int:  # the mirror pod's count of requests sent to the host "echo.shop-shadow"
        return int(get(mc, "http://echo-mirror.shop/")[0]["hosts"].get("echo.shop-shadow", 0))

    start = shadow_copies()
    with applied(mc, "echo", "echo-mirror", ("VirtualService", MIRROR_VS)):
        results = get(mc, "http://echo.shop/", count=20)
        assert statuses(results) == {200: 20}
        assert {r["pod"] for r in results} <= {"v1", "v2"}  # answered by the primary, never the mirror
        wait_for("20 copies at the mirror", lambda: shadow_copies() - start >= 20, timeout=20)
    assert shadow_copies() - start == 20  # one copy per request; the probes (redirected) are not copied


def test_a_failing_pod_is_ejected_and_traffic_keeps_succeeding(mc: MeshCluster) -> None:
    before = get(mc, "http://pool.shop/", count=10)
    assert 0 < statuses(before)[503] < 10, statuses(before)  # pool-bad fails its share, pool-good answers
    with applied(mc, "pool", "pool-route", ("DestinationRule", OUTLIER_DR), ("VirtualService", POOL_VS)):
        results = get(mc, "http://pool.shop/", count=30)
    failed = [r for r in results if not r["ok"]]
    assert len(failed) <= 1 and all(r["pod"] == "pool-bad" for r in failed), failed  # one 5xx ejects it
    assert {r["pod"] for r in results[2:]} == {"pool-good"}
    assert all(r["ok"] for r in results[2:]), statuses(results)

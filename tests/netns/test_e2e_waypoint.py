"""A waypoint on the local cluster, driven as a user would: ``ambientctl waypoint apply --service-account``,
an AuthorizationPolicy with ``targetRefs``, requests from a client pod on the other node.

Proves: the waypoint is made and programmed from one command (its pod Ready through its readinessProbe on
15021 ``/healthz/ready``, controlled by its Deployment); requests then reach both servers from the
waypoint (balanced per request); GET / is allowed and POST denied with 403 ``RBAC: access denied`` by the
L7 policy; the node link carries only TLS to 15008 with the waypoint in the path; deleting the waypoint
returns the service to L4-only (POST answered by the server, its pod and Service removed).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ambientctl.cluster.testing import (
    AMBIENT,
    MeshCluster,
    echo_pod,
    namespace,
    ok_count,
    served_by,
    service,
    sleeper_pod,
    wait_for,
)
from meshcore.store import ResourceRef

pytestmark = pytest.mark.timeout(180)

PODS = [("server-1", "shop"), ("server-2", "shop"), ("client", "shop")]
URL = "http://echo.shop/"
GET_ONLY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: ALLOW
  rules:
  - to: [{operation: {methods: ["GET"], paths: ["/"]}}]
"""


@pytest.fixture(scope="module")
def mc() -> Iterator[MeshCluster]:
    cluster = MeshCluster.create()
    try:
        cluster.apply(
            namespace("shop", AMBIENT),
            echo_pod("server-1", "shop", "node-2", {"app": "echo"}, sa="server"),
            echo_pod("server-2", "shop", "node-2", {"app": "echo"}, sa="server"),
            sleeper_pod("client", "shop", "node-1", sa="client"),
            service("echo", "shop", {"app": "echo"}),
        )
        cluster.wait_running(PODS)
        cluster.wait_redirection(PODS, "enabled")
        yield cluster
    finally:
        cluster.close()


def ambientctl(mc: MeshCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ambientctl", "--state-dir", str(mc.state_dir), *args],
        capture_output=True, text=True, timeout=120,
    )


def waypoint_ips(mc: MeshCluster) -> set[str]:
    pods = [p for p in mc.store.list("Pod", "shop") if p.labels.get("gateway.networking.k8s.io/gateway-name")]
    return {str(p.status["podIP"]) for p in pods if p.status.get("podIP")}


def status_of(result: dict) -> int | None:
    return result["results"][0].get("status")


def test_a_per_service_account_waypoint_enforces_l7_policy_and_leaves_cleanly(mc: MeshCluster) -> None:
    # L4 only: POST is fine (the first request may race the pods' certificates: wait for it with a deadline).
    wait_for("the first request through the mesh",
             lambda: ok_count(mc.request("client", "shop", URL, data="before", timeout=3)) == 1)

    done = ambientctl(mc, "waypoint", "apply", "-n", "shop", "--service-account", "server", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✅ waypoint shop/server-waypoint applied" in done.stdout
    assert "is ready!" in done.stdout
    listed = ambientctl(mc, "waypoint", "list", "-n", "shop")
    assert "server-waypoint" in listed.stdout and "True" in listed.stdout, listed.stdout

    ips = waypoint_ips(mc)
    assert ips
    # Ready only through the kubelet's readinessProbe on Istio's 15021 /healthz/ready; run by its Deployment.
    (pod,) = [p for p in mc.store.list("Pod", "shop") if p.labels.get("gateway.networking.k8s.io/gateway-name")]
    (container,) = pod.spec["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}
    assert [c.get("ready") for c in pod.status["containerStatuses"]] == [True]
    assert pod.controller is not None and (pod.controller.kind, pod.controller.name) == (
        "Deployment", "server-waypoint")
    wait_for("requests arriving from the waypoint",
             lambda: str(mc.request("client", "shop", URL)["results"][0].get("peer") or "").split(":")[0] in ips)
    spread = mc.request("client", "shop", URL, count=20)
    assert ok_count(spread) == 20 and served_by(spread) == {"server-1", "server-2"}

    mc.apply(GET_ONLY)
    try:
        wait_for("POST denied at the waypoint", lambda: status_of(mc.request("client", "shop", URL, data="x")) == 403)
        assert status_of(mc.request("client", "shop", URL)) == 200
        secret = "wp-" + secrets.token_hex(8)
        summary, result = mc.capture(
            mc.node_netns("node-1"), lambda: mc.request("client", "shop", f"{URL}?m={secret}"), [secret]
        )
        assert ok_count(result) == 1
        assert summary.all_tls_on(15008), summary.flows
        assert summary.markers_found == ()
    finally:
        mc.store.delete([ResourceRef("AuthorizationPolicy", "shop", "get-only")])

    mc.apply(GET_ONLY)
    done = ambientctl(mc, "waypoint", "delete", "-n", "shop", "server-waypoint")
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        wait_for("POST answered by the server again (L4 only)",
                 lambda: status_of(mc.request("client", "shop", URL, data="y", timeout=3)) == 200, timeout=60)
        wait_for("the waypoint's pod removed", lambda: not waypoint_ips(mc), timeout=60)
        assert mc.store.get(ResourceRef("Service", "shop", "server-waypoint")) is None
    finally:
        mc.store.delete([ResourceRef("AuthorizationPolicy", "shop", "get-only")])

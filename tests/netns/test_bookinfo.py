"""Istio's Bookinfo shape, applied unchanged with ``ambientctl apply -f bookinfo.yaml`` to a local
cluster with the mesh: Services details/ratings/reviews/productpage, ServiceAccounts bookinfo-*,
Deployments of the upstream images (reviews in v1, v2 and v3) in a namespace enrolled in ambient. Every pod
runs (the image stand-in) behind its Service; a request from productpage to ``reviews:9080`` goes through
the mesh (the destination ztunnel counts it as mutual TLS from productpage's identity) and is answered by
a v1, v2 or v3 reviews pod, and all three versions answer in turn. Then ``cluster down`` and ``get pods``
shows no pod running and no pod IP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ambientctl.cluster.mesh import ZTUNNEL_STATS_PORT
from ambientctl.cluster.testing import AMBIENT, MeshCluster, run_ambientctl, wait_for

pytestmark = pytest.mark.timeout(120)

NS = "default"  # as Istio's getting-started: ``kubectl label namespace default istio.io/dataplane-mode=ambient``
SERVICES = ("details", "ratings", "reviews", "productpage")
DEPLOYMENTS = ("details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3", "productpage-v1")

# As in Istio's samples/bookinfo/platform/kube/bookinfo.yaml (no namespace: the default one).
BOOKINFO = "\n---\n".join(
    [
        *(
            f"""apiVersion: v1
kind: Service
metadata:
  name: {app}
  labels:
    app: {app}
    service: {app}
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: {app}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: bookinfo-{app}
  labels:
    account: {app}"""
            for app in SERVICES
        ),
        *(
            f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}-{version}
  labels:
    app: {app}
    version: {version}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {app}
      version: {version}
  template:
    metadata:
      labels:
        app: {app}
        version: {version}
    spec:
      serviceAccountName: bookinfo-{app}
      containers:
      - name: {app}
        image: docker.io/istio/examples-bookinfo-{app}-{version}:1.20.2
        imagePullPolicy: IfNotPresent
        ports:
        - containerPort: 9080"""
            for app, _, version in (d.rpartition("-") for d in DEPLOYMENTS)
        ),
    ]
)

# Answers one GET with the stand-in's JSON body (the shipped client keeps only some of its fields).
FETCH = """
import json, sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()); break
    except OSError as e:
        if time.monotonic() > deadline:
            print(json.dumps({"error": str(e)})); break
        time.sleep(0.2)
"""


def ctl(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_ambientctl(state_dir, *args, check=False, timeout=60)


def bookinfo_pods(mc: MeshCluster) -> list[Any]:
    return [p for p in mc.store.list("Pod", NS)]


def fetch(mc: MeshCluster, pod: str, url: str, wait: float = 20.0) -> dict[str, Any]:
    done = mc.cluster.exec(pod, NS, [sys.executable, "-c", FETCH, url, str(wait)], timeout=wait + 20)
    answer: dict[str, Any] = json.loads(done.stdout or "{}")
    return answer


def mtls_connections(mc: MeshCluster, destination_workload: str) -> int:
    """Connections the destination side of the mesh counted as mutual TLS into ``destination_workload``
    from productpage's identity (summed over the nodes' ztunnels)."""
    total = 0
    for node in ("node-1", "node-2"):
        status, body = mc.mesh.ztunnel_get(node, "/metrics", port=ZTUNNEL_STATS_PORT)
        assert status == 200, body[:200]
        for line in body.splitlines():
            if (
                line.startswith("istio_tcp_connections_opened_total{")
                and 'reporter="destination"' in line
                and 'connection_security_policy="mutual_tls"' in line
                and f'destination_workload="{destination_workload}"' in line
                and f'source_principal="spiffe://cluster.local/ns/{NS}/sa/bookinfo-productpage"' in line
            ):
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_bookinfo_applied_unchanged_serves_every_reviews_version_through_the_mesh_then_cluster_down_stops_all(
    mc: MeshCluster, tmp_path: Path
) -> None:
    mc.set_namespace_labels(NS, AMBIENT)
    manifest = tmp_path / "bookinfo.yaml"
    manifest.write_text(BOOKINFO)
    applied = ctl(mc.state_dir, "apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stdout + applied.stderr

    def all_running() -> dict[str, Any] | None:
        pods = {p.labels.get("app", "") + "-" + p.labels.get("version", ""): p for p in bookinfo_pods(mc)}
        ready = all(
            {"type": "Ready", "status": "True"} in (p.status.get("conditions") or [])
            and p.status.get("phase") == "Running"
            for p in pods.values()
        )
        return pods if sorted(pods) == sorted(DEPLOYMENTS) and ready else None

    pods = wait_for("every Bookinfo pod Running and Ready", all_running, timeout=60)
    # Every pod is captured by the mesh and behind its Service.
    mc.wait_redirection([(p.name, NS) for p in pods.values()], "enabled")
    behind = {
        app: {p.status["podIP"] for d, p in pods.items() if d.startswith(app + "-")} for app in SERVICES
    }

    def endpoints() -> dict[str, set[str]]:
        return {s.name: set(s.endpoints) for s in mc.cluster.services() if s.namespace == NS}

    # Endpoints follow readiness (the kubelet's next pass after the Ready status).
    wait_for(f"every Service's endpoints {behind}", lambda: endpoints() == behind, timeout=15)

    productpage = pods["productpage-v1"].name
    reviewers = {p.name: d.rpartition("-")[2] for d, p in pods.items() if d.startswith("reviews-")}
    seen: dict[str, str] = {}

    def every_version_answered() -> bool:
        answer = fetch(mc, productpage, "http://reviews:9080/reviews/0")
        assert "error" not in answer, answer
        assert answer["pod"] in reviewers and answer["version"] == reviewers[answer["pod"]], answer
        assert (answer["namespace"], answer["serviceAccount"]) == (NS, "bookinfo-reviews"), answer
        seen[answer["pod"]] = answer["version"]
        return len(seen) == 3

    wait_for("a reviews pod of each version answering productpage", every_version_answered, timeout=30)
    assert sorted(seen.values()) == ["v1", "v2", "v3"]
    for pod, version in seen.items():
        assert mtls_connections(mc, f"reviews-{version}") >= 1, f"no mTLS connection into {pod} counted"

    down = ctl(mc.state_dir, "cluster", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    listed = ctl(mc.state_dir, "get", "pods", "-n", NS, "-o", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    items = json.loads(listed.stdout)
    items = items.get("items", items) if isinstance(items, dict) else items
    assert len(items) == len(DEPLOYMENTS)
    for item in items:
        status = item.get("status") or {}
        assert status.get("phase") != "Running" and not status.get("podIP"), item

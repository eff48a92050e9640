"""The operator's flow through the real CLI: ``cluster up`` (with the mesh), ``apply -f`` a Pod with a command
(it starts live), ``cluster exec``, ``cluster capture``, ``delete`` (it stops live), ``cluster logs``,
stopping the mesh alone, then ``cluster down`` leaves no network namespace, link, /etc/netns entry, file
or process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ambientctl.cluster import Cluster
from ambientctl.cluster.mesh import Mesh
from ambientctl.cluster.testing import alive, random_prefix, wait_for
from ambientctl.cluster.testing import run_ambientctl as ctl
from meshcore.store import ResourceRef, SqliteStore, store_path

pytestmark = pytest.mark.timeout(120)

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: web
    image: local
    command: [python, -m, ambientctl.apps.echo]
    args: [--port, "8080"]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: shopper, namespace: shop}
spec:
  containers: [{name: main, image: local, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"""


def leftovers(prefix: str) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found = [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(prefix)]
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if f": {prefix}" in line]
    etc = Path("/etc/netns")
    found += (
        [f"/etc/netns/{p.name}" for p in etc.iterdir() if p.name.startswith(prefix)] if etc.is_dir() else []
    )
    return found


def test_an_operator_runs_pods_from_manifests_live_and_down_leaves_nothing(state_dir: Path) -> None:
    prefix = random_prefix()
    spec = state_dir / "cluster.yaml"
    spec.write_text(f"nodes: 2\nprefix: {prefix}\n")
    pids: list[int] = []
    try:
        up = ctl(state_dir, "cluster", "up", "-f", str(spec)).stdout
        assert "cluster up: 2 node(s)" in up and "mesh up: istiod-lite at 172.30.0.254:15012" in up
        assert "(unchanged)" in ctl(state_dir, "cluster", "up").stdout

        manifest = state_dir / "shop.yaml"
        manifest.write_text(MANIFEST)
        assert "pod/web created" in ctl(state_dir, "apply", "-f", str(manifest)).stdout
        with SqliteStore(store_path(state_dir)) as store:

            def running(name: str) -> bool:
                pod = store.get(ResourceRef("Pod", "shop", name))
                return pod is not None and pod.status.get("phase") == "Running"

            wait_for("web and shopper running", lambda: running("web") and running("shopper"), 45)
            wait_for(
                "both captured",
                lambda: all(
                    (p := store.get(ResourceRef("Pod", "shop", n))) is not None
                    and p.annotations.get("ambient.istio.io/redirection") == "enabled"
                    for n in ("web", "shopper")
                ),
            )
        # web and shopper may share a node: capture both nodes' links while the request runs.
        captures = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ambientctl",
                    "--state-dir",
                    str(state_dir),
                    "cluster",
                    "capture",
                    node,
                ]
                + ["--seconds", "4", "--marker", "shop-secret-1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for node in ("node-1", "node-2")
        ]
        for cap in captures:
            assert cap.stderr is not None and cap.stderr.readline().startswith("capturing node-")
        client = [sys.executable, "-m", "ambientctl.apps.client", "get", "http://web.shop/", "--count", "3"]
        client += ["--data", "shop-secret-1"]
        answer = json.loads(ctl(state_dir, "cluster", "exec", "shopper", "-n", "shop", "--", *client).stdout)
        assert answer["ok"] == 3 and {r["pod"] for r in answer["results"]} == {"web"}
        outputs = [cap.communicate(timeout=30)[0] for cap in captures]
        for cap, out in zip(captures, outputs, strict=True):
            assert cap.returncode == 0 and "marker 'shop-secret-1': not seen" in out, out
            flows = [line.split() for line in out.splitlines()[2:-1]]  # after the summary and header lines
            assert flows and all(f[1].endswith(":15008") and f[-1] == "yes" for f in flows), out

        status = json.loads(ctl(state_dir, "cluster", "status", "-o", "json").stdout)
        components = {p["name"]: p for p in status["processes"]}
        assert set(components) == {
            "istiod",
            "kubelet",
            "node-agent-node-1",
            "node-agent-node-2",
            "supervisor",
            "ztunnel-node-1",
            "ztunnel-node-2",
        }
        assert all(p["running"] for p in components.values())
        pids = [p["pid"] for p in components.values()] + [p["pid"] for p in status["pods"] if p["pid"]]
        web = next(p for p in status["pods"] if p["name"] == "web")
        assert (
            len(ctl(state_dir, "cluster", "logs", "ztunnel-node-1", "--tail", "5").stdout.splitlines()) == 5
        )
        # The node's ztunnel, read from inside its netns: it knows web as an HBONE workload.
        web_node = web["node"]
        zc = json.loads(ctl(state_dir, "zc", "workloads", "--node", web_node, "-o", "json").stdout)
        assert any(w["name"] == "web" and w["protocol"] == "HBONE" for w in zc), zc

        assert 'pod "web" deleted' in ctl(state_dir, "delete", "pod", "web", "-n", "shop").stdout
        wait_for(
            "web stopped and its namespace gone",
            lambda: not alive(web["pid"]) and not os.path.exists(f"/run/netns/{web['netns']}"),
        )

        cluster = Cluster(state_dir, prefix=prefix)
        Mesh(cluster).stop()  # the mesh alone goes; the network and pods stay
        assert [p.name for p in cluster.status().processes if p.running] == []
        assert not list((state_dir / "cluster" / "nodes").glob("*/net.d/*.conflist"))
        assert alive(next(p["pid"] for p in status["pods"] if p["name"] == "shopper"))
    finally:
        down = ctl(state_dir, "cluster", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert leftovers(prefix) == []
    assert [pid for pid in pids if alive(pid)] == []
    assert not (state_dir / "cluster" / "nodes").exists()  # sockets, CNI config, node credentials

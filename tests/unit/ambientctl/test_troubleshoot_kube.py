"""``ambientctl --kubeconfig FILE`` troubleshooting on a Kubernetes cluster (the API stand-in, in-process):
check, proxy-status, fetch, logs (--component and POD), stat/top, graph, tap, explain, bug-report and the
dashboard's snapshot. istiod, the ztunnels and a waypoint are pods in the stand-in; their monitoring,
admin, metrics and readiness ports are tiny HTTP servers on loopback reached through the stand-in's pod
port-forward; logs come from the stand-in's pods/log. Nothing of the local cluster is opened."""

from __future__ import annotations

import base64
import json
import tarfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.commands.common import CliState
from ambientctl.troubleshoot.bugreport import gather
from ambientctl.troubleshoot.dashboard import DashboardServer, LiveSource
from ambientctl.troubleshoot.remote import USER_RBAC, KubeReach, LogSource, component_sources, reach_for
from meshcore.model import Port
from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.store import Store, StoreUnavailable
from meshcore.store.kubernetes import DEFAULT_KINDS, reader_rbac_rules
from meshcore.testing.builders import service, workload
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig

NOW = datetime.now(UTC)


def root_pem(days: int = 3650) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def stream(pod: str, node: str, status: str = "SYNCED", nack: str = "") -> dict[str, Any]:
    types = {ADDRESS_TYPE_URL: {"status": status, "nacks": [{"time": "t", "message": nack}] if nack else []},
             AUTHORIZATION_TYPE_URL: {"status": "SYNCED"}}
    return {"node_id": f"ztunnel~10.0.0.1~{pod}.istio-system~istio-system.svc.cluster.local", "cluster": "Kubernetes",
            "metadata": {"NODE_NAME": node, "ISTIO_VERSION": "1.24.0"}, "types": types,
            "connected_since": (NOW - timedelta(minutes=5)).isoformat()}


@dataclass
class Endpoint:
    """A loopback HTTP server answering fixed (status, JSON) per path (bytes: sent as they are, text);
    ``routes`` may change during a test."""

    routes: dict[str, tuple[int, Any]] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    def start(self) -> tuple[str, int]:
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                status, doc = routes.get(self.path, (404, {"error": "no such path"}))
                body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return "127.0.0.1", self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def pod(name: str, namespace: str, labels: dict[str, str], node: str, *containers: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": c, "image": "mesh:1"} for c in containers]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


@dataclass
class Mesh:
    api: ThreadedKubeApi
    kubeconfig: Path
    istiod: Endpoint
    ztunnels: dict[str, Endpoint]  # node -> admin + readiness routes
    waypoint: Endpoint


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    dump = {"workloads": [], "services": [], "policies": [], "certificates": [
        {"identity": "spiffe://cluster.local/ns/shop/sa/web", "state": "Available",
         "certChain": [{"validFrom": (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}],
         "rootCerts": [{"pem": base64.b64encode(root_pem()).decode()}]}]}
    istiod = Endpoint({"/ready": (200, "ok"), "/debug/registryz": (200, {"workloads": [{}], "services": [],
                                                                         "policies": []}),
                       "/debug/syncz": (200, [stream("ztunnel-a", "node-1"), stream("ztunnel-b", "node-2")])})
    ztunnels = {n: Endpoint({"/config_dump": (200, dump), "/healthz/ready": (200, "ready")}) for n in ("node-1", "node-2")}
    waypoint = Endpoint({"/config_dump": (200, {"configs": []})})
    started: list[Endpoint] = []
    with ThreadedKubeApi() as api:
        try:
            for ns in ("istio-system", "shop"):
                api.call(api.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            api.call(api.server.put_object, pod("istiod-0", "istio-system", {"app": "istiod"}, "node-1", "discovery"))
            address = istiod.start()
            started.append(istiod)
            api.call(api.server.forward_port, "istio-system", "istiod-0", 15014, address)
            for name, node in (("ztunnel-a", "node-1"), ("ztunnel-b", "node-2")):
                api.call(api.server.put_object, pod(name, "istio-system", {"app": "ztunnel"}, node, "istio-proxy"))
                address = ztunnels[node].start()
                started.append(ztunnels[node])
                for port in (15000, 15020, 15021):
                    api.call(api.server.forward_port, "istio-system", name, port, address)
            api.call(api.server.put_object, pod("waypoint-7f", "shop", {
                "gateway.networking.k8s.io/gateway-name": "waypoint"}, "node-2", "istio-proxy"))
            address = waypoint.start()
            started.append(waypoint)
            for port in (15000, 15020):
                api.call(api.server.forward_port, "shop", "waypoint-7f", port, address)
            yield Mesh(api, Path(write_kubeconfig(tmp_path / "kubeconfig", api.url)), istiod, ztunnels, waypoint)
        finally:
            for endpoint in started:
                endpoint.stop()


def run(mesh: Mesh, *args: str) -> Any:
    return CliRunner().invoke(app, ["--state-dir", str(mesh.kubeconfig.parent / "local"),
                                    "--kubeconfig", str(mesh.kubeconfig), *args])


def test_proxy_status_lists_the_proxies_istiod_serves_through_its_port_forward(mesh: Mesh) -> None:
    got = run(mesh, "proxy-status")
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CLUSTER", "WDS", "WADS", "NACKS", "ISTIOD", "VERSION"]
    assert [line.split() for line in lines[1:]] == [
        ["ztunnel-a.istio-system", "Kubernetes", "SYNCED", "SYNCED", "0", "istiod-lite@istiod-0", "1.24.0"],
        ["ztunnel-b.istio-system", "Kubernetes", "SYNCED", "SYNCED", "0", "istiod-lite@istiod-0", "1.24.0"],
    ]
    as_json = run(mesh, "proxy-status", "-o", "json")
    assert [r["node"] for r in json.loads(as_json.stdout)] == ["node-1", "node-2"]
    assert not (mesh.kubeconfig.parent / "local").exists()  # the local cluster was never opened


def test_proxy_status_without_an_istiod_pod_says_the_mesh_is_not_installed(mesh: Mesh) -> None:
    mesh.api.call(mesh.api.server.delete_object, "Pod", "istio-system", "istiod-0")
    got = run(mesh, "proxy-status")
    assert got.exit_code == 1
    assert "no Running istiod pod (app=istiod) in istio-system" in got.output and "Traceback" not in got.output


def test_check_on_a_healthy_cluster_passes_and_lists_what_it_skipped(mesh: Mesh) -> None:
    got = run(mesh, "check")
    assert got.exit_code == 0, got.output
    out = got.stdout
    for line in ("✔ the mesh is installed (istiod and ztunnel pods in istio-system)",
                 "✔ istiod-lite istiod-0 is ready", "✔ istiod-lite is serving configuration",
                 "✔ ztunnel on node-1 is ready", "✔ ztunnel on node-2 is ready",
                 "✔ every node's ztunnel is connected to istiod-lite (2 node(s))",
                 "- this machine can host the mesh (root, network namespaces, ip, nft): skipped (with --kubeconfig",
                 "- every enrolled pod's traffic is redirected to ztunnel: skipped",
                 "Status check results are ✔"):  # fmt: skip
        assert line in out, out
    assert "days left" in out  # the CA root as the ztunnels hold it
    results = json.loads(run(mesh, "check", "-o", "json").stdout)["results"]
    assert {r["result"] for r in results} == {"success", "skipped"}


def test_check_on_an_unhealthy_cluster_fails_naming_the_ztunnel_and_the_nack(mesh: Mesh) -> None:
    mesh.ztunnels["node-2"].routes["/healthz/ready"] = (503, "not ready")
    mesh.istiod.routes["/debug/syncz"] = (200, [stream("ztunnel-a", "node-1", "NACKED", "bad address")])
    got = run(mesh, "check")
    assert got.exit_code == 1, got.output
    out = got.stdout
    assert "✖ ztunnel on node-2 is ready" in out and "/healthz/ready answered 503" in out
    assert "not connected: node-2" in out
    assert "ambientctl logs --component ztunnel --node node-2" in out  # the fix works on Kubernetes too
    assert "ztunnel-a.istio-system: bad address" in out
    assert "✔ ztunnel on node-1 is ready" in out


def test_check_where_a_pod_is_not_ready_shows_its_status(mesh: Mesh) -> None:
    broken = pod("ztunnel-b", "istio-system", {"app": "ztunnel"}, "node-2", "istio-proxy")
    broken["status"] = {"phase": "Pending", "containerStatuses": [
        {"name": "istio-proxy", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
    mesh.api.call(mesh.api.server.put_object, broken)
    got = run(mesh, "check")
    assert got.exit_code == 1
    assert "pod istio-system/ztunnel-b: phase Pending (istio-proxy: ImagePullBackOff)" in got.stdout
    assert "kubectl -n istio-system describe pod ztunnel-b" in got.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["node/node-1", ":15000/config_dump"], "spiffe://cluster.local/ns/shop/sa/web"),
     (["--node", "node-1", ":15000/config_dump"], "spiffe://cluster.local/ns/shop/sa/web"),
     (["istiod", ":15014/debug/registryz"], '"workloads"'),
     (["waypoint/shop/waypoint", ":15000/config_dump"], '"configs"'),
     (["pod/shop/waypoint-7f", ":15000/config_dump"], '"configs"'),
     (["--pod", "shop/waypoint-7f", ":15000/config_dump"], '"configs"')],
    ids=["a node's ztunnel admin", "a node's ztunnel with --node", "istiod's monitoring port",
         "a waypoint found by its gateway label", "a pod by its name", "a pod with --pod"],
)
def test_fetch_gets_any_endpoint_through_the_port_forward(mesh: Mesh, args: list[str], expected: str) -> None:
    got = run(mesh, "fetch", *args)
    assert got.exit_code == 0, got.output
    assert expected in got.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["fetch", "node/node-9", ":15000/config_dump"], "no ztunnel pod on node 'node-9' in istio-system (ztunnel "
      "pods run on: node-1, node-2)"),
     (["fetch", "waypoint/shop/other", ":15000/"], "no pod of waypoint shop/other"),
     (["fetch", "node/node-1", ":15000/nothing"], "answered HTTP 404"),
     (["fetch", "node/node-1", ":15099/"], "nothing listens on port 15099 of pod istio-system/ztunnel-a"),
     (["check", "--pre"], "--pre checks this machine"),
     (["fetch", "--node", "node-1", "--pod", "shop/web", ":15000/"], "either --node or --pod"),
     (["fetch", "--pod", "web", ":15000/"], "name the pod as <namespace>/<name>"),
     (["fetch", "--node", "node-1", "istiod", ":15000/"], "give only :PORT/PATH"),
     (["fetch", "istiod"], "give TARGET :PORT/PATH"),
     (["logs", "--component", "ztunnel", "--node", "node-9"], "no ztunnel pod (label app=ztunnel) in istio-system "
      "on node 'node-9'"),
     (["logs", "--component", "waypoint", "--pod", "shop/web"], ""),
     (["exec", "shop/web", "--", "true"], 'the API server answered HTTP 404: pods "web" not found'),
     (["--context", "nowhere", "proxy-status"], "cannot list the pods in istio-system through the Kubernetes API "
      "server http://127.0.0.1:9"),
     (["--context", "nowhere", "check"], "✖ the pods in istio-system can be listed")],
    ids=["fetch from a node without a ztunnel names the nodes that have one", "fetch of an unknown waypoint",
         "an endpoint's error status fails the command", "a port nothing listens on shows the port-forward's error",
         "check --pre refuses", "fetch with both --node and --pod", "fetch --pod without a namespace",
         "fetch --node with a TARGET too", "fetch without a location", "logs of a node without that component", "waypoint logs about a pod of none",
         "exec in a missing pod is the API server's not found", "an unreachable API server is named",
         "check against an unreachable API server fails its first check"],
)
def test_what_goes_wrong_is_one_line(mesh: Mesh, args: list[str], expected: str) -> None:
    got = run(mesh, *args)
    if args[:2] == ["logs", "--component"] and not expected:  # no waypoint logged about it: empty, not an error
        assert got.exit_code == 0 and got.stdout == "", got.output
        return
    assert got.exit_code == 1, got.output
    assert expected in got.output and "Traceback" not in got.output


def write_logs(mesh: Mesh) -> None:
    t = NOW - timedelta(minutes=1)
    lines = {("ztunnel-a", 0): "connection complete src.addr=10.0.0.1", ("ztunnel-b", 1): "xds connected",
             ("ztunnel-a", 2): "connection failed scope=access error='policy rejection' dst.workload=web"}
    for (name, second), event in sorted(lines.items(), key=lambda kv: kv[0][1]):
        stamp = (t + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        mesh.api.call(mesh.api.server.write_log, "istio-system", name, "istio-proxy", f"{stamp} [info     ] {event}")


def test_logs_of_a_component_are_every_pods_log_merged_by_time(mesh: Mesh) -> None:
    write_logs(mesh)
    got = run(mesh, "logs", "--component", "ztunnel")
    assert got.exit_code == 0, got.output
    assert [line.split("] ", 1)[0] + "]" for line in got.stdout.splitlines()] == [
        "[ztunnel-node-1]", "[ztunnel-node-2]", "[ztunnel-node-1]"]
    assert "connection failed" in got.stdout.splitlines()[2]

    one = run(mesh, "logs", "--component", "ztunnel", "--node", "node-2", "--tail", "1", "-o", "json")
    assert [json.loads(line)["event"] for line in one.stdout.splitlines()] == ["xds connected"]

    refused = run(mesh, "logs", "--component", "ztunnel", "--denied", "--since", "10m")
    assert [line.split("] ", 1)[0] for line in refused.stdout.splitlines()] == ["[ztunnel-node-1"]


def test_following_logs_yields_lines_as_the_api_server_sends_them(mesh: Mesh) -> None:
    reach = KubeReach.connect(str(mesh.kubeconfig), None)
    sources = [LogSource("ztunnel-node-1", "istio-system", "ztunnel-a", "istio-proxy")]
    mesh.api.call(mesh.api.server.write_log, "istio-system", "ztunnel-a", "istio-proxy", "before")
    lines = reach.follow_logs(sources, tail_lines=1)
    try:
        assert next(lines) == (sources[0], "before")
        mesh.api.call(mesh.api.server.write_log, "istio-system", "ztunnel-a", "istio-proxy", "after")
        assert next(lines) == (sources[0], "after")
        mesh.api.call(mesh.api.server.delete_object, "Pod", "istio-system", "ztunnel-a")
        assert list(lines) == []  # the stream ends with the pod
    finally:
        lines.close()


def test_component_sources_label_logs_as_the_local_cluster_does(mesh: Mesh) -> None:
    reach = KubeReach.connect(str(mesh.kubeconfig), None)
    waypoints = reach.waypoint_pods()
    assert [s.label for s in component_sources("ztunnel", reach.pods(), [])] == ["ztunnel-node-1", "ztunnel-node-2"]
    assert component_sources("istiod", reach.pods(), []) == [LogSource("istiod", "istio-system", "istiod-0", "discovery")]
    assert component_sources("waypoint", [], waypoints) == [
        LogSource("waypoint shop/waypoint-7f", "shop", "waypoint-7f", "istio-proxy")]


def test_the_commands_need_only_the_verbs_the_docs_name(mesh: Mesh, tmp_path: Path) -> None:
    write_logs(mesh)
    serve_metrics(mesh)
    mesh.istiod.routes["/debug/registryz"] = (200, registry())
    mesh.api.call(mesh.api.server.write_log, "shop", "waypoint-7f", "istio-proxy", "started")
    mesh.api.server.exec_handler = lambda *_a: (b"", b"", 0)

    def used() -> set[tuple[str, str, str]]:
        return {(r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb)
                for r in mesh.api.server.requests}  # fmt: skip

    for args in (["check"], ["proxy-status"], ["fetch", "waypoint/shop/waypoint", ":15000/config_dump"],
                 ["logs", "--component", "waypoint"], ["logs", "--component", "ztunnel"],
                 ["logs", "shop/waypoint-7f"], ["stat", "--interval", "0"], ["graph", "--interval", "0"],
                 ["tap", "svc/shop/web", "--duration", "0.2"], ["explain", "shop/client", "svc/shop/web:80"],
                 ["exec", "shop/waypoint-7f", "--", "true"], ["dashboard-snapshot"], ["bug-report", "--out", str(tmp_path / "r.tar.gz")]):  # fmt: skip
        before = len(mesh.api.server.requests)
        if args == ["dashboard-snapshot"]:
            LiveSource(reach_for(CliState(kubeconfig=str(mesh.kubeconfig))))()
        else:
            got = run(mesh, *args)
            assert got.exit_code == 0, (args, got.output)
        assert len(mesh.api.server.requests) > before, f"{args} made no request"
        if args[0] != "bug-report":
            without_store = used()
    granted = {("", resource, verb) for resource, verbs in USER_RBAC for verb in verbs}
    assert without_store <= granted, without_store - granted
    # bug-report's resources.json reads the cluster as `ambientctl get` does: list+watch of the store's kinds.
    store_reads = {(group, resource, verb) for rule in reader_rbac_rules(DEFAULT_KINDS)
                   for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}  # fmt: skip
    assert used() <= granted | store_reads, used() - granted - store_reads


def test_logs_follow_prints_each_pods_lines_until_the_pod_is_gone(mesh: Mesh) -> None:
    write_logs(mesh)
    result: list[Any] = []
    follower = threading.Thread(target=lambda: result.append(
        run(mesh, "logs", "-c", "ztunnel", "--node", "node-1", "-f")), daemon=True)
    follower.start()

    def following() -> bool:
        return any(r.subresource == "log" and r.name == "ztunnel-a" for r in mesh.api.server.requests)

    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while not following() and datetime.now(UTC) < deadline:
        follower.join(0.05)
    assert following(), "the command never asked for the log"
    mesh.api.call(mesh.api.server.delete_object, "Pod", "istio-system", "ztunnel-a")
    follower.join(10)
    assert not follower.is_alive() and result, "following did not end with the pod"
    got = result[0]
    assert got.exit_code == 0, got.output
    assert [line.split("] ", 1)[0] for line in got.stdout.splitlines()] == ["[ztunnel-node-1"] * 2


# --- stat/top, graph, tap, explain, logs POD, dashboard, bug-report ----------------------------------------

SVC = "web.shop.svc.cluster.local"


def tcp_metrics(opened: int, flags: str = "-") -> bytes:
    labels = (f'reporter="destination",source_workload="client",source_workload_namespace="shop",'
              f'source_principal="spiffe://cluster.local/ns/shop/sa/client",destination_service="{SVC}",'
              f'destination_workload="web",destination_workload_namespace="shop",request_protocol="tcp",'
              f'response_flags="{flags}",connection_security_policy="mutual_tls"')  # fmt: skip
    return (f"istio_tcp_connections_opened_total{{{labels}}} {opened}\n"
            f"istio_tcp_received_bytes_total{{{labels}}} 100\n").encode()  # fmt: skip


def access(event: str, **fields: str) -> str:
    """One access-log line as ztunnel writes it (now)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp} [info     ] {event}  " + " ".join(f"{k}={v!r}" for k, v in {**fields, "scope": "access"}.items())


def serve_metrics(mesh: Mesh) -> None:
    mesh.ztunnels["node-1"].routes["/metrics"] = (200, b"")
    mesh.ztunnels["node-2"].routes["/metrics"] = (200, tcp_metrics(3))
    mesh.waypoint.routes["/metrics"] = (200, b"")


@pytest.mark.parametrize("command", ["stat", "top"], ids=["stat", "its alias top"])
def test_stat_has_the_services_every_ztunnel_reports_through_its_port_forward(mesh: Mesh, command: str) -> None:
    serve_metrics(mesh)
    got = run(mesh, command, "--interval", "0", "-o", "json")
    assert got.exit_code == 0, got.output
    rows = json.loads(got.stdout)
    assert [(r["name"], r["count"]) for r in rows] == [(SVC, 3)]
    assert not (mesh.kubeconfig.parent / "local").exists()


def test_graph_has_the_edges_and_names_a_proxy_whose_metrics_failed(mesh: Mesh) -> None:
    serve_metrics(mesh)
    del mesh.waypoint.routes["/metrics"]
    got = run(mesh, "graph", "--interval", "0", "-o", "json")
    assert got.exit_code == 0, got.output
    edges = json.loads(got.stdout)
    assert [(e["source"], e["destination"], e["principal"], e["mtls"]) for e in edges] == [
        ("shop/client", SVC, "spiffe://cluster.local/ns/shop/sa/client", True)]
    assert "warning: waypoint shop/waypoint-7f answered HTTP 404 for /metrics; left out" in got.stderr


def followed_logs(mesh: Mesh) -> set[str]:
    return {r.name for r in mesh.api.server.requests if r.subresource == "log"}


def wait_until(done: Callable[[], bool], thread: threading.Thread, seconds: float = 10) -> bool:
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    while not done() and datetime.now(UTC) < deadline and thread.is_alive():
        thread.join(0.05)
    return done()


def test_tap_prints_the_access_records_of_a_service_written_after_it_started(mesh: Mesh) -> None:
    mesh.api.call(mesh.api.server.write_log, "istio-system", "ztunnel-b", "istio-proxy", access(
        "connection complete", **{"dst.service": SVC, "src.workload": "before"}))
    result: list[Any] = []
    tapper = threading.Thread(target=lambda: result.append(run(mesh, "tap", "svc/shop/web", "--max", "1",
                                                               "-o", "json")), daemon=True)  # fmt: skip
    tapper.start()
    assert wait_until(lambda: followed_logs(mesh) >= {"ztunnel-a", "ztunnel-b", "waypoint-7f"}, tapper), \
        "tap never followed every ztunnel's and waypoint's log"
    mesh.api.call(mesh.api.server.write_log, "istio-system", "ztunnel-a", "istio-proxy", access(
        "connection complete", **{"dst.service": "other.shop.svc.cluster.local", "src.workload": "client"}))
    mesh.api.call(mesh.api.server.write_log, "shop", "waypoint-7f", "istio-proxy", access(
        "request complete", **{"dst.service": SVC, "src.workload": "client", "response_code": "200"}))
    tapper.join(10)
    assert not tapper.is_alive() and result, "tap did not stop after --max 1"
    got = result[0]
    assert got.exit_code == 0, got.output
    records = [json.loads(line) for line in got.stdout.splitlines()]
    assert [(r["source"], r["fields"]["src.workload"]) for r in records] == [("waypoint shop/waypoint-7f", "client")]


def test_tap_with_a_duration_ends_when_it_is_over(mesh: Mesh) -> None:
    got = run(mesh, "tap", "pod/shop/web", "--duration", "0.3")
    assert got.exit_code == 0, got.output
    assert got.stdout.split() == ["TIME", "REPORTER", "SOURCE", "DESTINATION", "IDENTITY", "STATUS", "BYTES",
                                  "DURATION"]  # fmt: skip


def registry() -> dict[str, Any]:
    client = workload("client", "10.0.0.1", namespace="shop", node="node-1")
    web = workload("web", "10.0.0.2", namespace="shop", node="node-2", services={f"shop/{SVC}": (Port(80, 8080),)})
    return {"workloads": msgspec.to_builtins([client, web]),
            "services": msgspec.to_builtins([service("web", "10.96.0.9", {80: 8080}, namespace="shop")]),
            "policies": []}  # fmt: skip


def test_explain_reads_istiods_registry_and_the_last_connection_from_the_ztunnel_logs(mesh: Mesh) -> None:
    mesh.istiod.routes["/debug/registryz"] = (200, registry())
    mesh.api.call(mesh.api.server.write_log, "istio-system", "ztunnel-a", "istio-proxy", access(
        "connection complete", **{"src.addr": "10.0.0.1:50100", "src.workload": "client", "src.namespace": "shop",
                                  "dst.addr": "10.0.0.2:15008", "dst.hbone_addr": "10.0.0.2:8080",
                                  "dst.service": SVC, "direction": "outbound"}))  # fmt: skip
    got = run(mesh, "explain", "shop/client", "svc/shop/web:80", "-o", "json")
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["config"] == "ztunnel on node-1 is SYNCED"
    assert [(r["source"], r["outcome"]) for r in doc["lastSeen"]] == [("ztunnel-node-1", "OK")]
    summary = run(mesh, "explain", "shop/client")
    assert summary.exit_code == 0, summary.output
    assert "config:       istiod-lite's registry; ztunnel on node-1 is SYNCED" in summary.stdout


def test_logs_of_a_pod_follow_it_until_the_pod_is_gone(mesh: Mesh) -> None:
    mesh.api.call(mesh.api.server.write_log, "shop", "waypoint-7f", "istio-proxy", "one")
    result: list[Any] = []
    follower = threading.Thread(target=lambda: result.append(run(mesh, "logs", "shop/waypoint-7f", "-f")), daemon=True)
    follower.start()
    assert wait_until(lambda: "waypoint-7f" in followed_logs(mesh), follower), "the command never asked for the log"
    mesh.api.call(mesh.api.server.write_log, "shop", "waypoint-7f", "istio-proxy", "two")
    mesh.api.call(mesh.api.server.delete_object, "Pod", "shop", "waypoint-7f")
    follower.join(10)
    assert not follower.is_alive() and result, "following did not end with the pod"
    assert result[0].exit_code == 0, result[0].output
    assert result[0].stdout == "one\ntwo\n"


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [(["logs", "shop/waypoint-7f"], 0, "one\ntwo\nthree\n"),
     (["logs", "waypoint-7f", "-n", "shop", "-c", "istio-proxy", "--tail", "1"], 0, "three\n"),
     (["logs", "pod/shop/waypoint-7f", "--since", "1h"], 0, "one\ntwo\nthree\n"),
     (["logs", "shop/waypoint-7f", "--previous"], 1,
      'HTTP 400: previous terminated container "istio-proxy" in pod "waypoint-7f" not found'),
     (["logs", "shop/waypoint-7f", "-c", "nope"], 1, "HTTP 400: container nope is not valid for pod waypoint-7f"),
     (["logs", "shop/web"], 1, 'HTTP 404: pods "web" not found'),
     (["logs", "shop/waypoint-7f", "--since", "soon"], 1, "write a duration such as 30s"),
     (["logs", "shop/waypoint-7f", "--previous", "-f"], 1, "--previous and -f cannot be used together")],
    ids=["a pod's only container", "the last line of a named container", "lines of the last hour",
         "the previous run is the API server's refusal, passed through", "an unknown container is the API's error",
         "a pod that does not exist is the API's 404", "a --since that is no duration",
         "--previous with -f is refused before asking"],
)
def test_logs_of_a_pod_read_the_api_servers_pods_log(mesh: Mesh, args: list[str], code: int, expected: str) -> None:
    for line in ("one", "two", "three"):
        mesh.api.call(mesh.api.server.write_log, "shop", "waypoint-7f", "istio-proxy", line)
    got = run(mesh, *args)
    assert got.exit_code == code, got.output
    if code == 0:
        assert got.stdout == expected
    else:
        assert expected in got.output and "Traceback" not in got.output


def test_the_dashboards_snapshot_comes_from_the_cluster_through_the_api_server(mesh: Mesh) -> None:
    serve_metrics(mesh)
    write_logs(mesh)  # ztunnel-a refused a connection a minute ago
    view = reach_for(CliState(kubeconfig=str(mesh.kubeconfig)))
    server = DashboardServer(LiveSource(view))
    server.start()
    try:
        with urllib.request.urlopen(server.url + "api/snapshot", timeout=10) as answer:
            doc = json.loads(answer.read())
    finally:
        server.close()
    assert doc["errors"] == []
    assert [p["name"] for p in doc["proxies"]] == ["ztunnel-a.istio-system", "ztunnel-b.istio-system"]
    assert [(e["source"], e["destination"]) for e in doc["edges"]] == [("shop/client", SVC)]
    assert [(d["reporter"], d["reason"]) for d in doc["denials"]] == [("ztunnel-node-1", "policy rejection")]


def test_bug_report_gathers_every_proxy_log_and_resource_of_the_cluster(mesh: Mesh, tmp_path: Path) -> None:
    serve_metrics(mesh)
    write_logs(mesh)
    mesh.api.call(mesh.api.server.write_log, "shop", "waypoint-7f", "istio-proxy", "waypoint started")
    out = tmp_path / "report.tar.gz"
    got = run(mesh, "bug-report", "--out", str(out))
    assert got.exit_code == 0, got.output
    assert got.stdout.strip() == str(out)
    with tarfile.open(out) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile()}

        def text(name: str) -> str:
            handle = tar.extractfile(members[name])
            assert handle is not None
            return handle.read().decode()

        for name in ("istiod/syncz.json", "nodes/node-1/ztunnel-config_dump.json", "nodes/node-2/ztunnel-metrics.txt",
                     "waypoints/shop/waypoint-7f/config_dump.json", "cluster/istio-system-pods.json",
                     "check.json", "versions.json"):  # fmt: skip
            assert name in members, sorted(members)
        assert "connection failed" in text("logs/istio-system.ztunnel-a.istio-proxy.log")
        assert text("logs/shop.waypoint-7f.istio-proxy.log") == "waypoint started\n"
        assert "shop" in [r["metadata"]["name"] for r in json.loads(text("resources.json")) if r["kind"] == "Namespace"]
        assert {r["result"] for r in json.loads(text("check.json"))["results"]} == {"success", "skipped"}
        manifest = text("MANIFEST.txt")
    assert "nodes/node-1/node-agent-pods.json" in manifest  # no node agent pod: named, not silently missing
    assert not (mesh.kubeconfig.parent / "local").exists()


def test_a_store_the_user_may_not_list_leaves_only_resources_out_of_the_report(mesh: Mesh) -> None:
    def refused() -> Store:
        raise StoreUnavailable("listing Gateway: HTTP 403 Forbidden")

    report = gather(reach_for(CliState(kubeconfig=str(mesh.kubeconfig))), refused, with_checks=False)
    assert report.missing["resources.json"] == "listing Gateway: HTTP 403 Forbidden"
    assert "istiod/syncz.json" in report.members and "resources.json" not in report.members


def test_fetch_reaches_the_node_agents_loopback_admin_port_on_its_own_pod_not_the_ztunnels(mesh: Mesh) -> None:
    """/debug/pods is on the node agent's admin port (15015, loopback of its host-network pod): ``node/N``
    on that port resolves to the istio-cni pod of node N, whose port-forward dials the pod's loopback."""
    agent = Endpoint({"/debug/pods": (200, {"node": "node-1", "captured": {}, "failing": {}})})
    mesh.api.call(mesh.api.server.put_object, pod("istio-cni-x", "istio-system", {"app": "istio-cni"}, "node-1",
                                                  "install-cni"))  # fmt: skip
    address = agent.start()
    try:
        mesh.api.call(mesh.api.server.forward_port, "istio-system", "istio-cni-x", 15015, address)
        got = run(mesh, "fetch", "node/node-1", ":15015/debug/pods")
    finally:
        agent.stop()
    assert got.exit_code == 0, got.output
    assert '"captured"' in got.stdout

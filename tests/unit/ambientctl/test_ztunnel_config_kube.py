"""``ambientctl --kubeconfig FILE zc ... --node NAME``: the ztunnel pod on that node is found in istio-system
and its admin endpoint read through the API server's pod port-forward (the stand-in's WebSocket
port-forward relays to a tiny admin server on loopback); what goes wrong is one line naming the fix."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.troubleshoot.remote import pick_ztunnel_pod
from meshcore.testing.kube_api import RecordedRequest, ThreadedKubeApi, write_kubeconfig

DUMP: dict[str, Any] = {
    "workloads": [{"uid": "cluster1//v1/pod/shop/web-0", "workloadIps": ["10.0.0.11"], "protocol": "HBONE",
                   "name": "web-0", "namespace": "shop", "serviceAccount": "web", "node": "node-1",
                   "status": "Healthy"}],
    "services": [], "policies": [], "certificates": [],
}


class _Admin(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps(DUMP if self.path == "/config_dump" else []).encode()
        self.send_response(200 if self.path in ("/config_dump", "/connections") else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[tuple[str, int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def ztunnel_pod(name: str, node: str, phase: str = "Running") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "istio-system", "labels": {"app": "ztunnel"}},
            "spec": {"nodeName": node}, "status": {"phase": phase}}


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        server.call(server.server.put_object,
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
        server.call(server.server.put_object, ztunnel_pod("ztunnel-a", "node-1"))
        server.call(server.server.put_object, ztunnel_pod("ztunnel-b", "node-2"))
        yield server


@pytest.fixture
def kubeconfig(api: ThreadedKubeApi, tmp_path: Path) -> Path:
    return Path(write_kubeconfig(tmp_path / "kubeconfig", api.url))


def zc(kubeconfig: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--kubeconfig", str(kubeconfig), "zc", *args])


def test_zc_reads_the_ztunnel_of_a_node_through_the_api_servers_port_forward(
    api: ThreadedKubeApi, kubeconfig: Path, admin: tuple[str, int]
) -> None:
    api.call(api.server.forward_port, "istio-system", "ztunnel-a", 15000, admin)
    got = zc(kubeconfig, "workloads", "--node", "node-1", "-o", "json")
    assert got.exit_code == 0, got.output
    assert [w["name"] for w in json.loads(got.stdout)] == ["web-0"]
    assert RecordedRequest("create", "", "pods", "portforward", "istio-system", "ztunnel-a") in api.server.requests

    table = zc(kubeconfig, "all", "--node", "node-1")  # the dump, then /connections: two port-forwards
    assert table.exit_code == 0, table.output
    assert "web-0" in table.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["workloads", "--node", "node-3"], "no ztunnel pod on node 'node-3' in istio-system (ztunnel pods run on: "
                                             "node-1, node-2)"),
        (["workloads"], "--node NAME"),
        (["workloads", "--node", "node-2"], "nothing listens on port 15000 of pod istio-system/ztunnel-b"),
    ],
    ids=["a node without a ztunnel pod names the nodes that have one", "no --node asks for it",
         "a port nothing listens on shows the port-forward's error"],
)
def test_what_goes_wrong_is_one_line_naming_it(kubeconfig: Path, args: list[str], expected: str) -> None:
    got = zc(kubeconfig, *args)
    assert got.exit_code == 1, got.output
    assert expected in got.output and "Traceback" not in got.output


def test_a_running_ztunnel_pod_is_preferred_over_one_still_terminating() -> None:
    pods = [ztunnel_pod("old", "node-1", "Failed"), ztunnel_pod("new", "node-1"), ztunnel_pod("other", "node-2")]
    assert pick_ztunnel_pod(pods, "node-1") == ("istio-system", "new")

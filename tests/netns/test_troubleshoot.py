"""Troubleshooting on the local cluster, as an operator runs it: ``check`` passes on a healthy mesh and
names the fault once a ztunnel is killed; ``explain`` predicts an allowed and a denied connection and the
data plane then does exactly that, and ``logs --denied`` finds the refusal; ``tap`` shows a request made
after it started; ``proxy-status`` lists every node's ztunnel as SYNCED; ``fetch`` reads an endpoint
inside a node's netns from the host."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ambientctl.cli import build_app
from ambientctl.cluster.testing import (
    AMBIENT,
    MeshCluster,
    deny_policy,
    echo_pod,
    namespace,
    service,
    sleeper_pod,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)

# A namespace of its own: the node agent's /proc scan finds pods by namespace/name on the whole machine,
# so other local clusters running at the same time must not have pods of the same names.
NS = f"ts{secrets.token_hex(3)}"
PODS = [("server", NS), ("client", NS), ("bad", NS)]
URL = f"http://echo.{NS}/"


@pytest.fixture(scope="module")
def mc() -> Iterator[MeshCluster]:
    cluster = MeshCluster.create()
    try:
        cluster.apply(
            namespace(NS, AMBIENT),
            echo_pod("server", NS, "node-2", {"app": "echo"}, sa="server"),
            sleeper_pod("client", NS, "node-1", sa="client"),
            sleeper_pod("bad", NS, "node-1", sa="bad"),
            service("echo", NS, {"app": "echo"}),
            deny_policy("deny-bad", NS, {"app": "echo"}, {"principals": [f"cluster.local/ns/{NS}/sa/bad"]}),
        )
        cluster.wait_running(PODS)
        cluster.wait_redirection(PODS, "enabled")
        yield cluster
    finally:
        cluster.close()


def ctl(mc: MeshCluster, *args: str) -> Result:
    return CliRunner().invoke(build_app(), ["--state-dir", str(mc.state_dir), *args], catch_exceptions=False)


def check_json(mc: MeshCluster) -> tuple[int, dict[str, Any]]:
    result = ctl(mc, "check", "-o", "json")
    return result.exit_code, json.loads(result.stdout)


def failures(doc: dict[str, Any]) -> list[str]:
    return [f"{r['description']}: {r['detail']}" for r in doc["results"] if r["result"] == "error"]


def test_fetch_reads_a_ztunnel_endpoint_from_the_host(mc: MeshCluster) -> None:
    result = ctl(mc, "fetch", "node/node-1", ":15021/healthz/ready")
    assert result.exit_code == 0, result.output
    dump = json.loads(ctl(mc, "fetch", "node/node-2", ":15000/config_dump").stdout)
    assert {w["name"] for w in dump["workloads"]} >= {"server", "client", "bad"}


def test_proxy_status_lists_every_ztunnel_synced(mc: MeshCluster) -> None:
    def synced() -> list[dict[str, Any]] | None:
        rows = json.loads(ctl(mc, "proxy-status", "-o", "json").stdout)
        ztunnels = [r for r in rows if r["kind"] == "ztunnel"]
        return ztunnels if len(ztunnels) == 2 and all(r["synced"] for r in ztunnels) else None

    rows = wait_for("both ztunnels SYNCED", synced, timeout=20)
    assert sorted(r["node"] for r in rows) == ["node-1", "node-2"]
    table = ctl(mc, "proxy-status").stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "CLUSTER", "WDS", "WADS"]
    assert any(line.startswith("ztunnel-node-1.istio-system") and "SYNCED" in line for line in table)


def test_explain_predicts_what_the_data_plane_does(mc: MeshCluster) -> None:
    allowed = json.loads(ctl(mc, "explain", f"{NS}/client", f"svc/{NS}/echo", "-o", "json").stdout)
    denied = json.loads(ctl(mc, "explain", f"{NS}/bad", f"echo.{NS}:80", "-o", "json").stdout)
    assert allowed["route"]["kind"] == "Direct" and allowed["allowed"] is True
    (hop,) = allowed["route"]["hops"]
    assert hop["protocol"] == "HBONE" and hop["identities"] == [f"spiffe://cluster.local/ns/{NS}/sa/server"]
    assert denied["allowed"] is False
    (l4,) = denied["l4"]
    assert l4["decision"]["policy"] == f"{NS}/deny-bad"
    assert l4["policies"] == [{"policy": f"{NS}/deny-bad", "action": "DENY", "dryRun": False, "matched": True, "rule": 0}]

    assert mc.request("client", NS, URL)["ok"] == 1
    refused = mc.request("bad", NS, URL, timeout=3.0)
    assert refused["ok"] == 0, refused
    text = ctl(mc, "explain", f"{NS}/bad", f"svc/{NS}/echo").stdout
    assert f"DENY  {NS}/deny-bad: matched rule 0" in text and text.rstrip().endswith("DENIED")

    pod = ctl(mc, "explain", f"{NS}/server").stdout
    assert f"DENY  {NS}/deny-bad (selector, 1 rule(s))" in pod and f"echo.{NS}.svc.cluster.local" in pod

    # The data plane's own account of the refusal, found with logs --denied.
    def denial() -> str | None:
        out = ctl(mc, "logs", "--component", "ztunnel", "--denied", "--pod", f"{NS}/bad", "--since", "5m").stdout
        return out if f"explicitly denied by: {NS}/deny-bad" in out else None

    lines = wait_for("the denial in the ztunnel logs", denial, timeout=10).splitlines()
    # The destination's ztunnel refused it; nothing the allowed client did is listed.
    assert any(x.startswith("[ztunnel-node-2]") and f"{NS}/deny-bad" in x for x in lines), lines
    assert not any("client" in x for x in lines), lines


def test_graph_and_stat_have_the_traffic_just_sent(mc: MeshCluster) -> None:
    assert mc.request("client", NS, URL, count=3)["ok"] == 3
    svc = f"echo.{NS}.svc.cluster.local"

    def edge() -> dict[str, Any] | None:
        edges = json.loads(ctl(mc, "graph", "--interval", "0", "-o", "json").stdout)
        return next((e for e in edges if e["source"] == f"{NS}/client" and e["destination"] == svc), None)

    found = wait_for("the client -> echo edge", edge, timeout=10)
    assert found["count"] >= 3 and found["mtls"] is True
    assert found["principal"] == f"spiffe://cluster.local/ns/{NS}/sa/client" and found["successRate"] == 1.0
    dot = ctl(mc, "graph", "--interval", "0", "-o", "dot").stdout
    assert f'"{NS}/client" -> "{svc}"' in dot
    rows = json.loads(ctl(mc, "stat", "--interval", "0", "-o", "json").stdout)
    (row,) = [r for r in rows if r["name"] == svc]
    assert row["count"] >= 3 and row["protocols"] == "tcp"


def test_tap_shows_a_request_made_after_it_started(mc: MeshCluster) -> None:
    argv = [sys.executable, "-m", "ambientctl", "--state-dir", str(mc.state_dir),
            "tap", f"svc/{NS}/echo", "--duration", "40", "--max", "1"]  # fmt: skip
    tap = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tap.stdout is not None
        header = tap.stdout.readline()  # printed once tap is following the logs
        assert header.split()[:3] == ["TIME", "REPORTER", "SOURCE"], header + tap.stderr.read()
        assert mc.request("client", NS, URL)["ok"] == 1
        out, err = tap.communicate(timeout=60)
    finally:
        if tap.poll() is None:
            tap.kill()
            tap.wait()
    (row,) = out.splitlines()
    assert f"{NS}/client" in row and f"echo.{NS}.svc.cluster.local" in row and " ok " in row, (row, err)


def test_check_passes_then_names_a_killed_ztunnel(mc: MeshCluster) -> None:
    def healthy() -> dict[str, Any] | None:
        code, doc = check_json(mc)
        return doc if code == 0 else None

    doc = wait_for("check passes on the healthy mesh", healthy, timeout=30)
    assert doc["success"] is True and not failures(doc)
    text = ctl(mc, "check").stdout
    assert "✔ ztunnel-node-2 is ready" in text and text.rstrip().endswith("Status check results are ✔")

    record = mc.cluster.find_component("ztunnel-node-2")
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    wait_for("ztunnel-node-2 exited", lambda: not mc.cluster.procs.is_running(record), timeout=10)

    code, doc = check_json(mc)
    assert code == 1 and doc["success"] is False
    failed = failures(doc)
    assert "ztunnel-node-2 is running: its process exited" in failed
    assert any(f.startswith("ztunnel-node-2 is ready:") for f in failed)
    assert not any("node-1" in f for f in failed), failed
    fixes = {r["description"]: r["remediation"] for r in doc["results"] if r["result"] == "error"}
    assert "ambientctl cluster logs ztunnel-node-2" in fixes["ztunnel-node-2 is running"]

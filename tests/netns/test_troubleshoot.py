"""Troubleshooting on the local cluster, as an operator runs it: ``check`` passes on a healthy mesh and
names the one rule removed from a pod's nftables (from its node agent's own record of what it
installed) until a restart of that node agent repairs it, then names the fault once a ztunnel is killed
and once istiod is stopped; ``explain`` predicts an allowed and a denied connection and the data plane then does exactly
that, ``explain`` then shows the refusal from the access log with the policy that denied it, and
``logs --denied`` finds the refusal; with a per-service-account waypoint and an L7 policy,
``explain --method POST`` predicts 403 at the waypoint and a real POST gets it; ``tap`` shows a request
made after it started; ``proxy-status`` lists every node's ztunnel as SYNCED with its version;
``fetch`` reads an endpoint inside a node's netns from the host; ``bug-report`` writes an archive with
the config dumps and logs and no key material.

The tests share one cluster and run in file order: the faults are made last (a pod's rule removed and
repaired, then a ztunnel killed, then istiod stopped), each test asserting only what its fault changes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path
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
from ambientctl.troubleshoot.bugreport import find_key_files
from meshcore.aio.netns import NetnsHandle

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
    # The fixture's pods were just enrolled: ztunnel answers 503 until it holds their certificates; the
    # endpoint is reached from the host either way, and turns 200 within the deadline.
    def ready() -> str | None:
        result = ctl(mc, "fetch", "node/node-1", ":15021/healthz/ready")
        assert result.exit_code == 0 or "answered HTTP 503" in result.output, result.output
        return result.output if result.exit_code == 0 else None

    wait_for("node-1's ztunnel ready, fetched from the host", ready, timeout=20)

    def workloads() -> set[str] | None:
        dump = json.loads(ctl(mc, "fetch", "node/node-2", ":15000/config_dump").stdout)
        names = {w["name"] for w in dump["workloads"]}
        return names if names >= {"server", "client", "bad"} else None

    # Running pods reach node-2's ztunnel through istiod's next push: wait for it, bounded.
    wait_for("node-2's ztunnel knows every pod", workloads, timeout=20)


def test_proxy_status_lists_every_ztunnel_synced(mc: MeshCluster) -> None:
    def synced() -> list[dict[str, Any]] | None:
        rows = json.loads(ctl(mc, "proxy-status", "-o", "json").stdout)
        ztunnels = [r for r in rows if r["kind"] == "ztunnel"]
        return ztunnels if len(ztunnels) == 2 and all(r["synced"] for r in ztunnels) else None

    rows = wait_for("both ztunnels SYNCED", synced, timeout=20)
    assert sorted(r["node"] for r in rows) == ["node-1", "node-2"]
    assert {r["version"] for r in rows} == {package_version("ambient-mesh")}
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
    assert f"DENY  {NS}/deny-bad: matched rule 0" in text and "\nverdict:      DENIED\n" in text

    # Beside the prediction, the refusal just made, as the destination's ztunnel logged it, with its reason.
    def last_denial() -> str | None:
        out = ctl(mc, "explain", f"{NS}/bad", f"svc/{NS}/echo").stdout
        return out if any("(inbound): DENIED: " in x and f"explicitly denied by: {NS}/deny-bad" in x
                          for x in out.splitlines()) else None  # fmt: skip

    seen = wait_for("explain shows the last denial", last_denial, timeout=10).splitlines()
    i = next(n for n, x in enumerate(seen) if x.startswith("last seen:"))
    assert seen[i - 1] == "verdict:      DENIED" and "in the access logs" in seen[i], seen
    assert any("ztunnel-node-2 (inbound): DENIED" in x for x in seen[i + 1 :]), seen
    doc = json.loads(ctl(mc, "explain", f"{NS}/bad", f"svc/{NS}/echo", "-o", "json").stdout)
    assert any(r["outcome"] == "DENIED" and r["reason"].endswith(f"explicitly denied by: {NS}/deny-bad")
               for r in doc["lastSeen"]), doc["lastSeen"]  # fmt: skip
    # The allowed client's connection is its own: no denial is shown for it.
    def allowed_seen() -> list[dict[str, Any]] | None:
        doc = json.loads(ctl(mc, "explain", f"{NS}/client", f"svc/{NS}/echo", "-o", "json").stdout)
        return doc["lastSeen"] or None

    mine = wait_for("explain shows the client's last connection", allowed_seen, timeout=10)
    assert all(r["outcome"] == "OK" for r in mine), mine

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


def test_bug_report_has_every_dump_and_no_key_material(mc: MeshCluster, tmp_path: Path) -> None:
    result = ctl(mc, "bug-report", "--out", str(tmp_path / "report.tar.gz"))
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "report.tar.gz" and path.stat().st_mode & 0o777 == 0o600
    with tarfile.open(path, "r:gz") as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    for name in ["istiod/syncz.json", "istiod/registryz.json", "nodes/node-1/ztunnel-config_dump.json",
                 "nodes/node-2/ztunnel-config_dump.json", "nodes/node-1/node-agent-pods.json",
                 "logs/istiod.log", "logs/ztunnel-node-1.log", "versions.json", "resources.json", "check.json"]:
        assert name in files, sorted(files)
    assert {w["name"] for w in json.loads(files["nodes/node-2/ztunnel-config_dump.json"])["workloads"]} >= {"server"}
    assert any(r["kind"] == "AuthorizationPolicy" and r["metadata"]["name"] == "deny-bad"
               for r in json.loads(files["resources.json"]))
    keys = find_key_files(mc.state_dir)
    assert keys, "the state directory holds no key file: nothing was tested"
    everything = "\n".join(files.values())
    assert "PRIVATE KEY" not in everything
    for key in keys:
        body = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
        assert not any(line in everything for line in body if len(line) >= 24), key
    # Certificates (public) are kept: what expiry problems are read from.
    held = json.loads(files["nodes/node-2/ztunnel-config_dump.json"])["certificates"]
    assert held and all(e["certChain"][0]["expirationTime"] for e in held)


GET_ONLY = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: get-only, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: ["GET"]}}}}]
"""


def test_explain_predicts_a_403_at_the_waypoint_and_a_real_post_gets_it(mc: MeshCluster) -> None:
    done = ctl(mc, "waypoint", "apply", "-n", NS, "--service-account", "server", "--wait")
    assert done.exit_code == 0, done.output
    mc.apply(GET_ONLY)

    def predicted() -> dict[str, Any] | None:
        doc = json.loads(ctl(mc, "explain", f"{NS}/client", f"svc/{NS}/echo", "--method", "POST", "-o", "json").stdout)
        return doc if doc["l7"] and doc["l7"]["policies"] else None

    post = wait_for("explain sees the waypoint and its policy", predicted, timeout=30)
    assert post["route"]["waypoint"] and post["allowed"] is False
    assert post["l7"]["decision"]["allowed"] is False
    assert post["l7"]["policies"][0]["policy"] == f"{NS}/get-only"
    text = ctl(mc, "explain", f"{NS}/client", f"svc/{NS}/echo", "--method", "POST").stdout
    assert "403 RBAC: access denied" in text, text
    get = json.loads(ctl(mc, "explain", f"{NS}/client", f"svc/{NS}/echo", "--method", "GET", "-o", "json").stdout)
    assert get["allowed"] is True and get["l7"]["decision"]["allowed"] is True

    def status(data: str | None) -> int | None:
        return mc.request("client", NS, URL, data=data, timeout=5.0)["results"][0].get("status")

    wait_for("a real POST denied with 403 at the waypoint", lambda: status("x") == 403, timeout=30)
    assert status(None) == 200


def nat_rule_handle(handle: NetnsHandle, port: int) -> int:
    """The handle of the rule in the pod's istio-ambient-nat/istio-output that redirects to ``port``."""
    done = handle.run(subprocess.run, ["nft", "-a", "-j", "list", "chain", "inet", "istio-ambient-nat", "istio-output"],
                      capture_output=True, text=True, timeout=10)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rules = [i["rule"] for i in json.loads(done.stdout)["nftables"] if "rule" in i]
    (found,) = [r["handle"] for r in rules if {"redirect": {"port": port}} in r["expr"]]
    return int(found)


def redirection_results(mc: MeshCluster) -> list[dict[str, Any]]:
    return [r for r in check_json(mc)[1]["results"] if r["category"] == "traffic redirection"]


def test_check_names_the_one_rule_removed_from_a_pod_and_a_node_agent_restart_repairs_it(mc: MeshCluster) -> None:
    record = mc.cluster.find_pod("bad", NS)
    assert record is not None
    with NetnsHandle.open(str(mc.cluster.net.netns_path(record.netns))) as handle:
        rule = nat_rule_handle(handle, 15001)
        done = handle.run(subprocess.run, ["nft", "delete", "rule", "inet", "istio-ambient-nat", "istio-output",
                                           "handle", str(rule)], capture_output=True, text=True, timeout=10)  # fmt: skip
    assert done.returncode == 0, done.stderr

    code, doc = check_json(mc)
    assert code == 1
    (drifted,) = [r for r in doc["results"] if r["category"] == "traffic redirection" and r["result"] == "error"]
    assert drifted["description"] == f"{NS}/bad is redirected to ztunnel as the node agent on node-1 installed it"
    assert drifted["detail"].startswith("rule missing from inet istio-ambient-nat/istio-output: `"), drifted
    assert "redirect to :15001`" in drifted["detail"] and "15006" not in drifted["detail"], drifted
    assert drifted["remediation"].startswith("restart the node agent on node-1")

    # The fix it names: the node agent, restarted, installs every enrolled pod's rules again.
    agent = mc.cluster.find_component("node-agent-node-1")
    assert agent is not None
    os.kill(agent.pid, signal.SIGTERM)
    wait_for("node-agent-node-1 exited", lambda: not mc.cluster.procs.is_running(agent), timeout=10)
    mc.mesh.start()  # what `ambientctl cluster up` runs: starts what is not running

    def repaired() -> list[dict[str, Any]] | None:
        results = redirection_results(mc)
        return results if all(r["result"] == "success" for r in results) else None

    (ok,) = wait_for("check finds bad's rules in place again", repaired, timeout=30)
    assert ok["detail"].endswith("pod(s), checked rule by rule by the node agents"), ok
    with NetnsHandle.open(str(mc.cluster.net.netns_path(record.netns))) as handle:
        nat_rule_handle(handle, 15001)


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


def test_check_names_a_stopped_istiod(mc: MeshCluster) -> None:
    assert mc.cluster.stop_component("istiod")
    code, doc = check_json(mc)
    assert code == 1
    fixes = {r["description"]: r for r in doc["results"] if r["result"] == "error"}
    assert fixes["istiod is running"]["remediation"].startswith("read why: ambientctl cluster logs istiod")
    assert "istiod is ready" in fixes and "istiod-lite is serving configuration" in fixes

"""The mesh end to end on a two-node local cluster: real namespaces, redirection, processes, TLS, policy.

One cluster with the mesh is shared by the module (bringing one up costs seconds); every test leaves it
as it found it (policies deleted, namespaces labelled back), and the one that kills a ztunnel runs last.
Workloads, as a user would apply them: namespace ``mesh`` (ambient from the start, so its pods are
captured by the CNI plugin before they start): ``server-1`` on node-1 and ``server-2`` on node-2 behind
the Service ``echo``, and ``client`` on node-1; namespace ``plain`` (not in the mesh): ``plain-server``
and ``plain-client`` on node-2. Proofs come from packet captures (scapy) on the node link or a pod's
eth0, and from what the pods' apps answer.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambientctl.cluster.mesh import agent_name, ztunnel_name
from ambientctl.cluster.testing import (
    AMBIENT,
    MeshCluster,
    deny_policy,
    echo_pod,
    namespace,
    ok_count,
    run_ambientctl,
    served_by,
    service,
    sleeper_pod,
    wait_for,
)
from meshcore.store import ResourceRef

pytestmark = pytest.mark.timeout(120)

MESH_PODS = [("server-1", "mesh"), ("server-2", "mesh"), ("client", "mesh")]
PLAIN_PODS = [("plain-server", "plain"), ("plain-client", "plain")]


@pytest.fixture(scope="module")
def mc() -> Iterator[MeshCluster]:
    cluster = MeshCluster.create()
    try:
        cluster.apply(
            namespace("mesh", AMBIENT),
            echo_pod("server-1", "mesh", "node-1", {"app": "echo"}, sa="server"),
            echo_pod("server-2", "mesh", "node-2", {"app": "echo"}, sa="server"),
            sleeper_pod("client", "mesh", "node-1", sa="client"),
            service("echo", "mesh", {"app": "echo"}),
            namespace("plain"),
            echo_pod("plain-server", "plain", "node-2"),
            sleeper_pod("plain-client", "plain", "node-2"),
        )
        cluster.wait_running(MESH_PODS + PLAIN_PODS)
        cluster.wait_redirection(MESH_PODS, "enabled")
        yield cluster
    finally:
        cluster.close()


def ip(mc: MeshCluster, name: str, ns: str) -> str:
    return str(mc.pod(name, ns).status["podIP"])


def marker() -> str:
    return "marker-" + secrets.token_hex(8)


def test_cross_node_traffic_crosses_the_node_link_only_as_tls_on_15008(mc: MeshCluster) -> None:
    secret = marker()
    url = f"http://{ip(mc, 'server-2', 'mesh')}:8080/"
    summary, result = mc.capture(
        mc.node_netns("node-1"), lambda: mc.request("client", "mesh", url, data=secret), [secret]
    )
    (answer,) = result["results"]
    assert answer["ok"] and answer["echo"] == secret and answer["pod"] == "server-2"
    assert answer["peer"] == ip(mc, "client", "mesh")  # the app sees the client's own address
    assert summary.server_ports == (15008,), summary.flows
    assert summary.all_tls_on(15008) and summary.markers_found == ()


def test_same_node_traffic_reaches_the_pod_only_as_tls_on_15008(mc: MeshCluster) -> None:
    secret = marker()
    url = f"http://{ip(mc, 'server-1', 'mesh')}:8080/"
    summary, result = mc.capture(
        mc.pod_netns("server-1", "mesh"), lambda: mc.request("client", "mesh", url, data=secret), [secret]
    )
    assert ok_count(result) == 1 and result["results"][0]["echo"] == secret
    assert summary.all_tls_on(15008), summary.flows
    assert summary.markers_found == ()


def test_a_service_vip_spreads_requests_over_endpoints_on_both_nodes(mc: MeshCluster) -> None:
    result = mc.request("client", "mesh", "http://echo.mesh/", count=30)
    assert ok_count(result) == 30, result
    assert served_by(result) == {"server-1", "server-2"}


def test_mesh_to_non_mesh_is_passed_through_in_plaintext(mc: MeshCluster) -> None:
    secret = marker()
    url = f"http://{ip(mc, 'plain-server', 'plain')}:8080/"
    summary, result = mc.capture(
        mc.node_netns("node-1"), lambda: mc.request("client", "mesh", url, data=secret), [secret]
    )
    (answer,) = result["results"]
    assert answer["ok"] and answer["pod"] == "plain-server" and answer["peer"] == ip(mc, "client", "mesh")
    # Not HBONE: the destination has no ztunnel, so the bytes go as they are (Istio's passthrough).
    # Other flows may cross the link meanwhile (HBONE keepalives of earlier tests' pooled connections):
    # look at the ones to the plain server.
    to_plain = [f for f in summary.flows if f.server.split(":")[0] == ip(mc, "plain-server", "plain")]
    assert to_plain and {f.server_port for f in to_plain} == {8080}
    assert summary.markers_found == (secret.encode(),)


def test_non_mesh_to_mesh_is_served_on_15006_with_policy_applied(mc: MeshCluster) -> None:
    url = f"http://{ip(mc, 'server-2', 'mesh')}:8080/"
    first = mc.request("plain-client", "plain", url)
    assert ok_count(first) == 1 and first["results"][0]["peer"] == ip(mc, "plain-client", "plain")

    plain_client = ip(mc, "plain-client", "plain")
    mc.apply(deny_policy("deny-plain", "mesh", {"app": "echo"}, {"ipBlocks": [f"{plain_client}/32"]}))
    try:
        wait_for(
            "plaintext from the non-mesh client refused",
            lambda: ok_count(mc.request("plain-client", "plain", url, timeout=2)) == 0,
        )
        assert ok_count(mc.request("client", "mesh", url)) == 1  # the policy names only that source
    finally:
        mc.store.delete([ResourceRef("AuthorizationPolicy", "mesh", "deny-plain")])
    wait_for(
        "plaintext allowed again", lambda: ok_count(mc.request("plain-client", "plain", url, timeout=2)) == 1
    )


def test_a_deny_policy_refuses_new_connections_and_closes_a_live_one(mc: MeshCluster) -> None:
    url = f"http://{ip(mc, 'server-2', 'mesh')}:8080/"
    # Run alone, this is the module's first test: the server may still be starting.
    wait_for(
        "the client reaches the server", lambda: ok_count(mc.request("client", "mesh", url, timeout=2)) == 1
    )
    held = mc.hold("client", "mesh", url, duration=60)
    try:
        assert held.stdout is not None
        assert json.loads(held.stdout.readline()) == {"event": "connected"}
        mc.apply(
            deny_policy(
                "deny-client", "mesh", {"app": "echo"}, {"principals": ["cluster.local/ns/mesh/sa/client"]}
            )
        )
        end = json.loads(held.stdout.readline())  # bounded by the module timeout and --duration
        assert end["event"] == "closed", end
        refused = mc.request("client", "mesh", url, timeout=3)
        assert ok_count(refused) == 0
    finally:
        held.kill()
        held.wait()
        mc.store.delete([ResourceRef("AuthorizationPolicy", "mesh", "deny-client")])
    wait_for(
        "allowed again after the delete", lambda: ok_count(mc.request("client", "mesh", url, timeout=2)) == 1
    )


TYPO_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: mesh}
spec: {selectr: {matchLabels: {app: x}}, action: DENY, rules: [{}]}
"""


def test_a_policy_with_a_typo_is_refused_by_apply_and_traffic_still_flows(
    mc: MeshCluster, tmp_path: Path
) -> None:
    # Accepted, it would be a namespace-wide deny-all (no selector, one empty rule matching everything).
    url = f"http://{ip(mc, 'server-2', 'mesh')}:8080/"
    wait_for(
        "the client reaches the server", lambda: ok_count(mc.request("client", "mesh", url, timeout=2)) == 1
    )
    before = [(p.namespace, p.name) for p in mc.store.list("AuthorizationPolicy")]
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(TYPO_POLICY)
    done = run_ambientctl(mc.state_dir, "apply", "-f", str(manifest), check=False)
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "spec.selectr" in done.stdout + done.stderr, (done.stdout, done.stderr)
    assert mc.store.get(ResourceRef("AuthorizationPolicy", "mesh", "typo")) is None
    assert [(p.namespace, p.name) for p in mc.store.list("AuthorizationPolicy")] == before
    assert ok_count(mc.request("client", "mesh", url, count=3)) == 3


@pytest.mark.parametrize(
    ("caller", "target"),
    [("client", "server-2"), ("server-1", "server-1")],
    ids=["a pod dialling another pod's 15008 is refused", "a pod dialling its own 15008 is refused"],
)
def test_self_calls_to_15008_are_refused(mc: MeshCluster, caller: str, target: str) -> None:
    outcome = mc.dial(caller, "mesh", ip(mc, target, "mesh"), 15008)
    assert not outcome.startswith("answered: b'HTTP"), outcome
    assert outcome.startswith(("refused:", "closed:", "answered: b'\\x15")), outcome  # \x15: a TLS alert


def test_enabling_a_namespace_captures_running_pods_without_restart_and_disabling_releases_them(
    mc: MeshCluster,
) -> None:
    pods = [("late-server", "late"), ("late-client", "late")]
    mc.apply(
        namespace("late"),
        echo_pod("late-server", "late", "node-2"),
        sleeper_pod("late-client", "late", "node-1"),
    )
    mc.wait_running(pods)
    pids = [mc.pid(n, ns) for n, ns in pods]
    url = f"http://{ip(mc, 'late-server', 'late')}:8080/"
    node_1 = mc.node_netns("node-1")

    server_ip = ip(mc, "late-server", "late")

    def ports_seen() -> tuple[int, ...]:
        summary, result = mc.capture(node_1, lambda: mc.request("late-client", "late", url))
        assert ok_count(result) == 1, result
        # Only flows to late-server: other tests' pooled HBONE connections may send keepalives meanwhile.
        return tuple(sorted({f.server_port for f in summary.flows if f.server.split(":")[0] == server_ip}))

    assert ports_seen() == (8080,)
    mc.set_namespace_labels("late", AMBIENT)
    mc.wait_redirection(pods, "enabled")
    assert wait_for("traffic through HBONE", lambda: ports_seen() == (15008,))
    assert [mc.pid(n, ns) for n, ns in pods] == pids  # captured live: no restart

    mc.set_namespace_labels("late", {}, ["istio.io/dataplane-mode"])
    mc.wait_redirection(pods, None)
    assert wait_for("traffic back to plaintext", lambda: ports_seen() == (8080,))
    assert [mc.pid(n, ns) for n, ns in pods] == pids
    mc.store.delete([ResourceRef("Pod", "late", n) for n, _ in pods])


def test_a_pod_whose_cni_add_fails_is_retried_alone(mc: MeshCluster) -> None:
    assert mc.cluster.stop_component(agent_name("node-2"))  # enrolled pods on node-2 cannot be captured now
    try:
        mc.apply(
            echo_pod("retry-me", "mesh", "node-2", {"app": "retry"}),
            echo_pod("bystander", "plain", "node-2"),
        )
        mc.wait_running([("bystander", "plain")])  # not enrolled: its CNI ADD passes, it runs

        def refused() -> str | None:
            pod = mc.pod("retry-me", "mesh")
            ready = [c for c in pod.status.get("conditions", []) if c.get("type") == "Ready"] if pod else []
            return ready[0].get("message") if ready and pod.status.get("phase") == "Pending" else None

        reason = wait_for("retry-me pending with the CNI error", refused)
        assert "ambient-cni ADD" in reason
        record = mc.cluster.find_pod("retry-me", "mesh")
        assert record is None or record.process is None  # never started uncaptured
    finally:
        mc.mesh.start()  # starts the node agent again (everything else is running: left alone)
    mc.wait_running([("retry-me", "mesh")], timeout=60)
    mc.wait_redirection([("retry-me", "mesh")], "enabled")
    # Captured now; the ztunnels converge on the new pod through xDS (and a ZDS reconnect) within the deadline.
    url = f"http://{ip(mc, 'retry-me', 'mesh')}:8080/"
    wait_for("request to the retried pod succeeds", lambda: ok_count(mc.request("client", "mesh", url, timeout=3)) == 1, timeout=60)
    mc.store.delete([ResourceRef("Pod", "mesh", "retry-me"), ResourceRef("Pod", "plain", "bystander")])


def test_a_killed_ztunnel_restarted_recaptures_its_pods_and_new_connections_work(mc: MeshCluster) -> None:
    record = mc.cluster.find_component(ztunnel_name("node-2"))
    assert record is not None
    pids = [mc.pid(n, ns) for n, ns in MESH_PODS]
    url = f"http://{ip(mc, 'server-2', 'mesh')}:8080/"
    os.kill(record.pid, signal.SIGKILL)
    wait_for("ztunnel gone", lambda: mc.cluster.find_component(ztunnel_name("node-2")) is None)
    # Fail closed: with no ztunnel in node-2, server-2 is unreachable, never reached in plaintext.
    assert ok_count(mc.request("client", "mesh", url, timeout=2)) == 0

    mc.mesh.start_ztunnel("node-2")  # ready only once the node agent's snapshot handed its pods over
    wait_for("server-2 reachable again", lambda: ok_count(mc.request("client", "mesh", url, timeout=2)) == 1)
    summary, result = mc.capture(mc.node_netns("node-1"), lambda: mc.request("client", "mesh", url))
    assert ok_count(result) == 1 and summary.all_tls_on(15008)
    assert [mc.pid(n, ns) for n, ns in MESH_PODS] == pids

"""The pure parts of reaching the mesh on Kubernetes: which pod serves a target, the pods/log query, the
log sources of a component, merging log texts by time, and the Kubernetes check verdicts."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambientctl.troubleshoot.checks import (
    Category,
    kube_install_check,
    kube_root_check,
    pod_ready,
    root_from_dumps,
    skipped,
)
from ambientctl.troubleshoot.reach import ReachError, Target
from ambientctl.troubleshoot.remote import (
    LogSource,
    component_sources,
    default_container,
    log_query,
    merge_logs,
    parse_remote_target,
    pick_istiod_pod,
    pick_waypoint_pod,
)


def pod(name: str, labels: dict[str, str], *, ns: str = "istio-system", node: str = "n1", phase: str = "Running",
        containers: tuple[str, ...] = ("main",), annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations or {}},
            "spec": {"nodeName": node, "containers": [{"name": c} for c in containers]},
            "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("istiod", Target("istiod")), ("node/n1", Target("node", node="n1")),
     ("pod/shop/web-0", Target("pod", namespace="shop", name="web-0")),
     ("waypoint/shop/waypoint", Target("waypoint", namespace="shop", name="waypoint"))],
    ids=["istiod", "a node is its ztunnel", "a pod by name", "a waypoint by its gateway name"],
)
def test_targets_on_kubernetes_parse(text: str, expected: Target) -> None:
    assert parse_remote_target(text) == expected


@given(st.text(max_size=40))
def test_any_text_is_a_target_or_a_reach_error_naming_the_forms(text: str) -> None:
    try:
        parse_remote_target(text)
    except ReachError as e:
        assert "waypoint/<namespace>/<gateway>" in str(e)


def test_a_running_istiod_is_chosen_before_a_pending_one() -> None:
    pods = [pod("istiod-a", {"app": "istiod"}, phase="Pending"), pod("istiod-b", {"app": "istiod"}),
            pod("ztunnel-x", {"app": "ztunnel"})]
    assert pick_istiod_pod(pods) == ("istio-system", "istiod-b")
    with pytest.raises(ReachError, match="no istiod pod"):
        pick_istiod_pod(pods[2:])


def test_a_waypoint_pod_is_found_by_its_gateway_label_and_a_missing_one_names_the_others() -> None:
    label = "gateway.networking.k8s.io/gateway-name"
    pods = [pod("wp-1", {label: "waypoint"}, ns="shop"), pod("other-1", {label: "other"}, ns="shop")]
    assert pick_waypoint_pod(pods, "shop", "waypoint") == ("shop", "wp-1")
    with pytest.raises(ReachError, match="waypoints with pods in shop: other, waypoint"):
        pick_waypoint_pod(pods, "shop", "missing")


@pytest.mark.parametrize(
    ("given_pod", "expected"),
    [(pod("p", {}, containers=("a", "b")), "a"),
     (pod("p", {}, containers=("a", "b"), annotations={"kubectl.kubernetes.io/default-container": "b"}), "b"),
     (pod("p", {}, containers=()), None)],
    ids=["the first container", "the default-container annotation wins", "no container: none named"],
)
def test_the_container_chosen_is_kubectls(given_pod: dict[str, Any], expected: str | None) -> None:
    assert default_container(given_pod) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [((None, None, None, False), []),
     (("c", 600, 10, True), [("container", "c"), ("sinceSeconds", "600"), ("tailLines", "10"), ("follow", "true")]),
     ((None, 0, 0, False), [("sinceSeconds", "1"), ("tailLines", "0")])],
    ids=["nothing set sends nothing", "every parameter set", "sinceSeconds is at least 1 as the API requires"],
)
def test_the_pods_log_query_has_only_what_is_set(args: tuple[Any, ...], expected: list[tuple[str, str]]) -> None:
    assert log_query(*args) == expected


SYSTEM = [pod("ztunnel-a", {"app": "ztunnel"}, node="n1", containers=("istio-proxy",)),
          pod("ztunnel-b", {"app": "ztunnel"}, node="n2", containers=("istio-proxy",)),
          pod("cni-a", {"app": "istio-cni"}, node="n1", containers=("install-cni",)),
          pod("istiod-a", {"app": "istiod"}), pod("istiod-b", {"app": "istiod"})]


@pytest.mark.parametrize(
    ("component", "node", "labels"),
    [("ztunnel", None, ["ztunnel-n1", "ztunnel-n2"]), ("ztunnel", "n2", ["ztunnel-n2"]),
     ("node-agent", None, ["node-agent-n1"]), ("istiod", None, ["istiod istiod-a", "istiod istiod-b"])],
    ids=["a ztunnel per node", "one node's ztunnel", "the node agents", "istiod replicas named when several"],
)
def test_component_sources_are_labelled_as_local_log_files(component: str, node: str | None, labels: list[str]) -> None:
    assert [s.label for s in component_sources(component, SYSTEM, [], node=node)] == labels


@pytest.mark.parametrize(
    ("component", "node", "message"),
    [("ztunnel", "n9", "on node 'n9' (it runs on: n1, n2)"), ("proxy", None, "unknown component 'proxy'"),
     ("istiod", None, "no istiod pod")],
    ids=["a node without one names the nodes", "an unknown component", "no istiod pod"],
)
def test_component_sources_that_match_nothing_say_so(component: str, node: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        component_sources(component, SYSTEM if component != "istiod" else SYSTEM[:3], [], node=node)


def test_logs_merge_by_time_and_a_line_without_time_follows_its_predecessor() -> None:
    a, b = LogSource("ztunnel-n1", "istio-system", "ztunnel-a"), LogSource("ztunnel-n2", "istio-system", "ztunnel-b")
    texts = [(a, "2026-01-01T00:00:01Z [info     ] one\n  continued\n2026-01-01T00:00:03Z [info     ] three\n"),
             (b, "2026-01-01T00:00:02Z [info     ] two\n")]
    merged = merge_logs(texts, lambda r: True)
    assert [(r.source, r.raw.split()[-1]) for r in merged] == [
        ("ztunnel-n1", "one"), ("ztunnel-n1", "continued"), ("ztunnel-n2", "two"), ("ztunnel-n1", "three")]


@pytest.mark.parametrize(
    ("status", "expected"),
    [({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}, None),
     ({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}, "phase Running, not Ready"),
     ({"phase": "Pending", "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
      "phase Pending (c: CrashLoopBackOff)"),
     ({}, "phase Unknown")],
    ids=["running and ready", "running but not ready", "a waiting container's reason is shown", "no status"],
)
def test_pod_readiness_is_read_from_its_status(status: dict[str, Any], expected: str | None) -> None:
    assert pod_ready({"status": status}) == expected


def test_the_install_check_names_what_is_missing() -> None:
    missing = kube_install_check([], [pod("z", {"app": "ztunnel"})])
    assert not missing.ok and "no istiod (app=istiod) pod" in missing.detail and "ambientctl install" in missing.remediation
    assert kube_install_check([pod("i", {})], [pod("z", {})]).ok


def test_the_root_is_read_from_a_ztunnels_certificates_or_warned_about() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert root_from_dumps({"n1": "unreachable", "n2": {"certificates": [{"rootCerts": [
        {"pem": base64.b64encode(b"PEM").decode()}]}]}}) == b"PEM"
    none = kube_root_check({"n1": {"certificates": []}}, now)
    assert none.ok and none.warning and "istio-ca-root-cert" in none.remediation
    unreadable = kube_root_check({"n1": {"certificates": [{"rootCerts": [{"pem": base64.b64encode(b"x").decode()}]}]}}, now)
    assert not unreadable.ok and "cannot be read" in unreadable.detail


def test_a_skipped_check_is_no_failure_and_says_skipped_in_json() -> None:
    result = skipped(Category.host, "running as root", "not here")
    assert result.ok and result.to_json()["result"] == "skipped"

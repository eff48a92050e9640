"""``ambientctl describe``: which policies apply to a pod (istiod's scope rules), its waypoint by the
labels, endpoints of a Service, and the kubectl layout of the text; pure functions and the command."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.commands.describe import (
    MeshView,
    ProcessView,
    Writer,
    _events,
    describe_pod,
    describe_policy,
    describe_service,
    policy_applies,
    policy_via_waypoint,
    service_endpoints,
    waypoint_for_pod,
)
from meshcore.store import OwnerReference, Resource

REPO = Path(__file__).resolve().parents[3]
MESH = REPO / "examples" / "mesh.yaml"


def pod(
    name: str = "web", namespace: str = "shop", labels: dict[str, str] | None = None, **spec: Any
) -> Resource:
    return Resource(
        kind="Pod",
        name=name,
        namespace=namespace,
        labels=labels if labels is not None else {"app": "web"},
        spec={"serviceAccountName": "web", "nodeName": "node-1", **spec},
    )


def policy(namespace: str = "shop", name: str = "p", **spec: Any) -> Resource:
    return Resource(kind="AuthorizationPolicy", name=name, namespace=namespace, spec=spec)


@pytest.mark.parametrize(
    ("policy_", "applies"),
    [
        (policy(), "namespace-wide"),
        (policy("other"), None),
        (policy("istio-system"), "mesh-wide (root namespace)"),
        (policy(selector={"matchLabels": {"app": "web"}}), "selector app=web"),
        (policy(selector={"matchLabels": {"app": "db"}}), None),
        (policy(selector={}), "namespace-wide (empty selector)"),
        (policy("istio-system", selector={"matchLabels": {"app": "web"}}), "selector app=web"),
        (policy("istio-system", selector={"matchLabels": {"app": "db"}}), None),
        (
            policy(selector={"matchLabels": {"app": 3}}),
            "namespace-wide (its selector is unreadable, so istiod widens it)",
        ),
        (policy(targetRefs=[{"kind": "Gateway", "name": "wp"}]), None),
    ],
    ids=[
        "a policy without selector covers its namespace",
        "a policy of another namespace does not apply",
        "a policy in the root namespace covers the mesh",
        "a matching selector applies",
        "a selector that does not match does not apply",
        "an empty selector selects every pod of the namespace",
        "a root-namespace selector matches pods in any namespace",
        "a root-namespace selector that does not match does not apply",
        "an unreadable selector is widened to the namespace, as istiod does",
        "a targetRefs policy is a waypoint's, not ztunnel's",
    ],
)
def test_which_policies_ztunnel_enforces_at_a_pod(policy_: Resource, applies: str | None) -> None:
    assert policy_applies(policy_, pod()) == applies


def test_targetrefs_reach_a_pod_through_its_waypoint_or_a_service_selecting_it() -> None:
    svc = Resource(kind="Service", name="web", namespace="shop", spec={"selector": {"app": "web"}})
    by_gateway = policy(targetRefs=[{"kind": "Gateway", "name": "wp"}])
    by_service = policy(targetRef={"kind": "Service", "name": "web"})
    assert policy_via_waypoint(by_gateway, pod(), "shop/wp", [svc]) == "targetRef Gateway/wp (its waypoint)"
    assert policy_via_waypoint(by_gateway, pod(), None, [svc]) is None
    assert (
        policy_via_waypoint(by_service, pod(), None, [svc])
        == "targetRef Service/web (at the Service's waypoint)"
    )
    assert policy_via_waypoint(by_service, pod(labels={"app": "db"}), None, [svc]) is None


def gateway(name: str, namespace: str = "shop", annotations: dict[str, str] | None = None) -> Resource:
    return Resource(
        kind="Gateway",
        name=name,
        namespace=namespace,
        annotations=annotations or {},
        spec={"gatewayClassName": "istio-waypoint"},
    )


@pytest.mark.parametrize(
    ("pod_labels", "ns_labels", "gateways", "expected"),
    [
        ({}, {}, [], None),
        ({}, {"istio.io/use-waypoint": "wp"}, [gateway("wp")], "shop/wp"),
        (
            {"istio.io/use-waypoint": "mine"},
            {"istio.io/use-waypoint": "wp"},
            [gateway("wp"), gateway("mine")],
            "shop/mine",
        ),
        ({"istio.io/use-waypoint": "none"}, {"istio.io/use-waypoint": "wp"}, [gateway("wp")], None),
        (
            {},
            {"istio.io/use-waypoint": "wp"},
            [gateway("wp"), gateway("sa-wp", annotations={"istio.io/for-service-account": "web"})],
            "shop/sa-wp",
        ),
        ({}, {"istio.io/use-waypoint": "ghost"}, [], None),
        (
            {"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "infra"},
            {},
            [gateway("wp", "infra")],
            "infra/wp",
        ),
    ],
    ids=[
        "no label binds no waypoint",
        "the namespace's label binds its waypoint",
        "the pod's label wins over the namespace's",
        "the pod's none opts out",
        "a per-service-account waypoint comes before the namespace's label",
        "a label naming no waypoint binds none",
        "a waypoint in another namespace by use-waypoint-namespace",
    ],
)
def test_waypoint_binding_by_labels(
    pod_labels: dict[str, str], ns_labels: dict[str, str], gateways: list[Resource], expected: str | None
) -> None:
    assert waypoint_for_pod(pod(labels=pod_labels), ns_labels, gateways)[0] == expected


def test_the_waypoint_line_says_which_traffic_the_waypoint_takes() -> None:
    by_namespace = waypoint_for_pod(pod(), {"istio.io/use-waypoint": "wp"}, [gateway("wp")])
    assert by_namespace == (
        "shop/wp",
        "the namespace's istio.io/use-waypoint label; istio.io/waypoint-for=service",
    )
    per_account = gateway("sa-wp", annotations={"istio.io/for-service-account": "web"})
    assert waypoint_for_pod(pod(), {}, [per_account])[1].endswith("istio.io/waypoint-for=all")


def test_describe_pod_shows_kubernetes_fields_and_the_mesh_view() -> None:
    running = Resource(
        kind="Pod",
        name="web",
        namespace="shop",
        labels={"app": "web"},
        annotations={"ambient.istio.io/redirection": "enabled"},
        spec={
            "serviceAccountName": "web",
            "nodeName": "node-1",
            "containers": [
                {"name": "web", "command": ["python", "-m", "http.server"], "ports": [{"containerPort": 80}]}
            ],
        },
        status={
            "phase": "Running",
            "podIP": "10.244.1.5",
            "hostIP": "10.0.0.2",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "web",
                    "ready": True,
                    "restartCount": 2,
                    "state": {"running": {"startedAt": "2026-12-07T15:00:00Z"}},
                    "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}},
                }
            ],
        },
    )
    ns = Resource(kind="Namespace", name="shop", labels={"istio.io/dataplane-mode": "ambient"})
    deny = policy(name="deny-db", action="DENY", rules=[{}])
    allow = Resource(
        kind="AuthorizationPolicy",
        name="allow-web",
        namespace="shop",
        spec={"selector": {"matchLabels": {"app": "web"}}},
        status={"conditions": [{"type": "ZtunnelAccepted", "status": "True", "reason": "Accepted"}]},
    )
    elsewhere = policy("other", name="not-mine")
    mesh = MeshView(
        cluster_up=True,
        node_processes={
            "node-1": (ProcessView("ztunnel-node-1", 42, True), ProcessView("node-agent-node-1", 43, False))
        },
    )
    text = describe_pod(
        running, namespace=ns, policies=[deny, allow, elsewhere], services=[], gateways=[], mesh=mesh
    )
    lines = text.splitlines()
    assert lines[0].split() == ["Name:", "web"] and lines[1].split() == ["Namespace:", "shop"]
    assert "Node:             node-1/10.0.0.2" in lines
    # Nested keys line their values up with their block's (kubectl's tab writer).
    assert "    Last State:     Terminated" in lines and "      Exit Code:    3" in lines
    assert "    Restart Count:  2" in lines
    assert any(
        line.split() == ["Ambient:", "enrolled", "(istio.io/dataplane-mode=ambient)"] for line in lines
    )
    assert any(line.split() == ["Identity:", "spiffe://cluster.local/ns/shop/sa/web"] for line in lines)
    assert any(line.split()[:3] == ["Ztunnel:", "ztunnel-node-1", "(running,"] for line in lines)
    assert any("node-agent-node-1 (NOT running" in line for line in lines)
    assert "    DENY   shop/deny-db: namespace-wide; status -" in lines
    assert "    ALLOW  shop/allow-web: selector app=web; status Accepted" in lines
    assert "not-mine" not in text
    assert lines[-1].split() == ["Events:", "<none>"]


def test_describe_pod_of_a_stopped_cluster_and_a_pod_outside_the_mesh() -> None:
    text = describe_pod(
        pod(), namespace=None, policies=[], services=[], gateways=[], mesh=MeshView(cluster_up=False)
    )
    assert "not enrolled" in text and "the local cluster is not up" in text
    assert "<none> (every connection allowed)" in text


def ready_pod(name: str, ip: str, labels: dict[str, str], ready: bool = True) -> Resource:
    return Resource(
        kind="Pod",
        name=name,
        namespace="shop",
        labels=labels,
        spec={"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        status={"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    )


def test_service_endpoints_are_its_ready_selected_pods_with_named_ports_resolved() -> None:
    svc = Resource(
        kind="Service",
        name="web",
        namespace="shop",
        spec={
            "selector": {"app": "web"},
            "clusterIP": "10.96.0.9",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    )
    pods = [
        ready_pod("a", "10.244.1.5", {"app": "web"}),
        ready_pod("b", "10.244.1.6", {"app": "web"}, ready=False),
        ready_pod("c", "10.244.1.7", {"app": "db"}),
    ]
    assert service_endpoints(svc, pods) == ["10.244.1.5:8080"]
    text = describe_service(svc, pods)
    assert (
        "Endpoints:    10.244.1.5:8080" in text.splitlines() and "Selector:     app=web" in text.splitlines()
    )


def test_describe_policy_shows_its_spec_conditions_and_the_pods_it_selects() -> None:
    p = Resource(
        kind="AuthorizationPolicy",
        name="p",
        namespace="shop",
        spec={"selector": {"matchLabels": {"app": "web"}}, "action": "DENY"},
        status={
            "conditions": [
                {"type": "ZtunnelAccepted", "status": "False", "reason": "UnsupportedValue", "message": "L7"}
            ]
        },
    )
    text = describe_policy(p, [pod(), pod("db", labels={"app": "db"})]).splitlines()
    words = [line.split() for line in text]
    assert ["app:", "web"] in words and ["Action:", "DENY"] in words
    assert ["Accepted:", "Ztunnel:UnsupportedValue"] in words
    assert ["Reason:", "UnsupportedValue"] in words and ["Message:", "L7"] in words
    assert ["Selects", "Pods:", "shop/web"] in words


def test_describe_through_the_cli(tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["--state-dir", str(tmp_path), *args])

    assert run("apply", "-f", str(MESH)).exit_code == 0
    out = run("describe", "pod", "server", "-n", "demo")
    assert out.exit_code == 0, out.output
    assert "demo/server-allow-client: selector app=server" in out.stdout
    both = run("describe", "svc/server", "-n", "demo")
    assert both.exit_code == 0 and both.stdout.startswith("Name:         server\n")
    every = run("describe", "ap", "-n", "demo")
    assert every.stdout.count("Name:") == 2
    missing = run("describe", "pod", "ghost", "-n", "demo")
    assert missing.exit_code == 1 and 'pod "ghost" in namespace "demo" not found' in missing.stderr


def test_describe_lists_the_objects_events_oldest_first_as_kubectl_does() -> None:
    events = [
        {
            "type": "Warning",
            "reason": "BackOff",
            "message": "Back-off restarting failed container app in pod web_shop(u)",
            "count": 4,
            "firstTimestamp": "2026-12-07T14:50:00Z",
            "lastTimestamp": "2026-12-07T14:59:00Z",
            "source": {"component": "kubelet"},
        },
        {
            "type": "Normal",
            "reason": "Scheduled",
            "message": "Successfully assigned shop/web to node-1",
            "count": 1,
            "firstTimestamp": "2026-12-07T14:49:00Z",
            "lastTimestamp": "2026-12-07T14:49:00Z",
            "source": {"component": "default-scheduler"},
        },
    ]
    w = Writer()
    _events(w, events, datetime(2026, 12, 7, 15, 0, 0, tzinfo=UTC))
    assert w.text().splitlines() == [
        "Events:",
        "  Type     Reason     Age                From               Message",
        "  ----     ------     ----               ----               -------",
        "  Normal   Scheduled  11m                default-scheduler  Successfully assigned shop/web to node-1",
        "  Warning  BackOff    60s (x4 over 10m)  kubelet            Back-off restarting failed container app in "
        "pod web_shop(u)",
    ]


def test_describe_pod_names_the_controlling_owner_as_kubectl_does() -> None:
    owned = Resource(
        kind="Pod",
        name="web-5d9c7-abcde",
        namespace="shop",
        spec={"nodeName": "node-1"},
        owner_references=(OwnerReference("apps/v1", "Deployment", "web", "u-1", controller=True),),
    )
    mesh = MeshView(cluster_up=True, node_processes={})
    text = describe_pod(owned, namespace=None, policies=[], services=[], gateways=[], mesh=mesh)
    assert any(line.split() == ["Controlled", "By:", "Deployment/web"] for line in text.splitlines())
    bare = msgspec.structs.replace(owned, owner_references=(OwnerReference("v1", "ConfigMap", "c", "u-2"),))
    text = describe_pod(bare, namespace=None, policies=[], services=[], gateways=[], mesh=mesh)
    assert "Controlled By" not in text  # only a controller is named

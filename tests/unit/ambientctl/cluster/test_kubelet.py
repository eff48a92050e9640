"""The kubelet's pure parts: the Pod a kubelet reports, Pod manifests as local pods, endpoint selection."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ambientctl.cluster.errors import InvalidClusterSpec
from ambientctl.cluster.kubelet import pod_resource, pod_spec_from_resource, schedule, select_endpoints
from ambientctl.cluster.spec import ContainerSpec, PodPort, PodSpec, ServicePort
from ambientctl.cluster.state import PodRecord
from meshcore.store import build_resource, spec_as, status_as
from meshcore.store.schema import PodStatus
from meshcore.store.schema import ServiceSpec as K8sServiceSpec


def record(name: str, ns: str, node: str, ip: str, labels: dict[str, str], *ports: PodPort) -> PodRecord:
    return PodRecord(
        spec=PodSpec(name, ns, node, command=("srv",), labels=labels, ports=ports),
        ip=ip,
        netns=f"am-pod-{ns}-{name}",
        host_veth="am-v00000000",
        node_ip="172.30.0.1",
    )


def test_a_running_pod_is_reported_with_node_ip_and_ready() -> None:
    pod = record("web", "shop", "node-2", "10.244.2.5", {"app": "web"}, PodPort(port=8080, name="http"))
    resource = pod_resource(pod)
    assert (resource.kind, resource.namespace, resource.name, resource.labels) == (
        "Pod",
        "shop",
        "web",
        {"app": "web"},
    )
    assert resource.spec["nodeName"] == "node-2"
    assert resource.spec["serviceAccountName"] == "default"
    assert resource.spec["containers"][0]["command"] == ["srv"]
    assert resource.spec["containers"][0]["ports"] == [
        {"containerPort": 8080, "protocol": "TCP", "name": "http"}
    ]
    status = status_as(resource, PodStatus)
    assert (status.phase, status.pod_ip, status.host_ip, status.ready) == (
        "Running",
        "10.244.2.5",
        "172.30.0.1",
        True,
    )


def manifest(spec: dict[str, Any], labels: dict[str, str] | None = None) -> Any:
    return build_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "labels": labels or {}},
            "spec": spec,
        }
    )


def test_a_pod_manifest_runs_its_first_containers_command_and_args() -> None:
    pod = pod_spec_from_resource(
        manifest(
            {
                "nodeName": "node-2",
                "serviceAccountName": "web-sa",
                "containers": [
                    {
                        "name": "c",
                        "command": ["python3", "-m"],
                        "args": ["http.server", "8080"],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                    }
                ],
            },
            {"app": "web"},
        ),
        default_node="node-1",
    )
    assert pod == PodSpec(
        "web",
        "shop",
        "node-2",
        command=("python3", "-m", "http.server", "8080"),
        labels={"app": "web"},
        service_account="web-sa",
        ports=(PodPort(port=8080, name="http"),),
        containers=(ContainerSpec(name="c", command=("python3", "-m", "http.server", "8080")),),
    )


def test_a_pod_manifest_without_node_goes_to_the_default_node() -> None:
    pod = pod_spec_from_resource(manifest({"containers": [{"name": "c"}]}), default_node="node-1")
    assert (pod.node, pod.command, pod.service_account) == ("node-1", (), "default")


def test_a_host_network_pod_is_refused() -> None:
    with pytest.raises(InvalidClusterSpec, match="hostNetwork"):
        pod_spec_from_resource(manifest({"hostNetwork": True}), default_node="node-1")


PODS = [
    record("a", "shop", "node-1", "10.244.1.2", {"app": "web"}, PodPort(port=8080, name="http")),
    record("b", "shop", "node-2", "10.244.2.2", {"app": "web", "v": "2"}, PodPort(port=8080, name="http")),
    record("c", "shop", "node-2", "10.244.2.3", {"app": "db"}),
    record("d", "other", "node-1", "10.244.1.3", {"app": "web"}),
    record("e", "shop", "node-1", "10.244.1.4", {"app": "web"}, PodPort(port=9090, name="http")),
]


def spec(**fields: Any) -> K8sServiceSpec:
    return msgspec.convert(fields, K8sServiceSpec)


@pytest.mark.parametrize(
    ("service", "ports", "endpoints"),
    [
        (
            spec(selector={"app": "web"}, ports=[{"port": 80, "targetPort": 8080}]),
            [ServicePort(port=80, target_port=8080)],
            ["10.244.1.2", "10.244.1.4", "10.244.2.2"],
        ),
        (
            spec(selector={"app": "web", "v": "2"}, ports=[{"port": 80}]),
            [ServicePort(port=80, target_port=80)],
            ["10.244.2.2"],
        ),
        (spec(ports=[{"port": 80}]), [ServicePort(port=80, target_port=80)], []),
        (
            spec(selector={"app": "web"}, ports=[{"port": 80, "targetPort": "http", "name": "web"}]),
            [ServicePort(port=80, target_port=8080, name="web")],
            ["10.244.1.2", "10.244.2.2"],
        ),
        (
            spec(
                selector={"app": "web"},
                ports=[{"port": 80, "targetPort": "grpc"}, {"port": 81, "targetPort": 8081}],
            ),
            [ServicePort(port=81, target_port=8081)],
            ["10.244.1.2", "10.244.1.4", "10.244.2.2"],
        ),
        (
            spec(
                selector={"app": "db"},
                ports=[{"port": 53, "protocol": "UDP"}, {"port": 99, "protocol": "SCTP"}],
            ),
            [ServicePort(port=53, target_port=53, protocol="UDP")],
            ["10.244.2.3"],
        ),
    ],
    ids=[
        "the selector picks matching pods of the service's namespace only",
        "every selector label must match and targetPort defaults to port",
        "a service without a selector gets no endpoints",
        "a named targetPort resolves and pods where it differs are left out",
        "a named port no pod has gets no rule while other ports keep working",
        "UDP ports are kept and SCTP ports are skipped",
    ],
)
def test_endpoint_selection(service: K8sServiceSpec, ports: list[ServicePort], endpoints: list[str]) -> None:
    got_ports, got_endpoints = select_endpoints("shop", service, PODS)
    assert got_ports == ports
    assert sorted(got_endpoints) == endpoints


def test_a_stored_service_spec_reads_back_as_the_typed_view_select_endpoints_takes() -> None:
    svc = build_resource(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s", "namespace": "shop"},
            "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]},
        }
    )
    assert select_endpoints("shop", spec_as(svc, K8sServiceSpec), PODS)[1] == ["10.244.2.3"]


@pytest.mark.parametrize(
    ("placed", "expected"),
    [
        ([], "node-1"),
        (["node-1"], "node-2"),
        (["node-1", "node-2"], "node-1"),
        (["node-2", "node-9"], "node-1"),
    ],
    ids=[
        "an empty cluster starts on the first node",
        "the next pod goes to the emptier node",
        "ties go to the first node",
        "pods on unknown nodes do not count",
    ],
)
def test_scheduling_picks_the_node_with_fewest_pods(placed: list[str], expected: str) -> None:
    pods = [record(f"p{i}", "shop", node, f"10.244.9.{i + 2}", {}) for i, node in enumerate(placed)]
    assert schedule(["node-1", "node-2"], pods) == expected

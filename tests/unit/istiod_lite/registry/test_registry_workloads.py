"""Pods -> Workloads: mesh membership, health, names, addresses and per-pod service ports."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.registry.errors import InvalidPod, Reason, Severity
from istiod_lite.registry.services import build_service
from istiod_lite.registry.workloads import (
    build_workload,
    canonical_service,
    in_ambient_mesh,
    pod_status,
    workload_name_and_type,
)
from meshcore.model import Port, TunnelProtocol, WorkloadStatus, WorkloadType
from meshcore.store.resource import Resource, ResourceRef

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
OPT_OUT = {"istio.io/dataplane-mode": "none"}


def pod(
    name: str = "web",
    *,
    namespace: str = "demo",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ip: str | None = "10.244.1.10",
    phase: str = "Running",
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
) -> Resource:
    st: dict[str, Any] = {"phase": phase}
    if ip is not None:
        st["podIP"] = ip
    st.update(status or {})
    return Resource(
        kind="Pod",
        name=name,
        namespace=namespace,
        labels=labels or {},
        annotations=annotations or {},
        spec={"nodeName": "node-1", "serviceAccountName": "web-sa", **(spec or {})},
        status=st,
    )


@pytest.mark.parametrize(
    ("pod_labels", "pod_annotations", "ns_labels", "host_network", "expected"),
    [
        ({}, {}, AMBIENT, False, True),
        (AMBIENT, {}, {}, False, True),
        (OPT_OUT, {}, AMBIENT, False, False),
        ({}, {}, {}, False, False),
        ({"istio.io/dataplane-mode": "sidecar"}, {}, AMBIENT, False, True),
        ({}, {"sidecar.istio.io/status": "{}"}, AMBIENT, False, False),
        (AMBIENT, {}, AMBIENT, True, False),
    ],
    ids=[
        "a pod in an ambient namespace is in the mesh",
        "a pod labelled ambient is in the mesh even if its namespace is not",
        "a pod labelled none opts out of an ambient namespace",
        "a pod with no labels anywhere is not in the mesh",
        "an unknown pod mode falls back to the namespace label",
        "a pod with a sidecar is never captured",
        "a host-network pod is never captured",
    ],
)
def test_mesh_membership(
    pod_labels: dict[str, str],
    pod_annotations: dict[str, str],
    ns_labels: dict[str, str],
    host_network: bool,
    expected: bool,
) -> None:
    assert in_ambient_mesh(pod_labels, pod_annotations, ns_labels, host_network=host_network) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"phase": "Running"}, WorkloadStatus.HEALTHY),
        ({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}, WorkloadStatus.HEALTHY),
        (
            {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]},
            WorkloadStatus.UNHEALTHY,
        ),
        (
            {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]},
            WorkloadStatus.UNHEALTHY,
        ),
        ({"phase": "Pending", "conditions": [{"type": "Ready", "status": "True"}]}, WorkloadStatus.UNHEALTHY),
        ({}, WorkloadStatus.UNHEALTHY),
    ],
    ids=[
        "a running pod that reports no conditions is healthy",
        "a running pod that is ready is healthy",
        "a running pod that is not ready is unhealthy",
        "a running pod whose conditions lack Ready is unhealthy",
        "a pending pod is unhealthy",
        "a pod with no phase is unhealthy",
    ],
)
def test_pod_status(status: dict[str, Any], expected: WorkloadStatus) -> None:
    assert pod_status(status) == expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"service.istio.io/canonical-name": "cn", "app": "a", "version": "v2"}, ("cn", "v2")),
        ({"app.kubernetes.io/name": "k8s", "app": "a", "app.kubernetes.io/version": "1.0"}, ("k8s", "1.0")),
        ({"app": "a", "service.istio.io/canonical-revision": "canary", "version": "v1"}, ("a", "canary")),
        ({}, ("web-deploy", "latest")),
    ],
    ids=[
        "the canonical-name label wins and version gives the revision",
        "app.kubernetes.io labels come before app and version",
        "the canonical-revision label wins over version",
        "without labels the workload name and latest are used",
    ],
)
def test_canonical_service(labels: dict[str, str], expected: tuple[str, str]) -> None:
    assert canonical_service(labels, "web-deploy") == expected


@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        ("web-7d4b9c-x2k9p", {"pod-template-hash": "7d4b9c"}, ("web", WorkloadType.DEPLOYMENT)),
        ("my-api-v2-5f6d7-abcde", {"pod-template-hash": "5f6d7"}, ("my-api-v2", WorkloadType.DEPLOYMENT)),
        ("odd-name", {"pod-template-hash": "5f6d7"}, ("odd-name", WorkloadType.POD)),
        ("migrate-x7z", {"job-name": "migrate"}, ("migrate", WorkloadType.JOB)),
        (
            "backup-28345670-x7z",
            {"batch.kubernetes.io/job-name": "backup-28345670"},
            ("backup", WorkloadType.CRONJOB),
        ),
        ("standalone", {}, ("standalone", WorkloadType.POD)),
    ],
    ids=[
        "a deployment pod is named after its deployment",
        "a deployment name with dashes is kept whole",
        "a template hash not in the pod name falls back to the pod",
        "a job pod is named after its job",
        "a job named with a schedule timestamp belongs to a cronjob",
        "a bare pod is its own workload",
    ],
)
def test_workload_name_and_type(
    name: str, labels: dict[str, str], expected: tuple[str, WorkloadType]
) -> None:
    assert workload_name_and_type(name, labels) == expected


def test_a_mesh_pod_becomes_a_complete_workload() -> None:
    p = pod(
        labels={"app": "web", "version": "v1"}, status={"conditions": [{"type": "Ready", "status": "True"}]}
    )
    workload, problems = build_workload(
        p,
        namespace_labels=AMBIENT,
        policy_keys=["demo/a", "istio-system/b"],
        trust_domain="example.org",
        cluster_id="c1",
        network="net1",
    )
    assert problems == []
    assert workload is not None
    assert workload.uid == "c1//Pod/demo/web"
    assert (workload.name, workload.namespace, workload.node) == ("web", "demo", "node-1")
    assert workload.addresses == ("10.244.1.10",)
    assert workload.service_account == "web-sa"
    assert (workload.trust_domain, workload.cluster_id, workload.network) == ("example.org", "c1", "net1")
    assert workload.tunnel_protocol == TunnelProtocol.HBONE
    assert not workload.native_tunnel
    assert (workload.canonical_name, workload.canonical_revision) == ("web", "v1")
    assert (workload.workload_name, workload.workload_type) == ("web", WorkloadType.POD)
    assert workload.status == WorkloadStatus.HEALTHY
    assert workload.authorization_policies == ("demo/a", "istio-system/b")
    assert str(workload.identity) == "spiffe://example.org/ns/demo/sa/web-sa"


@pytest.mark.parametrize(
    ("resource", "ns_labels", "expected"),
    [
        (pod(), {}, TunnelProtocol.NONE),
        (pod(labels=OPT_OUT), AMBIENT, TunnelProtocol.NONE),
        (pod(labels={"networking.istio.io/tunnel": "http", **OPT_OUT}), {}, TunnelProtocol.HBONE),
    ],
    ids=[
        "a pod outside the mesh is still a workload, reached in plaintext",
        "an opted-out pod in an ambient namespace is reached in plaintext",
        "a pod that terminates HBONE itself (a waypoint) is reached over HBONE",
    ],
)
def test_tunnel_protocol(resource: Resource, ns_labels: dict[str, str], expected: TunnelProtocol) -> None:
    workload, _ = build_workload(resource, namespace_labels=ns_labels)
    assert workload is not None
    assert workload.tunnel_protocol == expected
    assert workload.native_tunnel is (resource.labels.get("networking.istio.io/tunnel") == "http")


@pytest.mark.parametrize(
    "resource",
    [
        pod(ip=None),
        pod(phase="Succeeded"),
        pod(phase="Failed"),
        pod(spec={"hostNetwork": True}),
    ],
    ids=[
        "a pod without an IP has no workload yet",
        "a completed pod has no workload",
        "a failed pod has no workload",
        "a host-network pod has no workload (its IP is the node's)",
    ],
)
def test_pods_without_workload(resource: Resource) -> None:
    assert build_workload(resource, namespace_labels=AMBIENT) == (None, [])


def test_a_pending_pod_with_an_ip_is_an_unhealthy_workload() -> None:
    workload, _ = build_workload(pod(phase="Pending"), namespace_labels=AMBIENT)
    assert workload is not None
    assert workload.status == WorkloadStatus.UNHEALTHY


def test_dual_stack_pod_lists_every_ip_once_primary_first() -> None:
    p = pod(ip="10.0.0.5", status={"podIPs": [{"ip": "10.0.0.5"}, {"ip": "FD00::0005"}]})
    workload, _ = build_workload(p, namespace_labels={})
    assert workload is not None
    assert workload.addresses == ("10.0.0.5", "fd00::5")


def test_the_default_service_account_is_used_when_none_is_named() -> None:
    p = Resource(
        kind="Pod", name="p", namespace="demo", spec={}, status={"phase": "Running", "podIP": "10.0.0.1"}
    )
    workload, _ = build_workload(p, namespace_labels={})
    assert workload is not None
    assert workload.service_account == "default"


@pytest.mark.parametrize(
    ("resource", "fragment"),
    [
        (pod(ip="10.0.0.300"), "status.podIP '10.0.0.300' is not an IP address"),
        (pod(spec={"serviceAccountName": "Bad_SA"}), "cannot form the pod's identity"),
    ],
    ids=["an unparsable pod IP is refused", "a service account that cannot be an identity is refused"],
)
def test_unusable_pods_raise(resource: Resource, fragment: str) -> None:
    with pytest.raises(InvalidPod, match=fragment) as info:
        build_workload(resource, namespace_labels={})
    assert info.value.ref == resource.ref


def _svc(ports: list[dict[str, Any]]) -> Any:
    return build_service(
        Resource(
            kind="Service", name="web", namespace="demo", spec={"selector": {"app": "web"}, "ports": ports}
        )
    )


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([{"port": 80, "targetPort": 8080}], (Port(80, 8080),)),
        ([{"port": 80}], (Port(80, 80),)),
        ([{"port": 80, "targetPort": "http"}], (Port(80, 8080),)),
        ([{"port": 80, "targetPort": "http"}, {"port": 9090, "targetPort": "metrics"}], (Port(80, 8080),)),
    ],
    ids=[
        "a numeric targetPort is used as is",
        "a missing targetPort means the service port",
        "a named targetPort is looked up in the pod's container ports",
        "a named targetPort the pod lacks leaves that port out for this pod",
    ],
)
def test_service_ports_resolved_per_pod(ports: list[dict[str, Any]], expected: tuple[Port, ...]) -> None:
    p = pod(spec={"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]})
    workload, _ = build_workload(p, namespace_labels={}, services=[_svc(ports)])
    assert workload is not None
    assert workload.services == {"demo/web.demo.svc.cluster.local": expected}


def test_an_unresolvable_named_port_is_reported_on_the_service() -> None:
    workload, problems = build_workload(
        pod(), namespace_labels={}, services=[_svc([{"port": 9090, "targetPort": "metrics"}])]
    )
    assert workload is not None
    assert workload.services == {"demo/web.demo.svc.cluster.local": ()}
    assert [(p.ref, p.severity, p.reason) for p in problems] == [
        (ResourceRef("Service", "demo", "web"), Severity.WARNING, Reason.UNRESOLVED_TARGET_PORT)
    ]
    assert "'metrics'" in problems[0].message and "demo/web" in problems[0].message

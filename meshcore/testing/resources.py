"""Builders of Kubernetes-shaped store resources (Namespace, Pod, Service, AuthorizationPolicy, waypoint
Gateway) for tests.

Defaults describe a running, ready-to-mesh pod in namespace ``demo`` on ``node-1``; tests state only what
matters to them. Values are plain ``meshcore.store.resource.Resource`` objects, as the store returns them.
"""

from __future__ import annotations

from typing import Any

from meshcore.store.resource import Resource

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def ns(name: str, **labels: str) -> Resource:
    return Resource(kind="Namespace", name=name, labels=labels)


def pod(
    name: str,
    namespace: str = "demo",
    *,
    labels: dict[str, str] | None = None,
    node: str = "node-1",
    sa: str | None = None,
    ip: str | None = "10.244.0.1",
    phase: str = "Running",
    named_ports: dict[str, int] | None = None,
    uid: str = "",
) -> Resource:
    """A pod; ``sa`` defaults to the pod's name, ``named_ports`` become its container's named ports."""
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip  # duplicates across pods do not matter to the registry
    containers = [
        {"name": "app", "ports": [{"name": k, "containerPort": v} for k, v in (named_ports or {}).items()]}
    ]
    return Resource(
        kind="Pod",
        name=name,
        namespace=namespace,
        uid=uid,
        labels=labels or {},
        spec={"nodeName": node, "serviceAccountName": sa or name, "containers": containers},
        status=status,
    )


def svc(name: str, namespace: str = "demo", *, selector: dict[str, str] | None, **spec: Any) -> Resource:
    """A service on port 80 -> 8080 unless ``spec`` says otherwise."""
    return Resource(
        kind="Service",
        name=name,
        namespace=namespace,
        spec={"selector": selector, "ports": [{"port": 80, "targetPort": 8080}], **spec},
    )


def authz(name: str, namespace: str = "demo", **spec: Any) -> Resource:
    return Resource(kind="AuthorizationPolicy", name=name, namespace=namespace, spec=spec)


def pod_uid(namespace: str, name: str, cluster_id: str = "Kubernetes") -> str:
    """The workload uid istiod_lite gives a pod (its xDS resource name)."""
    return f"{cluster_id}//Pod/{namespace}/{name}"


MESH_LISTENER: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}


def waypoint(
    name: str = "waypoint",
    namespace: str = "demo",
    *,
    address: str | None = "10.96.100.1",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    listeners: list[dict[str, Any]] | None = None,
    uid: str = "",
) -> Resource:
    """A waypoint Gateway (class ``istio-waypoint``, the HBONE listener); ``address`` goes in
    ``status.addresses`` as an IPAddress (None: not programmed yet)."""
    status: dict[str, Any] = {}
    if address is not None:
        status["addresses"] = [{"type": "IPAddress", "value": address}]
    return Resource(
        kind="Gateway",
        name=name,
        namespace=namespace,
        api_version="gateway.networking.k8s.io/v1",
        uid=uid,
        labels=labels or {},
        annotations=annotations or {},
        spec={"gatewayClassName": "istio-waypoint", "listeners": [MESH_LISTENER] if listeners is None else listeners},
        status=status,
    )

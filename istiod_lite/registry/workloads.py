"""Kubernetes Pods -> Istio ``Workload`` values (pure).

A pod becomes a Workload once it has an IP and is Running or Pending (a Pending pod with an IP is
initialising; it is sent as UNHEALTHY), as Istio does. Succeeded/Failed pods and ``hostNetwork`` pods
get none: a host-network pod's IP is its node's, shared with every other host-network pod there, so it
cannot name one workload. Pods *outside* the mesh are still Workloads (tunnel NONE) so ztunnel knows
them as plaintext destinations and as sources.

Mesh membership (tunnel HBONE) is decided by labels, by the rule the node agent shares
(``meshcore.enrollment``): the pod's ``istio.io/dataplane-mode`` wins (``ambient`` in, ``none`` out), else
its namespace's ``istio.io/dataplane-mode=ambient``. Pods with a sidecar (``sidecar.istio.io/status``
annotation) are never captured. A pod labelled ``networking.istio.io/tunnel=http`` (a waypoint) speaks
HBONE itself: HBONE with ``native_tunnel``.
Istio instead waits for istio-cni's ``ambient.istio.io/redirection`` annotation; deciding on the label
means peers switch to HBONE as soon as a pod is enrolled, so a capture gap fails closed, never plaintext.

Names: ``workload_name`` is the owning Deployment (derived from the ``pod-template-hash`` label and the
pod name, since the store keeps no ownerReferences), else the Job/CronJob from ``job-name``, else the pod
name; ``canonical_name``/``canonical_revision`` follow Istio's label order, falling back to
``workload_name`` and ``latest``. ``waypoint`` is decided by the caller (``registry.waypoints.bind_workload``)
and passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from istiod_lite.registry.errors import InvalidPod, Problem, Reason, Severity
from istiod_lite.registry.services import ServiceInfo, canonical_ip
from meshcore.enrollment import in_ambient_mesh  # shared with the node agent, which must agree
from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.model import GatewayAddress, Port, TunnelProtocol, Workload, WorkloadStatus, WorkloadType
from meshcore.store.resource import Resource, ResourceRef

TUNNEL_LABEL = "networking.istio.io/tunnel"  # "http": the pod terminates HBONE itself (waypoints)

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# A CronJob names its Jobs "<cronjob>-<scheduled time in minutes since the epoch>".
_CRONJOB_JOB_NAME = re.compile(r"^(.+)-\d{8,}$")

_ACTIVE_PHASES = frozenset({"Running", "Pending", ""})


def pod_uid(cluster_id: str, namespace: str, name: str) -> str:
    """The xDS resource name of a pod's Workload: ``<cluster>//Pod/<ns>/<name>``."""
    return f"{cluster_id}//Pod/{namespace}/{name}"


def canonical_service(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    """(canonical_name, canonical_revision) from Istio's label precedence."""
    name = next((labels[k] for k in _CANONICAL_NAME_LABELS if labels.get(k)), workload_name)
    revision = next((labels[k] for k in _CANONICAL_REVISION_LABELS if labels.get(k)), "latest")
    return name, revision


def workload_name_and_type(pod_name: str, labels: Mapping[str, str]) -> tuple[str, WorkloadType]:
    """The controller a pod belongs to, inferred from the labels its controller stamps on it."""
    template_hash = labels.get("pod-template-hash")
    if template_hash:
        # Deployment pods are named <deployment>-<template hash>-<random>.
        cut = pod_name.rfind(f"-{template_hash}-")
        if cut > 0:
            return pod_name[:cut], WorkloadType.DEPLOYMENT
    job = next((labels[k] for k in _JOB_NAME_LABELS if labels.get(k)), "")
    if job:
        cron = _CRONJOB_JOB_NAME.match(job)
        if cron:
            return cron.group(1), WorkloadType.CRONJOB
        return job, WorkloadType.JOB
    return pod_name, WorkloadType.POD


def pod_status(status: Mapping[str, Any]) -> WorkloadStatus:
    """HEALTHY when Running and Ready; a Running pod that reports no conditions counts as ready."""
    if status.get("phase") != "Running":
        return WorkloadStatus.UNHEALTHY
    conditions = status.get("conditions")
    if not conditions:
        return WorkloadStatus.HEALTHY
    for cond in conditions if isinstance(conditions, list) else ():
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return WorkloadStatus.HEALTHY if cond.get("status") == "True" else WorkloadStatus.UNHEALTHY
    return WorkloadStatus.UNHEALTHY


def is_active(pod: Resource) -> bool:
    """A pod that is (or may soon be) running: not Succeeded, Failed or Unknown."""
    return pod.status.get("phase", "") in _ACTIVE_PHASES


def pod_service_account(pod: Resource) -> str:
    sa = pod.spec.get("serviceAccountName") or pod.spec.get("serviceAccount") or "default"
    if not isinstance(sa, str):
        raise InvalidPod(pod.ref, f"spec.serviceAccountName must be a string, got {sa!r}")
    return sa


def pod_addresses(pod: Resource) -> tuple[str, ...]:
    """Canonical pod IPs: ``status.podIP`` first, then any other ``status.podIPs``; () if none yet."""
    raw: list[Any] = [pod.status.get("podIP")]
    pod_ips = pod.status.get("podIPs")
    if isinstance(pod_ips, list):
        raw += [entry.get("ip") if isinstance(entry, dict) else entry for entry in pod_ips]
    out: list[str] = []
    for value in raw:
        if not value:
            continue
        try:
            ip = canonical_ip(value)
        except ValueError:
            raise InvalidPod(pod.ref, f"status.podIP {value!r} is not an IP address") from None
        if ip not in out:
            out.append(ip)
    return tuple(out)


def container_ports(pod: Resource) -> dict[str, int]:
    """Named container ports (``spec.containers[].ports[].name`` -> ``containerPort``)."""
    named: dict[str, int] = {}
    containers = pod.spec.get("containers")
    for container in containers if isinstance(containers, list) else ():
        ports = container.get("ports") if isinstance(container, dict) else None
        for port in ports if isinstance(ports, list) else ():
            if isinstance(port, dict) and isinstance(port.get("name"), str):
                number = port.get("containerPort")
                if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= 65535:
                    named.setdefault(port["name"], number)
    return named


def resolve_ports(info: ServiceInfo, named: Mapping[str, int]) -> tuple[tuple[Port, ...], list[str]]:
    """This pod's ports for one Service, and the target port names it does not define.

    A port whose named targetPort the pod lacks is left out (Istio: the pod does not serve it).
    """
    ports: list[Port] = []
    missing: list[str] = []
    for spec in info.ports:
        target = spec.target_port
        if spec.target_port_name:
            resolved = named.get(spec.target_port_name)
            if resolved is None:
                missing.append(spec.target_port_name)
                continue
            target = resolved
        ports.append(Port(service_port=spec.port, target_port=target))
    return tuple(ports), missing


def build_workload(
    pod: Resource,
    *,
    namespace_labels: Mapping[str, str],
    services: Iterable[ServiceInfo] = (),
    policy_keys: Sequence[str] = (),
    trust_domain: str = "cluster.local",
    cluster_id: str = "Kubernetes",
    network: str = "",
    waypoint: GatewayAddress | None = None,
) -> tuple[Workload | None, list[Problem]]:
    """The Workload for one pod (None when it has none yet), plus problems found on the way.

    ``services`` are the Services whose selector matches the pod; ``policy_keys`` the sorted
    ``ns/name`` of the selector policies that select it; ``waypoint`` the pod's bound waypoint.
    Raises ``InvalidPod`` for unusable input.
    """
    if pod.spec.get("hostNetwork") is True or not is_active(pod):
        return None, []
    addresses = pod_addresses(pod)
    if not addresses:
        return None, []
    service_account = pod_service_account(pod)
    try:
        SpiffeId(trust_domain, pod.namespace, service_account)
    except InvalidSpiffeId as e:
        raise InvalidPod(pod.ref, f"cannot form the pod's identity: {e}") from None

    problems: list[Problem] = []
    named = container_ports(pod)
    backs: dict[str, tuple[Port, ...]] = {}
    for info in services:
        ports, missing = resolve_ports(info, named)
        backs[info.service.key] = ports
        for name in missing:
            problems.append(
                Problem(
                    ref=ResourceRef("Service", info.service.namespace, info.service.name),
                    severity=Severity.WARNING,
                    reason=Reason.UNRESOLVED_TARGET_PORT,
                    message=(
                        f"targetPort {name!r} is not a named container port of pod {pod.namespace}/{pod.name}; "
                        f"that service port is not routed to this pod. Name the container port {name!r} "
                        "or use a numeric targetPort."
                    ),
                )
            )

    native = pod.labels.get(TUNNEL_LABEL) == "http"
    captured = in_ambient_mesh(pod.labels, pod.annotations, namespace_labels)
    workload_name, workload_type = workload_name_and_type(pod.name, pod.labels)
    canonical_name, canonical_revision = canonical_service(pod.labels, workload_name)
    node = pod.spec.get("nodeName") or ""
    workload = Workload(
        uid=pod_uid(cluster_id, pod.namespace, pod.name),
        name=pod.name,
        namespace=pod.namespace,
        service_account=service_account,
        trust_domain=trust_domain,
        addresses=addresses,
        network=network,
        tunnel_protocol=TunnelProtocol.HBONE if (captured or native) else TunnelProtocol.NONE,
        waypoint=waypoint,
        native_tunnel=native,
        node=node if isinstance(node, str) else "",
        canonical_name=canonical_name,
        canonical_revision=canonical_revision,
        workload_type=workload_type,
        workload_name=workload_name,
        authorization_policies=tuple(policy_keys),
        status=pod_status(pod.status),
        cluster_id=cluster_id,
        services=backs,
    )
    return workload, problems

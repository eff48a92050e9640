"""What the waypoint controller makes for one waypoint Gateway, and the status it writes back (pure).

For a Gateway of class ``istio-waypoint`` with the HBONE listener, as Istio makes a Deployment and a
Service (here a Pod, since the store has no Deployments):

- a ServiceAccount ``<gw>`` (only when missing: one that exists is the user's and is never changed);
- a Pod ``<gw>-<5 chars>``: the 5 characters hash the pod template, so a changed template (a new
  ``waypoint_xds_address``, say) makes a new pod and the old one is deleted, as a Deployment rolls. It
  runs ``["waypoint"]`` as service account ``<gw>`` with ``XDS_ADDRESS``/``CA_ADDRESS`` in its env and
  ports 15008 ``mesh``, 15020 ``metrics``, 15021 ``status-port``; labels
  ``gateway.networking.k8s.io/gateway-name: <gw>``, ``istio.io/dataplane-mode: none`` (ztunnel never
  captures it) and ``networking.istio.io/tunnel: http`` (it terminates HBONE itself);
- a Service ``<gw>`` selecting ``gateway.networking.k8s.io/gateway-name: <gw>`` on port 15008 ``mesh``
  (``appProtocol: all``, as Istio's waypoint Service has it).

Ownership: every object made carries ``gateway.networking.k8s.io/gateway-name: <gw>`` and
``gateway.istio.io/managed: istio.io-mesh-controller`` (Istio's labels) plus the annotation
``istio.io/gateway-uid: <the Gateway's uid>``; the controller only ever changes or deletes objects with
the managed label (and a ServiceAccount only if it made it). The store models no ``ownerReferences``
(``meshcore.store.Resource`` has no such field), so the labels are the ownership record.

Status: ``status.addresses`` is ``[{type: IPAddress, value: <VIP>}]`` once the Service has a cluster IP
(the local cluster allocates it asynchronously), else ``[{type: Hostname, value: <gw>.<ns>.svc...>}]``;
conditions ``Accepted`` and ``Programmed`` with reasons a user can act on. A refused Gateway gets
``Accepted=False`` and nothing is made (what was made before is deleted).

Pure: resources in, resources and dicts out; time arrives as ``now`` (an RFC 3339 string).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from istiod_lite.registry.waypoints import (
    GATEWAY_NAME_LABEL,
    MANAGED_BY_MESH_CONTROLLER,
    MANAGED_GATEWAY_LABEL,
    MESH_LISTENER_PORT,
    WAYPOINT_CONTROLLER_NAME,
    gateway_refusal,
    mesh_listener,
)
from istiod_lite.registry.workloads import TUNNEL_LABEL
from meshcore.enrollment import DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE
from meshcore.store.resource import KINDS, Resource

GATEWAY_UID_ANNOTATION = "istio.io/gateway-uid"
WAYPOINT_COMMAND = ("waypoint",)
CONTAINER_NAME = "waypoint"
METRICS_PORT = 15020
STATUS_PORT = 15021
# Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """What the controller puts in what it makes."""

    xds_address: str = "istiod.istio-system.svc:15012"  # XDS_ADDRESS and CA_ADDRESS of waypoint pods
    ca_address: str = ""  # "" = the same as xds_address (istiod serves both)
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"


@dataclass(frozen=True, slots=True)
class Desired:
    """The objects one waypoint Gateway should have."""

    service_account: Resource
    pod: Resource
    service: Resource


def owner_labels(gateway_name: str) -> dict[str, str]:
    return {GATEWAY_NAME_LABEL: gateway_name, MANAGED_GATEWAY_LABEL: MANAGED_BY_MESH_CONTROLLER}


def is_managed(resource: Resource) -> bool:
    """Made by the waypoint controller (the only objects it changes or deletes)."""
    return resource.labels.get(MANAGED_GATEWAY_LABEL) == MANAGED_BY_MESH_CONTROLLER and bool(
        resource.labels.get(GATEWAY_NAME_LABEL)
    )


def hostname(gateway: Resource, settings: ControllerSettings) -> str:
    return f"{gateway.name}.{gateway.namespace}.svc.{settings.domain_suffix}"


def _suffix(template: Any) -> str:
    digest = hashlib.sha256(msgspec.json.encode(template, order="sorted")).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:5])


def desired(gateway: Resource, settings: ControllerSettings) -> Desired:
    """What to make for an accepted waypoint Gateway (``gateway_refusal(gateway)`` is "")."""
    name, namespace = gateway.name, gateway.namespace
    labels = owner_labels(name)
    annotations = {GATEWAY_UID_ANNOTATION: gateway.uid} if gateway.uid else {}
    env = [
        {"name": "XDS_ADDRESS", "value": settings.xds_address},
        {"name": "CA_ADDRESS", "value": settings.ca_address or settings.xds_address},
        {"name": "POD_NAMESPACE", "value": namespace},
        {"name": "SERVICE_ACCOUNT", "value": name},
        {"name": "TRUST_DOMAIN", "value": settings.trust_domain},
        {"name": "GATEWAY_NAME", "value": name},
    ]
    pod_labels = {
        **labels,
        DATAPLANE_MODE_LABEL: DATAPLANE_MODE_NONE,
        TUNNEL_LABEL: "http",
        "service.istio.io/canonical-name": name,
    }
    spec: dict[str, Any] = {
        "serviceAccountName": name,
        "containers": [
            {
                "name": CONTAINER_NAME,
                "command": list(WAYPOINT_COMMAND),
                "env": env,
                "ports": [
                    {"name": "mesh", "containerPort": MESH_LISTENER_PORT, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                    {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
                ],
            }
        ],
    }
    pod_name = f"{name}-{_suffix({'labels': pod_labels, 'spec': spec, 'gateway': gateway.uid})}"
    return Desired(
        service_account=Resource(
            kind="ServiceAccount",
            name=name,
            namespace=namespace,
            api_version=KINDS["ServiceAccount"][0],
            labels=labels,
            annotations=annotations,
        ),
        pod=Resource(
            kind="Pod",
            name=pod_name,
            namespace=namespace,
            api_version=KINDS["Pod"][0],
            labels=pod_labels,
            annotations=annotations,
            spec=spec,
        ),
        service=Resource(
            kind="Service",
            name=name,
            namespace=namespace,
            api_version=KINDS["Service"][0],
            labels=labels,
            annotations=annotations,
            spec={
                "selector": {GATEWAY_NAME_LABEL: name},
                "ports": [
                    {
                        "name": "mesh",
                        "port": MESH_LISTENER_PORT,
                        "targetPort": MESH_LISTENER_PORT,
                        "protocol": "TCP",
                        "appProtocol": "all",
                    }
                ],
            },
        ),
    )


def service_update(current: Resource | None, want: Resource) -> Resource | None:
    """The Service to write (None: ``current`` is already right). Keeps what others own in it: the
    cluster IP the allocator wrote back, and labels/annotations someone else added."""
    if current is not None:
        same = (
            all(current.labels.get(k) == v for k, v in want.labels.items())
            and all(current.annotations.get(k) == v for k, v in want.annotations.items())
            and current.spec.get("selector") == want.spec["selector"]
            and current.spec.get("ports") == want.spec["ports"]
        )
        if same:
            return None
        kept = {
            k: current.spec[k] for k in ("clusterIP", "clusterIPs", "ipFamilies", "type") if k in current.spec
        }
        return msgspec.structs.replace(
            want,
            labels={**current.labels, **want.labels},
            annotations={**current.annotations, **want.annotations},
            spec={**want.spec, **kept},
        )
    return want


def service_vip(service: Resource | None) -> str:
    """The waypoint Service's cluster IP ("" until allocated)."""
    if service is None:
        return ""
    ips = service.spec.get("clusterIPs")
    first = ips[0] if isinstance(ips, list) and ips else service.spec.get("clusterIP")
    return first if isinstance(first, str) and first not in ("", "None") else ""


def _pod_ready(pod: Resource) -> tuple[bool, str]:
    """(running and ready, what it is doing otherwise)."""
    phase = pod.status.get("phase") or "Pending"
    conditions = pod.status.get("conditions")
    ready: Mapping[str, Any] | None = None
    for cond in conditions if isinstance(conditions, list) else ():
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = cond
    if phase == "Running" and (ready is None or ready.get("status") == "True"):
        return True, ""
    detail = f": {ready['message']}" if ready is not None and ready.get("message") else ""
    return False, f"{phase}{detail}"


def _condition(
    kind: str, ok: bool, reason: str, message: str, previous: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    status = "True" if ok else "False"
    since = now
    for cond in previous:
        if (
            cond.get("type") == kind
            and cond.get("status") == status
            and isinstance(cond.get("lastTransitionTime"), str)
        ):
            since = cond["lastTransitionTime"]  # unchanged status keeps its transition time
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}


def gateway_status(
    gateway: Resource,
    *,
    service: Resource | None,
    pods: Iterable[Resource],
    settings: ControllerSettings,
    now: str,
) -> dict[str, Any]:
    """The Gateway's status: addresses and the Accepted/Programmed conditions (reasons a user can act on).

    Fields of the status the controller does not own (``listeners``, other condition types) are kept.
    """
    previous_raw = gateway.status.get("conditions")
    previous = [c for c in previous_raw if isinstance(c, dict)] if isinstance(previous_raw, list) else []
    refusal = gateway_refusal(gateway)
    status = {k: v for k, v in gateway.status.items() if k not in ("addresses", "conditions")}
    others = [c for c in previous if c.get("type") not in ("Accepted", "Programmed")]
    if refusal:
        reason = "ListenersNotValid" if mesh_listener(gateway) is None else "Invalid"
        status["conditions"] = [
            _condition("Accepted", False, reason, refusal, previous, now),
            _condition(
                "Programmed", False, "Invalid", "not programmed: the Gateway is not accepted", previous, now
            ),
            *others,
        ]
        return status
    host = hostname(gateway, settings)
    vip = service_vip(service)
    status["addresses"] = [
        {"type": "IPAddress", "value": vip} if vip else {"type": "Hostname", "value": host}
    ]
    accepted = _condition("Accepted", True, "Accepted", "Resource accepted", previous, now)
    states = sorted((p.name, *_pod_ready(p)) for p in pods)
    if not vip:
        programmed = _condition(
            "Programmed",
            False,
            "AddressNotAssigned",
            f"waiting for Service {gateway.namespace}/{gateway.name} to get a cluster IP; nothing is bound to "
            "the waypoint until then (check that the cluster's service controller is running)",
            previous,
            now,
        )
    elif not any(ok for _, ok, _ in states):
        doing = "; ".join(f"pod {gateway.namespace}/{n} is {what}" for n, _, what in states) or "no pod yet"
        programmed = _condition(
            "Programmed",
            False,
            "Pending",
            f"the waypoint has no ready pod ({doing}); ztunnels refuse traffic bound to it meanwhile. "
            f"Check the pod's events and the waypoint's logs",
            previous,
            now,
        )
    else:
        programmed = _condition(
            "Programmed",
            True,
            "Programmed",
            f"Resource programmed, assigned to service(s) {host}:{MESH_LISTENER_PORT}",
            previous,
            now,
        )
    status["conditions"] = [accepted, programmed, *others]
    return status


def same_status(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal but for condition transition times (which only change with the condition's status)."""

    def strip(status: Mapping[str, Any]) -> Any:
        conditions = status.get("conditions")
        if not isinstance(conditions, list):
            return dict(status)
        return {
            **status,
            "conditions": [
                {k: v for k, v in c.items() if k != "lastTransitionTime"} if isinstance(c, dict) else c
                for c in conditions
            ],
        }

    return bool(strip(a) == strip(b))


__all__ = [
    "GATEWAY_UID_ANNOTATION",
    "WAYPOINT_COMMAND",
    "WAYPOINT_CONTROLLER_NAME",
    "ControllerSettings",
    "Desired",
    "desired",
    "gateway_status",
    "hostname",
    "is_managed",
    "owner_labels",
    "same_status",
    "service_update",
    "service_vip",
]

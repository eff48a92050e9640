"""What the waypoint controller makes for one waypoint Gateway, and the status it writes back (pure).

For a Gateway of class ``istio-waypoint`` with the HBONE listener, as Istio makes them:

- a ServiceAccount ``<gw>`` (only when missing: one that exists is the user's and is never changed);
- an ``apps/v1`` Deployment ``<gw>`` selecting ``gateway.networking.k8s.io/gateway-name: <gw>``, with no
  ``replicas`` of its own (Kubernetes' default 1; a user's ``kubectl scale`` or an autoscaler is kept, as
  with Istio). Its pod template runs ``["waypoint"]`` as service account ``<gw>`` with
  ``XDS_ADDRESS``/``CA_ADDRESS`` in its env (``POD_NAME``, ``POD_IP``, ``NODE_NAME`` from the downward
  API), ports 15008 ``mesh``, 15020 ``metrics``, 15021 ``status-port``, the projected service-account
  token (audience ``istio-ca``) at ``/var/run/secrets/tokens/istio-token`` and the mesh root (ConfigMap
  ``istio-ca-root-cert``) at ``/var/run/secrets/istio``: Istio's paths, the waypoint's defaults; a
  ``readinessProbe`` on Istio's ``:15021/healthz/ready`` (the waypoint's readiness: config synced and its
  certificate held), so neither Kubernetes nor the local cluster sends it traffic before then. Pod
  labels: Istio's (``gateway-name``, ``gateway-class-name``, ``gateway.istio.io/managed``, the older
  ``istio.io/gateway-name``, ``istio.io/dataplane-mode: none`` so ztunnel never captures it,
  canonical name/revision, ``sidecar.istio.io/inject: "false"``) plus ``networking.istio.io/tunnel:
  http`` (it terminates HBONE itself). The cluster's Deployment controller (Kubernetes', or the local
  cluster's ``ambientctl.cluster.deployments``) makes and rolls the pods: a pod deleted or evicted is
  replaced, a changed template rolls;
- a Service ``<gw>`` selecting ``gateway.networking.k8s.io/gateway-name: <gw>`` on port 15008 ``mesh``
  (``appProtocol: all``, as Istio's waypoint Service has it).

Ownership: every object made carries ``gateway.networking.k8s.io/gateway-name: <gw>``,
``gateway.networking.k8s.io/gateway-class-name: istio-waypoint`` and ``gateway.istio.io/managed:
istio.io-mesh-controller`` (Istio's labels) plus the annotation ``istio.io/gateway-uid: <the Gateway's
uid>``, and the Gateway as their controlling owner reference (``ownerReferences``: ``controller: true``,
the Gateway's uid; Kubernetes' garbage collector deletes them with the Gateway; an owner reference missing
from an object an older version made is added). The controller only ever changes or deletes objects with
the managed label (and a ServiceAccount only if it made it): the labels stay the ownership record it
reads. A waypoint pod made directly by an older version (a
managed pod without ``pod-template-hash``, the label every Deployment's pod carries) is stale
(``is_bare_pod``): the controller deletes it once a pod of the Deployment is ready.

Status: ``status.addresses`` is ``[{type: IPAddress, value: <VIP>}]`` once the Service has a cluster IP
(the local cluster allocates it asynchronously), else ``[{type: Hostname, value: <gw>.<ns>.svc...>}]``;
conditions ``Accepted`` and ``Programmed`` (True once a pod of the Deployment is ready: the pods, which
both Kubernetes and the local cluster keep in the store, say more than the Deployment's counts) with
reasons a user can act on. A refused Gateway gets ``Accepted=False`` and nothing is made (what was made
before is deleted).

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
    WAYPOINT_GATEWAY_CLASS,
    gateway_refusal,
    mesh_listener,
)
from istiod_lite.registry.workloads import TUNNEL_LABEL
from meshcore.enrollment import DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE
from meshcore.store.resource import KINDS, OwnerReference, Resource

GATEWAY_UID_ANNOTATION = "istio.io/gateway-uid"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
LEGACY_GATEWAY_NAME_LABEL = (
    "istio.io/gateway-name"  # older Istio releases' pod label; tooling still selects on it
)
TEMPLATE_HASH_LABEL = "pod-template-hash"  # set on every pod a Deployment (its ReplicaSet) makes
WAYPOINT_COMMAND = ("waypoint",)
CONTAINER_NAME = "waypoint"
METRICS_PORT = 15020
STATUS_PORT = 15021
READINESS_PATH = "/healthz/ready"  # Istio's waypoint readiness, served by the waypoint on STATUS_PORT
# The readinessProbe of the waypoint container: Istio's port and path; checked every 2 s (Istio checks
# every 15 s after a 1 s startupProbe, which the local cluster's kubelet does not run), 4 failures to go
# unready as Istio's.
READINESS_PROBE: dict[str, Any] = {
    "httpGet": {"path": READINESS_PATH, "port": STATUS_PORT, "scheme": "HTTP"},
    "initialDelaySeconds": 1,
    "periodSeconds": 2,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 4,
}
# Istio's projected token and mesh root for proxies (paths the waypoint reads by default).
TOKEN_VOLUME = "istio-token"
TOKEN_DIR = "/var/run/secrets/tokens"
TOKEN_AUDIENCE = "istio-ca"
TOKEN_SECONDS = 43200
ROOT_CERT_VOLUME = "istiod-ca-cert"
ROOT_CERT_DIR = "/var/run/secrets/istio"
ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
# Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """What the controller puts in what it makes."""

    xds_address: str = "istiod.istio-system.svc:15012"  # XDS_ADDRESS and CA_ADDRESS of waypoint pods
    ca_address: str = ""  # "" = the same as xds_address (istiod serves both)
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    image: str = ""  # the waypoint container's image ("": none; the local cluster runs the command)


@dataclass(frozen=True, slots=True)
class Desired:
    """The objects one waypoint Gateway should have."""

    service_account: Resource
    deployment: Resource
    service: Resource

    @property
    def pod(self) -> Resource:
        """A pod of the Deployment's template, as a Deployment controller makes it (name
        ``<gw>-<template hash>-<5 characters>``, the template's labels plus ``pod-template-hash``)."""
        template = self.deployment.spec["template"]
        digest = _suffix(template)
        return Resource(
            kind="Pod",
            name=f"{self.deployment.name}-{digest}-{_suffix([template, 'pod'])}",
            namespace=self.deployment.namespace,
            api_version=KINDS["Pod"][0],
            labels={**template["metadata"]["labels"], TEMPLATE_HASH_LABEL: digest},
            annotations=dict(template["metadata"].get("annotations") or {}),
            spec=template["spec"],
        )


def owner_labels(gateway_name: str) -> dict[str, str]:
    return {
        GATEWAY_NAME_LABEL: gateway_name,
        GATEWAY_CLASS_LABEL: WAYPOINT_GATEWAY_CLASS,
        MANAGED_GATEWAY_LABEL: MANAGED_BY_MESH_CONTROLLER,
    }


def is_managed(resource: Resource) -> bool:
    """Made by the waypoint controller (the only objects it changes or deletes)."""
    return resource.labels.get(MANAGED_GATEWAY_LABEL) == MANAGED_BY_MESH_CONTROLLER and bool(
        resource.labels.get(GATEWAY_NAME_LABEL)
    )


def is_bare_pod(pod: Resource) -> bool:
    """A managed waypoint pod no Deployment made (an older version's): stale once the Deployment exists."""
    return pod.kind == "Pod" and is_managed(pod) and TEMPLATE_HASH_LABEL not in pod.labels


def hostname(gateway: Resource, settings: ControllerSettings) -> str:
    return f"{gateway.name}.{gateway.namespace}.svc.{settings.domain_suffix}"


def _suffix(template: Any) -> str:
    digest = hashlib.sha256(msgspec.json.encode(template, order="sorted")).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:5])


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _pod_template(gateway: Resource, settings: ControllerSettings) -> dict[str, Any]:
    name, namespace = gateway.name, gateway.namespace
    env = [
        {"name": "XDS_ADDRESS", "value": settings.xds_address},
        {"name": "CA_ADDRESS", "value": settings.ca_address or settings.xds_address},
        _field("POD_NAME", "metadata.name"),
        {"name": "POD_NAMESPACE", "value": namespace},
        _field("POD_IP", "status.podIP"),
        _field("NODE_NAME", "spec.nodeName"),
        {"name": "SERVICE_ACCOUNT", "value": name},
        {"name": "TRUST_DOMAIN", "value": settings.trust_domain},
        {"name": "GATEWAY_NAME", "value": name},
    ]
    labels = {
        "sidecar.istio.io/inject": "false",
        DATAPLANE_MODE_LABEL: DATAPLANE_MODE_NONE,
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
        TUNNEL_LABEL: "http",
        LEGACY_GATEWAY_NAME_LABEL: name,
        **owner_labels(name),
    }
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        **({"image": settings.image} if settings.image else {}),
        "command": list(WAYPOINT_COMMAND),
        "env": env,
        "ports": [
            {"name": "mesh", "containerPort": MESH_LISTENER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": READINESS_PROBE,
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": ROOT_CERT_VOLUME, "mountPath": ROOT_CERT_DIR, "readOnly": True},
        ],
    }
    token = {"audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "istio-token"}
    return {
        "metadata": {"labels": labels},
        "spec": {
            "serviceAccountName": name,
            "containers": [container],
            "volumes": [
                {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}},
                {"name": ROOT_CERT_VOLUME, "configMap": {"name": ROOT_CERT_CONFIGMAP}},
            ],
        },
    }


def owner_reference(gateway: Resource) -> tuple[OwnerReference, ...]:
    """The Gateway as the controlling owner of what is made for it (none before it has a uid)."""
    if not gateway.uid:
        return ()
    api_version = gateway.api_version or KINDS["Gateway"][0]
    return (OwnerReference(api_version, "Gateway", gateway.name, gateway.uid, controller=True),)


def with_owner(current: Resource, want: Resource) -> tuple[OwnerReference, ...]:
    """``want``'s owner reference plus the others ``current`` has (another controller's is replaced: at
    most one may be the controller)."""
    ours = {o.uid for o in want.owner_references}
    kept = tuple(
        o for o in current.owner_references if o.uid not in ours and not (o.controller and want.owner_references)
    )
    return (*want.owner_references, *kept)


def has_owner(current: Resource, want: Resource) -> bool:
    return all(o in current.owner_references for o in want.owner_references)


def desired(gateway: Resource, settings: ControllerSettings) -> Desired:
    """What to make for an accepted waypoint Gateway (``gateway_refusal(gateway)`` is "")."""
    name, namespace = gateway.name, gateway.namespace
    labels = owner_labels(name)
    annotations = {GATEWAY_UID_ANNOTATION: gateway.uid} if gateway.uid else {}
    owners = owner_reference(gateway)
    return Desired(
        service_account=Resource(
            kind="ServiceAccount",
            name=name,
            namespace=namespace,
            api_version=KINDS["ServiceAccount"][0],
            labels=labels,
            annotations=annotations,
            owner_references=owners,
        ),
        deployment=Resource(
            kind="Deployment",
            name=name,
            namespace=namespace,
            api_version=KINDS["Deployment"][0],
            labels=labels,
            annotations=annotations,
            owner_references=owners,
            spec={
                "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                "template": _pod_template(gateway, settings),
            },
        ),
        service=Resource(
            kind="Service",
            name=name,
            namespace=namespace,
            api_version=KINDS["Service"][0],
            labels=labels,
            annotations=annotations,
            owner_references=owners,
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


def contains(have: Any, want: Any) -> bool:
    """``have`` holds everything ``want`` says: mappings may hold more keys (the defaults an API server
    fills in), lists must match item by item, other values must be equal."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)


def deployment_update(current: Resource | None, want: Resource) -> Resource | None:
    """The Deployment to write (None: ``current`` already runs the wanted template). Keeps what others own
    in it: ``replicas`` (a user's scale, an autoscaler), the strategy and whatever defaults the API server
    filled in, and labels/annotations someone else added; the selector and the pod template are ours."""
    if current is None:
        return want
    same = (
        all(current.labels.get(k) == v for k, v in want.labels.items())
        and all(current.annotations.get(k) == v for k, v in want.annotations.items())
        and has_owner(current, want)
        and contains(current.spec.get("selector"), want.spec["selector"])
        and contains(current.spec.get("template"), want.spec["template"])
    )
    if same:
        return None
    return msgspec.structs.replace(
        want,
        labels={**current.labels, **want.labels},
        annotations={**current.annotations, **want.annotations},
        spec={**current.spec, **want.spec},
        owner_references=with_owner(current, want),
    )


def service_update(current: Resource | None, want: Resource) -> Resource | None:
    """The Service to write (None: ``current`` is already right). Keeps what others own in it: the
    cluster IP the allocator wrote back, and labels/annotations someone else added."""
    if current is not None:
        same = (
            all(current.labels.get(k) == v for k, v in want.labels.items())
            and all(current.annotations.get(k) == v for k, v in want.annotations.items())
            and has_owner(current, want)
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
            owner_references=with_owner(current, want),
        )
    return want


def service_account_update(current: Resource | None, want: Resource) -> Resource | None:
    """The ServiceAccount to write (None: nothing to do). A missing one is made; one the controller made
    (an older version's, without the owner reference) gets the reference; a user's is never changed."""
    if current is None:
        return want
    if not is_managed(current) or has_owner(current, want):
        return None
    return msgspec.structs.replace(current, owner_references=with_owner(current, want))


def service_vip(service: Resource | None) -> str:
    """The waypoint Service's cluster IP ("" until allocated)."""
    if service is None:
        return ""
    ips = service.spec.get("clusterIPs")
    first = ips[0] if isinstance(ips, list) and ips else service.spec.get("clusterIP")
    return first if isinstance(first, str) and first not in ("", "None") else ""


def pod_ready(pod: Resource) -> tuple[bool, str]:
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
    states = sorted((p.name, *pod_ready(p)) for p in pods)
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
        doing = "; ".join(f"pod {gateway.namespace}/{n} is {what}" for n, _, what in states) or (
            f"Deployment {gateway.namespace}/{gateway.name} has no pod yet"
        )
        programmed = _condition(
            "Programmed",
            False,
            "Pending",
            f"the waypoint has no ready pod ({doing}); ztunnels refuse traffic bound to it meanwhile. "
            f"Check the Deployment's and the pod's events and the waypoint's logs",
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
    "contains",
    "deployment_update",
    "desired",
    "gateway_status",
    "hostname",
    "is_bare_pod",
    "is_managed",
    "owner_labels",
    "owner_reference",
    "pod_ready",
    "same_status",
    "service_account_update",
    "service_update",
    "service_vip",
]

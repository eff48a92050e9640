"""What ``ambientctl get`` shows per kind in table form: pure functions from resources to rows.

Headers are upper-case like kubectl's; empty values print ``<none>`` as kubectl does. A NAMESPACE
column comes first with ``-A`` for namespaced kinds. Pods show DATAPLANE-MODE: the pod's own
``istio.io/dataplane-mode`` label, else its namespace's (what the operator set with ``namespace
enable``), else ``<none>``; READY, STATUS and RESTARTS are kubectl's (from ``status.containerStatuses``:
CrashLoopBackOff, Error, Completed ... else the phase; ``Pending`` for a pod without any status yet); the control plane, not this table, decides what is captured. Gateways show
kubectl's columns (the Gateway API CRD's printer columns): CLASS, ADDRESS (the first of
``status.addresses``), PROGRAMMED (the condition's status; ``Unknown`` until a controller wrote one, as
the CRD's default status says) and AGE (``<unknown>``: the store records no creation time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ambientctl.cluster.podstatus import display_status, ready_count, restart_total
from meshcore.store import Resource, is_namespaced, spec_as, status_as
from meshcore.store.schema import (
    AuthorizationPolicySpec,
    GatewaySpec,
    HTTPRouteSpec,
    PodSpec,
    PodStatus,
    ServiceSpec,
)

DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
NONE = "<none>"
# kubectl's AGE for an object without metadata.creationTimestamp.
UNKNOWN_AGE = "<unknown>"

Row = list[str]
# (headers after NAME, row function after name) per kind.
_Columns = tuple[list[str], Callable[[Resource, Mapping[str, Resource]], Row]]


def build_table(
    kind: str, resources: Sequence[Resource], namespaces: Mapping[str, Resource], *, all_namespaces: bool
) -> tuple[list[str], list[Row]]:
    """Headers and rows for ``resources`` of one ``kind``; ``namespaces`` maps name -> Namespace."""
    extra_headers, extra = _COLUMNS.get(kind, ([], _nothing))
    with_ns = all_namespaces and is_namespaced(kind)
    headers = (["NAMESPACE"] if with_ns else []) + ["NAME", *extra_headers]
    rows = [([r.namespace] if with_ns else []) + [r.name, *extra(r, namespaces)] for r in resources]
    return headers, rows


def _nothing(_r: Resource, _ns: Mapping[str, Resource]) -> Row:
    return []


def _or_none(value: str | None) -> str:
    return value if value else NONE


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or NONE


def _namespace_row(r: Resource, _ns: Mapping[str, Resource]) -> Row:
    return [_labels(r.labels)]


def _pod_row(r: Resource, namespaces: Mapping[str, Resource]) -> Row:
    spec = spec_as(r, PodSpec)
    status = status_as(r, PodStatus)
    ns = namespaces.get(r.namespace)
    mode = r.labels.get(DATAPLANE_MODE_LABEL) or (ns.labels.get(DATAPLANE_MODE_LABEL) if ns else None)
    return [
        ready_count(r.status),
        display_status(r.status) if r.status else "Pending",
        str(restart_total(r.status)),
        _or_none(status.pod_ip),
        _or_none(spec.node_name),
        spec.service_account_name,
        _or_none(mode),
    ]


def _service_row(r: Resource, _ns: Mapping[str, Resource]) -> Row:
    spec = spec_as(r, ServiceSpec)
    ports = ",".join(f"{p.port}/{p.protocol}" for p in spec.ports or ())
    return [_or_none(spec.cluster_ip), _or_none(ports), _labels(spec.selector or {})]


def _policy_row(r: Resource, _ns: Mapping[str, Resource]) -> Row:
    spec = spec_as(r, AuthorizationPolicySpec)
    refs = ([spec.target_ref] if spec.target_ref else []) + list(spec.target_refs or ())
    if refs:
        target = ",".join(f"{ref.kind}/{ref.name}" for ref in refs)
    elif spec.selector is not None and spec.selector.match_labels:
        target = _labels(spec.selector.match_labels)
    else:
        target = "<namespace>"
    return [spec.action, target, str(len(spec.rules or ()))]


def gateway_conditions(gateway: Resource) -> list[dict[str, Any]]:
    """A Gateway's well-formed status conditions (entries a controller wrote badly are skipped)."""
    found = gateway.status.get("conditions")
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, dict) and isinstance(c.get("type"), str)]


def gateway_condition(gateway: Resource, type_: str) -> dict[str, Any] | None:
    return next((c for c in gateway_conditions(gateway) if c["type"] == type_), None)


def gateway_programmed(gateway: Resource) -> str:
    """``True``/``False``/``Unknown``: the Programmed condition (``Unknown`` before any was written)."""
    found = gateway_condition(gateway, "Programmed")
    return str(found.get("status") or "Unknown") if found else "Unknown"


def gateway_address(gateway: Resource) -> str | None:
    """The first ``status.addresses[].value`` (kubectl prints one value for this column)."""
    addresses = gateway.status.get("addresses")
    for entry in addresses if isinstance(addresses, list) else ():
        if isinstance(entry, dict) and entry.get("value"):
            return str(entry["value"])
    return None


def _gateway_row(r: Resource, _ns: Mapping[str, Resource]) -> Row:
    spec = spec_as(r, GatewaySpec)
    return [spec.gateway_class_name, _or_none(gateway_address(r)), gateway_programmed(r), UNKNOWN_AGE]


def _route_row(r: Resource, _ns: Mapping[str, Resource]) -> Row:
    spec = spec_as(r, HTTPRouteSpec)
    parents = ",".join(f"{p.kind or 'Gateway'}/{p.name}" for p in spec.parent_refs or ())
    return [_or_none(",".join(spec.hostnames or ())), _or_none(parents), str(len(spec.rules or ()))]


def _deployment_row(r: Resource, _ns: Mapping[str, Resource]) -> Row:
    replicas = r.spec.get("replicas", 1)
    return [
        f"{r.status.get('readyReplicas', 0)}/{replicas}",
        str(r.status.get("updatedReplicas", 0)),
        str(r.status.get("availableReplicas", 0)),
    ]


_COLUMNS: dict[str, _Columns] = {
    "Deployment": (["READY", "UP-TO-DATE", "AVAILABLE"], _deployment_row),
    "Namespace": (["LABELS"], _namespace_row),
    "Pod": (["READY", "STATUS", "RESTARTS", "IP", "NODE", "SERVICE-ACCOUNT", "DATAPLANE-MODE"], _pod_row),
    "Service": (["CLUSTER-IP", "PORT(S)", "SELECTOR"], _service_row),
    "AuthorizationPolicy": (["ACTION", "TARGET", "RULES"], _policy_row),
    "Gateway": (["CLASS", "ADDRESS", "PROGRAMMED", "AGE"], _gateway_row),
    "HTTPRoute": (["HOSTNAMES", "PARENTS", "RULES"], _route_row),
}

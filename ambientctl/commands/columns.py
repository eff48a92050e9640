"""What ``ambientctl get`` shows per kind in table form: pure functions from resources to rows.

Headers are upper-case like kubectl's and never contain a blank (``SERVICE-ACCOUNT``, a unit test checks
every kind); empty values print ``<none>`` as kubectl does. A NAMESPACE column comes first with ``-A``
for namespaced kinds; with several kinds in one ``get`` the NAME cell is ``kind[.group]/name``
(``deployment.apps/web``), kubectl's form, also what ``-o name`` prints. Each kind has one column list;
columns marked ``wide`` show only with ``-o wide`` (kubectl's: a pod's IP and NODE, a Service's
SELECTOR, a Deployment's CONTAINERS, IMAGES and SELECTOR).

Every kind has AGE, from ``metadata.creationTimestamp`` (kubectl's human duration; ``<unknown>`` for an
object stored by a version that kept none), last among the columns kubectl shows without ``-o wide``
(for pods, like kubectl, before the wide ones). Events have kubectl's own columns instead, no NAME:
LAST SEEN, TYPE, REASON, OBJECT, MESSAGE (``-o wide``: SUBOBJECT, SOURCE, FIRST SEEN, COUNT, NAME too);
``event_time`` is what ``get events`` sorts them by.

Pods show READY, STATUS and RESTARTS as kubectl does (from ``status.containerStatuses``:
CrashLoopBackOff, Error, Completed ... else the phase; ``Pending`` for a pod without any status yet),
AGE and DATAPLANE-MODE: the pod's own ``istio.io/dataplane-mode`` label, else its
namespace's, else ``<none>``; the control plane, not this table, decides what is captured.
AuthorizationPolicies show STATUS from istiod-lite's ``ZtunnelAccepted``/``WaypointAccepted`` conditions
(``policy_status``). Gateways show the Gateway API CRD's printer columns: CLASS, ADDRESS (the first of
``status.addresses``), PROGRAMMED (``Unknown`` until a controller wrote the condition) and AGE.
Nodes come from the local cluster, not the store (``node_table``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ambientctl.cluster.podstatus import display_status, ready_count, restart_total
from meshcore.store import KINDS, Resource, is_namespaced, spec_as, status_as
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
# The conditions istiod-lite writes on an AuthorizationPolicy (Istio's names), with the STATUS prefix.
POLICY_CONDITIONS = (("ZtunnelAccepted", "Ztunnel"), ("WaypointAccepted", "Waypoint"))

Row = list[str]


@dataclass(frozen=True, slots=True)
class TableContext:
    """What rows need besides the resource: its namespace (name -> Namespace) and the time for AGE."""

    namespaces: Mapping[str, Resource] = field(default_factory=dict)
    now: datetime | None = None


class Column(NamedTuple):
    header: str
    value: Callable[[Resource, TableContext], str]
    wide: bool = False


def qualified_kind(kind: str) -> str:
    """kubectl's ``kind.group`` (``deployment.apps``, ``service``): what names several kinds' rows."""
    api_version = KINDS.get(kind, ("v1", True))[0]
    group = api_version.rpartition("/")[0]
    return f"{kind.lower()}.{group}" if group else kind.lower()


def qualified_name(resource: Resource) -> str:
    """``-o name``'s line for ``resource``: ``pod/web``, ``deployment.apps/web``."""
    return f"{qualified_kind(resource.kind)}/{resource.name}"


def columns(kind: str, *, wide: bool = False) -> list[Column]:
    """The columns after NAME for ``kind`` (``wide``: with the ``-o wide`` ones)."""
    return [c for c in _COLUMNS.get(kind, [AGE]) if wide or not c.wide]


def build_table(
    kind: str,
    resources: Sequence[Resource],
    namespaces: Mapping[str, Resource] | TableContext,
    *,
    all_namespaces: bool,
    wide: bool = False,
    with_kind: bool = False,
) -> tuple[list[str], list[Row]]:
    """Headers and rows for ``resources`` of one ``kind``; ``namespaces`` maps name -> Namespace (or is
    the whole ``TableContext``). ``with_kind`` writes NAME as ``kind.group/name``."""
    ctx = namespaces if isinstance(namespaces, TableContext) else TableContext(namespaces)
    cols = columns(kind, wide=wide)
    with_ns = all_namespaces and is_namespaced(kind)
    named = with_kind or kind not in _NAMELESS
    headers = (["NAMESPACE"] if with_ns else []) + (["NAME"] if named else []) + [c.header for c in cols]
    rows = [
        ([r.namespace] if with_ns else [])
        + ([qualified_name(r) if with_kind else r.name] if named else [])
        + [c.value(r, ctx) for c in cols]
        for r in resources
    ]
    return headers, rows


def _or_none(value: str | None) -> str:
    return value if value else NONE


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or NONE


# --- AGE --------------------------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """kubectl's AGE text for a duration (its ``HumanDuration``: ``45s``, ``3m20s``, ``5h``, ``2d3h``)."""
    if seconds < -1:
        return "<invalid>"
    s = max(int(seconds), 0)
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as Kubernetes writes it (``2026-01-02T03:04:05Z``); None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def age(since: Any, now: datetime | None) -> str:
    started = parse_time(since)
    if started is None or now is None:
        return UNKNOWN_AGE
    return human_duration((now - started).total_seconds())


# kubectl's AGE: since the object was created (metadata.creationTimestamp).
AGE = Column("AGE", lambda r, c: age(r.creation_timestamp, c.now))


# --- Pods -------------------------------------------------------------------------------------------------


def dataplane_mode(pod: Resource, namespaces: Mapping[str, Resource]) -> str | None:
    ns = namespaces.get(pod.namespace)
    return pod.labels.get(DATAPLANE_MODE_LABEL) or (ns.labels.get(DATAPLANE_MODE_LABEL) if ns else None)


def _pod_spec(r: Resource) -> PodSpec:
    return spec_as(r, PodSpec)


_POD: list[Column] = [
    Column("READY", lambda r, _c: ready_count(r.status)),
    Column("STATUS", lambda r, _c: display_status(r.status) if r.status else "Pending"),
    Column("RESTARTS", lambda r, _c: str(restart_total(r.status))),
    AGE,
    Column("IP", lambda r, _c: _or_none(status_as(r, PodStatus).pod_ip), wide=True),
    Column("NODE", lambda r, _c: _or_none(_pod_spec(r).node_name), wide=True),
    Column("SERVICE-ACCOUNT", lambda r, _c: _pod_spec(r).service_account_name, wide=True),
    Column("DATAPLANE-MODE", lambda r, c: _or_none(dataplane_mode(r, c.namespaces))),
]


# --- Services ---------------------------------------------------------------------------------------------


def _ports(r: Resource) -> str:
    return _or_none(",".join(f"{p.port}/{p.protocol}" for p in spec_as(r, ServiceSpec).ports or ()))


_SERVICE: list[Column] = [
    Column("TYPE", lambda r, _c: spec_as(r, ServiceSpec).type),
    Column("CLUSTER-IP", lambda r, _c: _or_none(spec_as(r, ServiceSpec).cluster_ip)),
    Column("PORT(S)", lambda r, _c: _ports(r)),
    AGE,
    Column("SELECTOR", lambda r, _c: labels_text(spec_as(r, ServiceSpec).selector or {}), wide=True),
]


# --- AuthorizationPolicy ----------------------------------------------------------------------------------


def conditions(resource: Resource) -> list[dict[str, Any]]:
    """A resource's well-formed ``status.conditions`` (entries a controller wrote badly are skipped)."""
    found = resource.status.get("conditions")
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, dict) and isinstance(c.get("type"), str)]


def condition(resource: Resource, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions(resource) if c["type"] == type_), None)


def policy_status(policy: Resource) -> str:
    """An AuthorizationPolicy's STATUS from istiod-lite's conditions: ``-`` before it wrote one,
    ``Pending`` while they describe an older generation of the spec, ``Accepted`` when each is True as
    written; else, per condition, ``Ztunnel:<reason>`` / ``Waypoint:<reason>`` for a False one (not
    enforced there) and ``Accepted(Ztunnel:<reason>)`` for a True one with another reason than Accepted
    (enforced in a changed form, never more permissive: the message says how)."""
    written = [(prefix, found) for type_, prefix in POLICY_CONDITIONS if (found := condition(policy, type_))]
    if not written:
        return "-"
    generation = getattr(policy, "generation", 0)
    if generation and any(
        isinstance(c.get("observedGeneration"), int) and c["observedGeneration"] < generation
        for _, c in written
    ):
        return "Pending"
    parts = []
    for prefix, found in written:
        reason = str(found.get("reason") or "")
        if found.get("status") != "True":
            parts.append(f"{prefix}:{reason or found.get('status') or 'Unknown'}")
        elif reason not in ("", "Accepted"):
            parts.append(f"Accepted({prefix}:{reason})")
    return ",".join(parts) or "Accepted"


def policy_target(r: Resource) -> str:
    spec = spec_as(r, AuthorizationPolicySpec)
    refs = ([spec.target_ref] if spec.target_ref else []) + list(spec.target_refs or ())
    if refs:
        return ",".join(f"{ref.kind}/{ref.name}" for ref in refs)
    if spec.selector is not None and spec.selector.match_labels:
        return labels_text(spec.selector.match_labels)
    return "<namespace>"


_POLICY: list[Column] = [
    Column("ACTION", lambda r, _c: spec_as(r, AuthorizationPolicySpec).action),
    Column("TARGET", lambda r, _c: policy_target(r)),
    Column("RULES", lambda r, _c: str(len(spec_as(r, AuthorizationPolicySpec).rules or ()))),
    Column("STATUS", lambda r, _c: policy_status(r)),
    AGE,
]


# --- Gateways and routes ----------------------------------------------------------------------------------


def gateway_conditions(gateway: Resource) -> list[dict[str, Any]]:
    """A Gateway's well-formed status conditions (entries a controller wrote badly are skipped)."""
    return conditions(gateway)


def gateway_condition(gateway: Resource, type_: str) -> dict[str, Any] | None:
    return condition(gateway, type_)


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


_GATEWAY: list[Column] = [
    Column("CLASS", lambda r, _c: spec_as(r, GatewaySpec).gateway_class_name),
    Column("ADDRESS", lambda r, _c: _or_none(gateway_address(r))),
    Column("PROGRAMMED", lambda r, _c: gateway_programmed(r)),
    AGE,
]


def _parents(r: Resource) -> str:
    spec = spec_as(r, HTTPRouteSpec)
    return _or_none(",".join(f"{p.kind or 'Gateway'}/{p.name}" for p in spec.parent_refs or ()))


_ROUTE: list[Column] = [
    Column("HOSTNAMES", lambda r, _c: _or_none(",".join(spec_as(r, HTTPRouteSpec).hostnames or ()))),
    Column("PARENTS", lambda r, _c: _parents(r)),
    Column("RULES", lambda r, _c: str(len(spec_as(r, HTTPRouteSpec).rules or ()))),
    AGE,
]


# --- Deployments ------------------------------------------------------------------------------------------


def _template_containers(r: Resource) -> list[dict[str, Any]]:
    template = r.spec.get("template")
    spec = template.get("spec") if isinstance(template, dict) else None
    found = spec.get("containers") if isinstance(spec, dict) else None
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def deployment_selector(r: Resource) -> str:
    selector = r.spec.get("selector")
    labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    parts = [labels_text(labels)] if isinstance(labels, dict) and labels else []
    for req in (selector.get("matchExpressions") if isinstance(selector, dict) else None) or ():
        if isinstance(req, dict):
            values = ",".join(str(v) for v in req.get("values") or ())
            op = {"In": "in", "NotIn": "notin"}.get(str(req.get("operator")))
            if op:
                parts.append(f"{req.get('key')} {op} ({values})")
            else:
                parts.append(f"{'!' if req.get('operator') == 'DoesNotExist' else ''}{req.get('key')}")
    return ",".join(parts) or NONE


_DEPLOYMENT: list[Column] = [
    Column("READY", lambda r, _c: f"{r.status.get('readyReplicas', 0)}/{r.spec.get('replicas', 1)}"),
    Column("UP-TO-DATE", lambda r, _c: str(r.status.get("updatedReplicas", 0))),
    Column("AVAILABLE", lambda r, _c: str(r.status.get("availableReplicas", 0))),
    AGE,
    Column(
        "CONTAINERS",
        lambda r, _c: _or_none(",".join(str(c.get("name")) for c in _template_containers(r))),
        True,
    ),
    Column(
        "IMAGES",
        lambda r, _c: _or_none(",".join(str(c.get("image") or NONE) for c in _template_containers(r))),
        True,
    ),
    Column("SELECTOR", lambda r, _c: deployment_selector(r), wide=True),
]


# --- Events -----------------------------------------------------------------------------------------------


def event_time(event: Resource) -> str:
    """When an Event was last seen (lastTimestamp, else eventTime/firstTimestamp, else its creation):
    RFC 3339 text, what ``get events`` sorts by."""
    for name in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = event.spec.get(name)
        if isinstance(value, str) and value:
            return value
    return event.creation_timestamp


def _event_object(event: Resource) -> str:
    obj = event.spec.get("involvedObject")
    if not isinstance(obj, dict):
        return NONE
    return f"{str(obj.get('kind') or '').lower()}/{obj.get('name') or ''}"


def _event_subobject(event: Resource) -> str:
    obj = event.spec.get("involvedObject")
    return _or_none(str(obj.get("fieldPath") or "") if isinstance(obj, dict) else "")


def _event_source(event: Resource) -> str:
    source = event.spec.get("source")
    if not isinstance(source, dict):
        return _or_none(str(event.spec.get("reportingComponent") or ""))
    return _or_none(", ".join(str(source[k]) for k in ("component", "host") if source.get(k)))


_EVENT: list[Column] = [
    Column("LAST-SEEN", lambda r, c: age(event_time(r), c.now)),
    Column("TYPE", lambda r, _c: str(r.spec.get("type") or "Normal")),
    Column("REASON", lambda r, _c: _or_none(str(r.spec.get("reason") or ""))),
    Column("OBJECT", lambda r, _c: _event_object(r)),
    Column("SUBOBJECT", lambda r, _c: _event_subobject(r), wide=True),
    Column("SOURCE", lambda r, _c: _event_source(r), wide=True),
    Column("MESSAGE", lambda r, _c: str(r.spec.get("message") or "")),
    Column("FIRST-SEEN", lambda r, c: age(r.spec.get("firstTimestamp"), c.now), wide=True),
    Column("COUNT", lambda r, _c: str(r.spec.get("count") or 1), wide=True),
    Column("NAME", lambda r, _c: r.name, wide=True),
]
# Kinds whose table has no NAME column first (kubectl's events table).
_NAMELESS = frozenset({"Event"})


_COLUMNS: dict[str, list[Column]] = {
    "Deployment": _DEPLOYMENT,
    "Event": _EVENT,
    "Namespace": [Column("LABELS", lambda r, _c: labels_text(r.labels)), AGE],
    "Pod": _POD,
    "Service": _SERVICE,
    "AuthorizationPolicy": _POLICY,
    "Gateway": _GATEWAY,
    "HTTPRoute": _ROUTE,
}


# --- Nodes (from the local cluster, not the store) --------------------------------------------------------


class NodeRow(NamedTuple):
    """One local-cluster node as ``get nodes`` needs it (from ``Cluster.status()``)."""

    name: str
    ready: bool
    internal_ip: str


def node_table(
    nodes: Sequence[NodeRow], *, version: str, wide: bool = False, kernel: str = ""
) -> tuple[list[str], list[Row]]:
    """kubectl's ``get nodes``: NAME STATUS ROLES AGE VERSION (``-o wide``: + INTERNAL-IP EXTERNAL-IP
    KERNEL-VERSION). The local cluster records no creation time (AGE ``<unknown>``) and no roles."""
    headers = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    if wide:
        headers += ["INTERNAL-IP", "EXTERNAL-IP", "KERNEL-VERSION"]
    rows = []
    for n in nodes:
        row = [n.name, "Ready" if n.ready else "NotReady", NONE, UNKNOWN_AGE, version]
        if wide:
            row += [_or_none(n.internal_ip), NONE, _or_none(kernel)]
        rows.append(row)
    return headers, rows

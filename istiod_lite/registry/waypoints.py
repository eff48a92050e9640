"""Waypoints: which Gateways are waypoints, and which waypoint (if any) a workload or a Service uses (pure).

A waypoint is a Gateway API ``Gateway`` with ``gatewayClassName: istio-waypoint`` and a listener on port
15008 with protocol ``HBONE`` (Istio names it ``mesh``). The ``istio-waypoint`` GatewayClass is built in:
no GatewayClass object is needed (nor read). ``waypoint_from_gateway`` turns one into a ``Waypoint``,
or refuses it with the reason (missing listener, unknown ``istio.io/waypoint-for``...).

Binding (``bind_workload`` / ``bind_service``) decides ``Workload.waypoint`` and ``Service.waypoint``.
The first rule that applies decides; a later one is never consulted:

1. the waypoint's own pods and Service (label ``gateway.networking.k8s.io/gateway-name``, or Istio's
   ``gateway.istio.io/managed``) are never bound: a waypoint never sends to itself;
2. ``istio.io/use-waypoint`` on the pod / Service (``none`` opts out of every waypoint, per-service-account
   ones included), with ``istio.io/use-waypoint-namespace`` for a waypoint in another namespace;
3. per service account (Istio <= 1.21's model, the one this project's users asked for): a waypoint whose
   Gateway carries ``istio.io/for-service-account: <sa>`` (annotation, Istio 1.21's form, or label)
   serves the workloads of that service account in its namespace, and the Services whose endpoints
   *all* run as it (a Service with endpoints of several service accounts gets none from this rule);
4. ``istio.io/use-waypoint`` (and ``-namespace``) on the namespace (``none`` opts out).

The chosen waypoint then applies only to the traffic its ``istio.io/waypoint-for`` accepts: ``service``
(the default) fills only ``Service.waypoint``, ``workload`` only ``Workload.waypoint``, ``all`` both,
``none`` neither. A per-service-account waypoint defaults to ``all`` (the 1.21 model had no such label);
its label still wins when set. A waypoint in another namespace must admit the referring namespace
through its HBONE listener's ``allowedRoutes.namespaces`` (``Same`` by default, ``All``, or a
``Selector`` with ``matchLabels``), as Istio checks it.

A waypoint is usable only once its address is known: an ``IPAddress`` in ``status.addresses`` (written by
the waypoint controller from the waypoint Service's VIP). Until then nothing is bound to it, so traffic
stays L4-only instead of being refused by ztunnel; every ``Binding`` carries the reason, shown in the
registry's debug output. The bound ``GatewayAddress`` is the VIP on the registry's network with
``hbone_mtls_port`` 15008: ``GatewayAddress.destination`` is a oneof on the wire, and the address is what
ztunnel's routing resolves directly (``find_destination``), so the hostname is not sent.

Pure: resources and labels in, values out; no store, no I/O, no logging.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Protocol

import msgspec

from istiod_lite.registry.errors import Problem, Reason, Severity
from meshcore.model import GatewayAddress, NetworkAddress
from meshcore.model.workload import DEFAULT_HBONE_PORT
from meshcore.store.resource import Resource, ResourceRef
from meshcore.store.schema import name_problem

WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
WAYPOINT_CONTROLLER_NAME = "istio.io/mesh-controller"  # the GatewayClass's controllerName in Istio
MESH_LISTENER_NAME = "mesh"
MESH_LISTENER_PROTOCOL = "HBONE"
MESH_LISTENER_PORT = DEFAULT_HBONE_PORT

USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
FOR_SERVICE_ACCOUNT = "istio.io/for-service-account"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
MANAGED_GATEWAY_LABEL = "gateway.istio.io/managed"
MANAGED_BY_MESH_CONTROLLER = "istio.io-mesh-controller"  # its value on what Istio makes for a waypoint
NO_WAYPOINT = "none"


class TrafficType(enum.StrEnum):
    """``istio.io/waypoint-for``: which traffic a waypoint takes."""

    SERVICE = "service"
    WORKLOAD = "workload"
    ALL = "all"
    NONE = "none"

    @property
    def serves_services(self) -> bool:
        return self in (TrafficType.SERVICE, TrafficType.ALL)

    @property
    def serves_workloads(self) -> bool:
        return self in (TrafficType.WORKLOAD, TrafficType.ALL)


class Source(enum.StrEnum):
    """Where a binding request came from (``NONE``: nothing asked for a waypoint)."""

    NONE = ""
    OWN = "own-waypoint"
    POD = "pod"
    SERVICE = "service"
    SERVICE_ACCOUNT = "service-account"
    NAMESPACE = "namespace"


class Waypoint(msgspec.Struct, frozen=True):
    """A Gateway of class ``istio-waypoint`` as the registry sees it.

    ``refused``: why it is not a waypoint at all ("" when accepted). ``address``: where ztunnel sends its
    traffic, None until usable; ``not_ready`` says why ("" once usable).
    """

    namespace: str
    name: str
    traffic_type: TrafficType = TrafficType.SERVICE
    service_account: str = ""  # the per-service-account model: the account it serves ("" otherwise)
    hostname: str = ""  # <name>.<ns>.svc.<domain suffix>: the waypoint Service the controller makes
    address: GatewayAddress | None = None
    refused: str = ""
    not_ready: str = ""
    allowed_from: str = "Same"  # allowedRoutes.namespaces.from of the HBONE listener
    allowed_selector: dict[str, str] | None = None  # matchLabels when allowed_from is Selector

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def usable(self) -> bool:
        return not self.refused and self.address is not None

    def admits(self, namespace: str, namespace_labels: Mapping[str, str]) -> bool:
        """Whether workloads and Services of ``namespace`` may use this waypoint."""
        if namespace == self.namespace or self.allowed_from == "All":
            return True
        if self.allowed_from == "Selector" and self.allowed_selector is not None:
            return all(namespace_labels.get(k) == v for k, v in self.allowed_selector.items())
        return False


class WaypointRequest(msgspec.Struct, frozen=True):
    """What an object's own labels ask for: a waypoint name ("" none asked, ``none`` opt-out)."""

    use_waypoint: str = ""
    use_waypoint_namespace: str = ""
    own_waypoint: bool = False  # the object belongs to a waypoint (or other gateway) itself


NO_REQUEST = WaypointRequest()


class Binding(msgspec.Struct, frozen=True):
    """The decision for one workload or Service: the waypoint to use (or None) and why.

    ``problem`` is set when a label is at fault (it names a missing or inadmissible waypoint): the registry
    reports ``reason`` against the object carrying the label (a namespace's label: on the namespace only).
    """

    waypoint: GatewayAddress | None = None
    gateway: str = ""  # "ns/name" of the waypoint considered ("" when none)
    source: Source = Source.NONE
    reason: str = "no waypoint requested"
    problem: Reason | None = None  # set when ``reason`` is a problem of the object's own label


UNBOUND = Binding()


class WaypointTable(Protocol):
    """The known waypoints, looked up by name and by the service account they serve."""

    def waypoint(self, namespace: str, name: str) -> Waypoint | None: ...

    def for_service_account(self, namespace: str, service_account: str) -> Waypoint | None: ...


class SimpleWaypointTable:
    """A ``WaypointTable`` over a list of waypoints (full computes and tests)."""

    def __init__(self, waypoints: Iterable[Waypoint] = ()) -> None:
        self._by_name: dict[tuple[str, str], Waypoint] = {}
        by_namespace: dict[str, list[Waypoint]] = {}
        for wp in waypoints:
            self._by_name[(wp.namespace, wp.name)] = wp
            by_namespace.setdefault(wp.namespace, []).append(wp)
        self._by_account = {
            (ns, sa): wp
            for ns, wps in by_namespace.items()
            for sa, wp in service_account_waypoints(wps).items()
        }

    def waypoint(self, namespace: str, name: str) -> Waypoint | None:
        return self._by_name.get((namespace, name))

    def for_service_account(self, namespace: str, service_account: str) -> Waypoint | None:
        return self._by_account.get((namespace, service_account))


# --- Gateways ---------------------------------------------------------------------------------------------


def is_waypoint_gateway(gateway: Resource) -> bool:
    return gateway.kind == "Gateway" and gateway.spec.get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS


def mesh_listener(gateway: Resource) -> Mapping[str, Any] | None:
    """The Gateway's HBONE listener on 15008 (Istio's ``mesh`` listener), or None."""
    listeners = gateway.spec.get("listeners")
    for listener in listeners if isinstance(listeners, list) else ():
        if (
            isinstance(listener, dict)
            and listener.get("port") == MESH_LISTENER_PORT
            and listener.get("protocol") == MESH_LISTENER_PROTOCOL
        ):
            return listener
    return None


def gateway_service_account(gateway: Resource) -> tuple[str, str]:
    """(service account from ``istio.io/for-service-account``, problem); ("", "") when not per-SA."""
    annotated = gateway.annotations.get(FOR_SERVICE_ACCOUNT, "")
    labelled = gateway.labels.get(FOR_SERVICE_ACCOUNT, "")
    if annotated and labelled and annotated != labelled:
        return "", (
            f"the {FOR_SERVICE_ACCOUNT} annotation ({annotated!r}) and label ({labelled!r}) disagree; "
            "keep one of them"
        )
    account = annotated or labelled
    if account:
        bad = name_problem(account, label=False)
        if bad:
            return "", f"{FOR_SERVICE_ACCOUNT}: {bad}"
    return account, ""


def gateway_refusal(gateway: Resource) -> str:
    """Why an ``istio-waypoint`` Gateway cannot be a waypoint ("" when it can); says what to change."""
    if mesh_listener(gateway) is None:
        return (
            "a waypoint needs a listener {name: mesh, port: 15008, protocol: HBONE}; add it to "
            "spec.listeners (ambientctl waypoint generate prints a complete Gateway)"
        )
    bad_name = name_problem(gateway.name, label=True)
    if bad_name:
        return (
            f"the waypoint's Service is named after the Gateway, so the name must be a DNS label: {bad_name}"
        )
    traffic = gateway.labels.get(WAYPOINT_FOR)
    if traffic is not None and traffic not in TrafficType.__members__.values():
        return (
            f"{WAYPOINT_FOR}={traffic!r} is not one of service, workload, all, none; "
            "fix the label (or remove it for the default, service)"
        )
    _, sa_problem = gateway_service_account(gateway)
    if sa_problem:
        return sa_problem
    listener = mesh_listener(gateway)
    assert listener is not None
    _, _, allowed_problem = _allowed_routes(listener)
    return allowed_problem


def _allowed_routes(listener: Mapping[str, Any]) -> tuple[str, dict[str, str] | None, str]:
    """(from, matchLabels, problem) of a listener's ``allowedRoutes.namespaces``."""
    allowed = listener.get("allowedRoutes")
    namespaces = allowed.get("namespaces") if isinstance(allowed, dict) else None
    if not isinstance(namespaces, dict):
        return "Same", None, ""
    from_ = namespaces.get("from", "Same")
    if from_ in ("Same", "All"):
        return str(from_), None, ""
    if from_ == "Selector":
        selector = namespaces.get("selector")
        labels = selector.get("matchLabels") if isinstance(selector, dict) else None
        if isinstance(selector, dict) and selector.get("matchExpressions"):
            return (
                "Same",
                None,
                (
                    "allowedRoutes.namespaces.selector.matchExpressions is not supported for waypoints; "
                    "use matchLabels"
                ),
            )
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            return (
                "Same",
                None,
                "allowedRoutes.namespaces.from is Selector but selector.matchLabels is missing",
            )
        return "Selector", dict(labels), ""
    return "Same", None, f"allowedRoutes.namespaces.from={from_!r} is not one of Same, All, Selector"


def gateway_address(gateway: Resource, network: str) -> tuple[GatewayAddress | None, str]:
    """(the bindable address from ``status.addresses``, why there is none)."""
    addresses = gateway.status.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        return None, "status.addresses is empty: the waypoint controller has not programmed it yet"
    hostnames: list[str] = []
    for entry in addresses:
        if not isinstance(entry, dict):
            continue
        kind = entry.get("type") or "IPAddress"
        value = entry.get("value")
        if kind == "IPAddress":
            try:
                ip = str(ipaddress.ip_address(value)) if isinstance(value, str) else ""
            except ValueError:
                ip = ""
            if not ip:
                continue
            return GatewayAddress(address=NetworkAddress(ip, network), hbone_mtls_port=MESH_LISTENER_PORT), ""
        if kind == "Hostname" and isinstance(value, str):
            hostnames.append(value)
    if hostnames:
        return None, (
            f"status.addresses has only hostname {hostnames[0]}: waiting for the waypoint Service's cluster IP"
        )
    return None, "status.addresses has no usable IPAddress"


def waypoint_from_gateway(
    gateway: Resource, *, network: str = "", domain_suffix: str = "cluster.local"
) -> Waypoint | None:
    """The ``Waypoint`` of an ``istio-waypoint`` Gateway (possibly refused); None for any other Gateway."""
    if not is_waypoint_gateway(gateway):
        return None
    base = Waypoint(
        namespace=gateway.namespace,
        name=gateway.name,
        hostname=f"{gateway.name}.{gateway.namespace}.svc.{domain_suffix}",
    )
    refused = gateway_refusal(gateway)
    if refused:
        return msgspec.structs.replace(base, refused=refused)
    listener = mesh_listener(gateway)
    assert listener is not None
    allowed_from, allowed_selector, _ = _allowed_routes(listener)
    account, _ = gateway_service_account(gateway)
    traffic = gateway.labels.get(WAYPOINT_FOR)
    default = TrafficType.ALL if account else TrafficType.SERVICE
    address, not_ready = gateway_address(gateway, network)
    return msgspec.structs.replace(
        base,
        traffic_type=TrafficType(traffic) if traffic is not None else default,
        service_account=account,
        address=address,
        not_ready=not_ready,
        allowed_from=allowed_from,
        allowed_selector=allowed_selector,
    )


def service_account_waypoints(waypoints: Iterable[Waypoint]) -> dict[str, Waypoint]:
    """Per service account, the waypoint serving it: of several, the first by name (others are reported)."""
    chosen: dict[str, Waypoint] = {}
    for wp in sorted(waypoints, key=lambda w: w.name):
        if wp.service_account and not wp.refused:
            chosen.setdefault(wp.service_account, wp)
    return chosen


def gateway_problems(
    gateway_refs: Mapping[str, ResourceRef], waypoints: Mapping[str, Waypoint]
) -> dict[str, list[Problem]]:
    """Problems of one namespace's waypoint Gateways (by name): refusals, duplicates per SA, not ready yet."""
    chosen = service_account_waypoints(waypoints.values())
    out: dict[str, list[Problem]] = {}
    for name, wp in waypoints.items():
        ref = gateway_refs[name]
        found: list[Problem] = []
        if wp.refused:
            found.append(
                Problem(ref, Severity.ERROR, Reason.INVALID_WAYPOINT, f"not a usable waypoint: {wp.refused}")
            )
        else:
            if wp.service_account and chosen.get(wp.service_account) is not wp:
                other = chosen[wp.service_account]
                found.append(
                    Problem(
                        ref,
                        Severity.WARNING,
                        Reason.WAYPOINT_CONFLICT,
                        f"waypoint {other.key} already serves service account {wp.service_account!r} "
                        f"(the first by name wins); this one serves it nothing. Delete one of them",
                    )
                )
            if wp.address is None:
                found.append(
                    Problem(
                        ref,
                        Severity.INFO,
                        Reason.WAYPOINT_NOT_READY,
                        f"{wp.not_ready}; nothing is bound to this waypoint until it has an address "
                        "(traffic stays L4-only meanwhile)",
                    )
                )
        if found:
            out[name] = found
    return out


# --- binding ----------------------------------------------------------------------------------------------


def request_from_labels(labels: Mapping[str, str]) -> WaypointRequest:
    """What an object's labels ask of waypoint binding."""
    own = GATEWAY_NAME_LABEL in labels or MANAGED_GATEWAY_LABEL in labels
    use = labels.get(USE_WAYPOINT, "")
    if not own and not use:
        return NO_REQUEST
    return WaypointRequest(use, labels.get(USE_WAYPOINT_NAMESPACE, "") if use else "", own)


def _subject(source: Source) -> str:
    return {
        Source.POD: "the pod's",
        Source.SERVICE: "the Service's",
        Source.NAMESPACE: "the namespace's",
    }.get(source, "")


def _by_label(
    source: Source,
    request: WaypointRequest,
    namespace: str,
    namespace_labels: Mapping[str, str],
    waypoints: WaypointTable,
) -> tuple[Waypoint | None, Binding | None]:
    """Resolve an ``istio.io/use-waypoint`` label: (waypoint, None) or (None, an unbound decision)."""
    label = f"{_subject(source)} {USE_WAYPOINT}"
    if request.use_waypoint == NO_WAYPOINT:
        return None, Binding(source=source, reason=f"opted out: {label}=none")
    target_ns = request.use_waypoint_namespace or namespace
    key = f"{target_ns}/{request.use_waypoint}"
    wp = waypoints.waypoint(target_ns, request.use_waypoint)
    if wp is None:
        why = (
            f"{label} names waypoint {key}, which does not exist (no Gateway of class istio-waypoint "
            f"with that name); nothing is bound. Deploy it (ambientctl waypoint apply -n {target_ns} "
            f"--name {request.use_waypoint}) or fix the label"
        )
        return None, Binding(gateway=key, source=source, reason=why, problem=Reason.WAYPOINT_NOT_FOUND)
    if not wp.admits(namespace, namespace_labels):
        why = (
            f"{label} names waypoint {key}, which does not admit namespace {namespace}: its HBONE "
            f"listener's allowedRoutes.namespaces.from is {wp.allowed_from}; set it to All (or a Selector "
            f"matching namespace {namespace}); nothing is bound"
        )
        return None, Binding(gateway=key, source=source, reason=why, problem=Reason.WAYPOINT_NOT_ALLOWED)
    return wp, None


def _namespace_request(namespace_labels: Mapping[str, str]) -> WaypointRequest:
    use = namespace_labels.get(USE_WAYPOINT, "")
    return (
        WaypointRequest(use, namespace_labels.get(USE_WAYPOINT_NAMESPACE, "") if use else "")
        if use
        else NO_REQUEST
    )


def _decide(kind: str, wp: Waypoint, source: Source, how: str) -> Binding:
    """Bind to ``wp`` if it is usable and takes ``kind`` ("service" or "workload") traffic."""
    serves = wp.traffic_type.serves_services if kind == "service" else wp.traffic_type.serves_workloads
    if wp.refused:
        return Binding(
            gateway=wp.key, source=source, reason=f"waypoint {wp.key} ({how}) is refused: {wp.refused}"
        )
    if not serves:
        return Binding(
            gateway=wp.key,
            source=source,
            reason=(
                f"waypoint {wp.key} ({how}) does not take {kind}-addressed traffic "
                f"({WAYPOINT_FOR}={wp.traffic_type.value}); not bound"
            ),
        )
    if wp.address is None:
        return Binding(
            gateway=wp.key,
            source=source,
            reason=f"waypoint {wp.key} ({how}) is not ready: {wp.not_ready}; not bound yet (traffic stays L4-only)",
        )
    return Binding(wp.address, wp.key, source, f"bound to waypoint {wp.key} ({how})")


def _bind(
    kind: str,
    *,
    namespace: str,
    request: WaypointRequest,
    own_source: Source,
    namespace_labels: Mapping[str, str],
    service_accounts: Collection[str],
    waypoints: WaypointTable,
) -> Binding:
    if request.own_waypoint:
        return Binding(source=Source.OWN, reason="a waypoint's (or gateway's) own: never bound to a waypoint")
    # 1. The object's own label.
    if request.use_waypoint:
        wp, unbound = _by_label(own_source, request, namespace, namespace_labels, waypoints)
        if wp is None:
            assert unbound is not None
            return unbound
        return _decide(kind, wp, own_source, f"{_subject(own_source)} {USE_WAYPOINT} label")
    # 2. Per service account.
    mixed = ""
    if len(service_accounts) == 1:
        (account,) = service_accounts
        wp = waypoints.for_service_account(namespace, account)
        if wp is not None:
            return _decide(kind, wp, Source.SERVICE_ACCOUNT, f"{FOR_SERVICE_ACCOUNT}={account}")
    elif len(service_accounts) > 1:
        served = sorted(
            a for a in service_accounts if waypoints.for_service_account(namespace, a) is not None
        )
        if served:
            mixed = (
                f"endpoints run as several service accounts ({', '.join(sorted(service_accounts))}), so "
                f"the per-service-account waypoint of {', '.join(served)} is not bound to the Service"
            )
    # 3. The namespace's label.
    ns_request = _namespace_request(namespace_labels)
    if ns_request.use_waypoint:
        wp, unbound = _by_label(Source.NAMESPACE, ns_request, namespace, namespace_labels, waypoints)
        if wp is None:
            assert unbound is not None
            decision = msgspec.structs.replace(unbound, problem=None)  # reported on the namespace itself
        else:
            decision = _decide(kind, wp, Source.NAMESPACE, f"the namespace's {USE_WAYPOINT} label")
        if mixed:
            decision = msgspec.structs.replace(decision, reason=f"{mixed}; {decision.reason}")
        return decision
    if mixed:
        return Binding(source=Source.SERVICE_ACCOUNT, reason=f"{mixed}; no waypoint")
    return UNBOUND


def bind_workload(
    *,
    namespace: str,
    labels: Mapping[str, str],
    service_account: str,
    namespace_labels: Mapping[str, str],
    waypoints: WaypointTable,
) -> Binding:
    """``Workload.waypoint`` of a pod with ``labels`` running as ``service_account`` in ``namespace``."""
    return _bind(
        "workload",
        namespace=namespace,
        request=request_from_labels(labels),
        own_source=Source.POD,
        namespace_labels=namespace_labels,
        service_accounts=(service_account,),
        waypoints=waypoints,
    )


def bind_service(
    *,
    namespace: str,
    request: WaypointRequest,
    namespace_labels: Mapping[str, str],
    service_accounts: Collection[str],
    waypoints: WaypointTable,
) -> Binding:
    """``Service.waypoint`` of a Service (``request`` from its labels) whose endpoints run as
    ``service_accounts`` (the distinct accounts of the pods it selects)."""
    return _bind(
        "service",
        namespace=namespace,
        request=request,
        own_source=Source.SERVICE,
        namespace_labels=namespace_labels,
        service_accounts=service_accounts,
        waypoints=waypoints,
    )


def namespace_problem(
    ref: ResourceRef, namespace_labels: Mapping[str, str], waypoints: WaypointTable
) -> Problem | None:
    """A namespace whose ``istio.io/use-waypoint`` names a waypoint that is missing or does not admit it."""
    request = _namespace_request(namespace_labels)
    if not request.use_waypoint:
        return None
    _, unbound = _by_label(Source.NAMESPACE, request, ref.name, namespace_labels, waypoints)
    return binding_problem(ref, unbound) if unbound is not None else None


def binding_problem(ref: ResourceRef, binding: Binding) -> Problem | None:
    """The problem to report against the object whose own label produced ``binding``, if any."""
    if binding.problem is None:
        return None
    return Problem(ref, Severity.WARNING, binding.problem, binding.reason)

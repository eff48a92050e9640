"""``ambientctl explain``: what the data plane decides for a connection, and why. PURE (no I/O).

``explain(config, src, dst_ip, dst_port, request=None)`` answers, for a connection from workload ``src``
to ``dst_ip:dst_port``, on one configuration (``MeshConfig``: the workloads, services and L4 policies of a
``ProxyState``, the waypoints' L7 policies and the waypoints' addresses):
1. the route the source's ztunnel picks (ztunnel's rules, reference §4, the same order as
   ``ztunnel.proxy.routing.build_route``): service VIP (port must be exposed; its waypoint, else one of
   its usable endpoints), workload IP (its waypoint unless the source is that waypoint), or passthrough;
   HBONE to ``<pod ip>:15008`` for mesh destinations, plain TCP otherwise. Where ztunnel picks one among
   several (service endpoints, waypoint workloads), every candidate is listed (``Hop``), each with the
   CONNECT authority and the identities its certificate may carry; a refused route carries ztunnel's
   error reason and message;
2. through a waypoint: the L7 policies that apply there (``select_l7_policies``) and, when the request's
   method/path/headers are given, the decision ``evaluate_l7`` makes and which rule of which policy
   matched;
3. at each destination endpoint: the L4 policies enforced there (``ProxyState.policies_for``) with the
   decision ``evaluate_l4`` makes for the facts the destination ztunnel sees (the source's address and
   identity, or the waypoint's when traffic goes through one), and for each policy whether it matched
   and by which rule (found by evaluating the policy one rule at a time with the same function).
The functions used are the data plane's own (``meshcore.routing``, ``meshcore.policy``); the route rules
are restated here only because ambientctl may not import ztunnel, and tests check both agree.
``mesh_config_from_registry`` turns istiod-lite's ``/debug/registryz`` document back into model values.
Beside the prediction, what happened: ``record_query`` says which access-log records (``logs.LogRecord``,
the ztunnels' and waypoints' ``scope=access`` lines that ``tap`` and ``logs --denied`` read) are about
the explained source and destination (the source by its pod IP or name, the destination by the address
dialled, a hop's CONNECT authority, an endpoint's address or the service's hostname); ``last_seen``
picks the most recent such connection as each proxy logged it, and ``outcome`` reads a record's result
and, for a denial, its reason (the policy named in ztunnel's error, or the waypoint's 403 and policy).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec

from meshcore.identity import SpiffeId
from meshcore.model import (
    DEFAULT_HBONE_PORT,
    Action,
    Authorization,
    GatewayAddress,
    LoadBalancingMode,
    Scope,
    Service,
    Workload,
)
from meshcore.model.l7 import L7Action, L7Authorization
from meshcore.policy import ConnFacts, Decision, RequestFacts, evaluate_l4, evaluate_l7, select_l7_policies
from meshcore.policy.errors import PolicyError
from meshcore.routing import SockAddr, address_of, expected_identities, service_endpoints, service_port
from meshcore.state import ProxyState

from .logs import LogRecord, record_json

# ztunnel's own listener ports: a connection to one of them on loopback is refused (SelfCall).
ZTUNNEL_PORTS = frozenset({15001, 15006, 15008, 15080})

DIRECT, WAYPOINT, PASSTHROUGH = "Direct", "ToServerWaypoint", "Passthrough"


@dataclass(frozen=True, slots=True)
class WaypointInfo:
    """A waypoint Gateway (``namespace/name``) and the address workloads and services point to it by."""

    gateway: str
    address: GatewayAddress | None


@dataclass(frozen=True, slots=True)
class MeshConfig:
    state: ProxyState
    l7_policies: tuple[L7Authorization, ...] = ()
    waypoints: tuple[WaypointInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Hop:
    """One place the source's ztunnel may send the connection."""

    protocol: str  # HBONE | TCP
    next_hop: SockAddr
    authority: SockAddr | None  # CONNECT :authority (HBONE only)
    identities: tuple[SpiffeId, ...]  # what the next hop's certificate may carry
    workload: Workload | None  # the endpoint (direct) or the waypoint workload


@dataclass(frozen=True, slots=True)
class RoutePlan:
    kind: str  # Direct | ToServerWaypoint | Passthrough | "" when refused
    hops: tuple[Hop, ...] = ()
    service: Service | None = None
    workload: Workload | None = None  # the workload dialled (workload-addressed traffic)
    gateway: str = ""  # namespace/name of the waypoint Gateway, when known
    error_reason: str = ""  # ztunnel's RouteError class name when the connection is refused
    error: str = ""


@dataclass(frozen=True, slots=True)
class PolicyMatch:
    policy: str  # namespace/name
    action: str  # ALLOW | DENY | AUDIT
    dry_run: bool
    matched: bool
    rule: int | None = None  # index of the first rule that matched


@dataclass(frozen=True, slots=True)
class L4Verdict:
    """The destination ztunnel's decision for one endpoint."""

    workload: Workload
    facts: ConnFacts
    decision: Decision
    policies: tuple[PolicyMatch, ...]


@dataclass(frozen=True, slots=True)
class L7Verdict:
    gateway: str
    policies: tuple[PolicyMatch, ...]  # matched only set when a request was given
    decision: Decision | None = None  # None: no request given (the outcome depends on it)
    error: str = ""  # the request facts could not be built (the waypoint denies such requests)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """The HTTP request to evaluate at a waypoint (``--method``, ``--path``, ``--header``)."""

    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    authority: str = ""  # default: the destination as dialled


@dataclass(frozen=True, slots=True)
class Explanation:
    source: Workload
    destination: SockAddr
    route: RoutePlan
    l7: L7Verdict | None
    l4: tuple[L4Verdict, ...]

    @property
    def allowed(self) -> bool | None:
        """True: every endpoint allows it; False: refused (route, L7 or every endpoint's L4); None: depends
        (on the endpoint picked, or on the HTTP request when none was given at a waypoint with policies)."""
        if self.route.error:
            return False
        if self.l7 is not None:
            if self.l7.decision is None:
                if self.l7.policies:
                    return None
            elif not self.l7.decision.allowed:
                return False
        outcomes = {v.decision.allowed for v in self.l4}
        if not outcomes:
            return True
        return outcomes.pop() if len(outcomes) == 1 else None


# --- configuration from istiod-lite -------------------------------------------------------------------


def mesh_config_from_registry(registry: Mapping[str, Any]) -> MeshConfig:
    """The model values of istiod-lite's ``/debug/registryz`` (raises ``msgspec.ValidationError``)."""
    models: list[Any] = []
    models += [msgspec.convert(w, Workload) for w in registry.get("workloads") or ()]
    models += [msgspec.convert(s, Service) for s in registry.get("services") or ()]
    models += [msgspec.convert(p, Authorization) for p in registry.get("policies") or ()]
    l7 = tuple(msgspec.convert(p, L7Authorization) for p in registry.get("l7Policies") or ())
    waypoints = []
    for w in registry.get("waypoints") or ():
        if isinstance(w, Mapping) and w.get("address") is not None:
            address = msgspec.convert(w["address"], GatewayAddress)
            waypoints.append(WaypointInfo(f"{w.get('namespace')}/{w.get('name')}", address))
    return MeshConfig(ProxyState.of(*models), l7, tuple(waypoints))


# --- lookups --------------------------------------------------------------------------------------------


def find_workload(state: ProxyState, namespace: str, name: str) -> Workload | None:
    for w in state.workloads.values():
        if w.namespace == namespace and w.name == name:
            return w
    return None


def find_service(state: ProxyState, name: str, namespace: str | None = None) -> Service | None:
    """By ``name`` + ``namespace``, or by hostname (``echo.shop``, ``echo.shop.svc.cluster.local``)."""
    for s in state.services.values():
        if namespace is not None:
            if s.namespace == namespace and s.name == name:
                return s
        elif s.hostname == name or s.hostname.startswith(name + ".svc."):
            return s
    return None


# --- route ----------------------------------------------------------------------------------------------


def _waypoint_gateway(config: MeshConfig, gw: GatewayAddress) -> str:
    for w in config.waypoints:
        if w.address == gw:
            return w.gateway
    if gw.hostname is not None:  # <name>.<ns>.svc...: the waypoint Service the controller makes
        return f"{gw.hostname.namespace}/{gw.hostname.hostname.split('.', 1)[0]}"
    return ""


def _waypoint_candidates(state: ProxyState, gw: GatewayAddress) -> tuple[Service | None, list[Workload]]:
    if gw.address is not None:
        found = state.find_destination(gw.address.address, gw.address.network)
        if isinstance(found, Workload):
            return None, [found]
        if found is None:
            return None, []
        svc = found
    elif gw.hostname is not None:
        maybe = state.find_service(f"{gw.hostname.namespace}/{gw.hostname.hostname}")
        if maybe is None:
            return None, []
        svc = maybe
    else:
        return None, []
    return svc, [wl for wl, _ in state.endpoints(svc.key)]


def _refused(reason: str, dst: SockAddr, message: str, **about: Any) -> RoutePlan:
    return RoutePlan("", error_reason=reason, error=f"no route to {dst}: {message}", **about)


def plan_route(config: MeshConfig, src: Workload, dst_ip: str, dst_port: int) -> RoutePlan:
    """Every route the source's ztunnel may pick (module docstring, step 1)."""
    state = config.state
    try:
        ip = ipaddress.ip_address(dst_ip)
    except ValueError:
        return _refused("InvalidDestination", SockAddr(dst_ip, dst_port), f"{dst_ip!r} is not an IP address literal")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    dst = SockAddr(str(ip), dst_port)
    if not 1 <= dst_port <= 65535:
        return _refused("InvalidDestination", dst, f"port {dst_port!r} is outside 1..65535")
    if ip.is_loopback and dst_port in ZTUNNEL_PORTS:
        return _refused("SelfCall", dst, f"port {dst_port} is one of ztunnel's own listeners; refusing a loop")
    v6 = ip.version == 6
    found = state.find_destination(dst.ip, src.network)
    if isinstance(found, Service):
        svc = found
        port = service_port(svc, dst_port)
        if port is None:
            exposed = ", ".join(str(p.service_port) for p in svc.ports) or "none"
            return _refused("UnknownServicePort", dst, f"service {svc.key} exposes ports [{exposed}], not {dst_port}; "
                            "add the port to the Service or dial one it exposes",
                            service=svc)  # fmt: skip
        if svc.waypoint is not None and not _src_is_waypoint(state, src, svc.waypoint):
            return _via_waypoint(config, src, dst, svc.waypoint, service=svc, workload=None)
        usable, skipped = service_endpoints(state, svc, port, network=src.network, v6=v6)
        if not usable:
            lb = svc.load_balancing
            if lb is not None and lb.mode == LoadBalancingMode.PASSTHROUGH:
                return RoutePlan(PASSTHROUGH, (Hop("TCP", dst, None, (), None),), service=svc)
            why = ", ".join(f"{n} {what}" for what, n in skipped.items()) or "it has no endpoints"
            return _refused("NoHealthyUpstream", dst,
                            f"service {svc.key} has no usable endpoint for port {dst_port} ({why})", service=svc)  # fmt: skip
        hops = tuple(_direct(e.workload, e.address, e.port, svc) for e in usable)
        return RoutePlan(DIRECT, hops, service=svc)
    if isinstance(found, Workload):
        if found.waypoint is not None and not _src_is_waypoint(state, src, found.waypoint):
            return _via_waypoint(config, src, dst, found.waypoint, service=None, workload=found)
        return RoutePlan(DIRECT, (_direct(found, dst.ip, dst.port, None),), workload=found)
    return RoutePlan(PASSTHROUGH, (Hop("TCP", dst, None, (), None),))


def _src_is_waypoint(state: ProxyState, src: Workload, gw: GatewayAddress) -> bool:
    return any(wl.uid == src.uid for wl in _waypoint_candidates(state, gw)[1])


def _direct(wl: Workload, ip: str, port: int, svc: Service | None) -> Hop:
    if not wl.in_mesh:
        return Hop("TCP", SockAddr(ip, port), None, (), wl)
    sans = svc.subject_alt_names if svc is not None else ()
    return Hop("HBONE", SockAddr(ip, DEFAULT_HBONE_PORT), SockAddr(ip, port), expected_identities(wl.identity, sans), wl)


def _via_waypoint(
    config: MeshConfig, src: Workload, dst: SockAddr, gw: GatewayAddress, *, service: Service | None,
    workload: Workload | None,
) -> RoutePlan:  # fmt: skip
    gateway = _waypoint_gateway(config, gw)
    where = gw.address.address if gw.address is not None else (
        f"{gw.hostname.namespace}/{gw.hostname.hostname}" if gw.hostname is not None else "(no address)"
    )  # fmt: skip
    about: dict[str, Any] = {"service": service, "workload": workload, "gateway": gateway}
    if gw.address is not None and gw.address.network != src.network:
        return _refused("UnknownWaypoint", dst, f"waypoint {where} is on network {gw.address.network!r}, not this "
                        f"workload's {src.network!r}; cross-network waypoints (double HBONE) are not supported", **about)  # fmt: skip
    svc, workloads = _waypoint_candidates(config.state, gw)
    v6 = ":" in dst.ip
    usable = [
        (wl, addr)
        for wl in workloads
        if wl.healthy and wl.network == src.network and (addr := address_of(wl, v6)) is not None
    ]
    if not usable:
        what = "is unknown to this proxy" if not workloads else "has no healthy workload on this network"
        return _refused("UnknownWaypoint", dst, f"the destination's waypoint {where} {what}; check that the waypoint "
                        "is deployed and ready (traffic is refused rather than bypassing it)", **about)  # fmt: skip
    hops = []
    for wl, addr in usable:
        if svc is None and gw.address is not None:
            addr = gw.address.address
        sans = svc.subject_alt_names if svc is not None else ()
        hops.append(
            Hop("HBONE", SockAddr(addr, gw.hbone_mtls_port or DEFAULT_HBONE_PORT), dst,
                expected_identities(wl.identity, sans), wl)
        )  # fmt: skip
    return RoutePlan(WAYPOINT, tuple(hops), **about)


# --- policies -------------------------------------------------------------------------------------------


def l4_matches(policies: Iterable[Authorization], facts: ConnFacts) -> tuple[PolicyMatch, ...]:
    """Each policy: did it match these facts, and by which rule (each rule evaluated alone)."""
    out = []
    for p in policies:
        alone = msgspec.structs.replace(p, action=Action.DENY, dry_run=False)
        rule = None
        for i, r in enumerate(p.rules):
            if not evaluate_l4([msgspec.structs.replace(alone, rules=(r,))], facts).allowed:
                rule = i
                break
        out.append(PolicyMatch(p.key, "ALLOW" if p.action == Action.ALLOW else "DENY", p.dry_run, rule is not None, rule))
    return tuple(out)


def l7_matches(policies: Iterable[L7Authorization], facts: RequestFacts | None) -> tuple[PolicyMatch, ...]:
    out = []
    for p in policies:
        rule = None
        if facts is not None:
            alone = msgspec.structs.replace(p, action=L7Action.DENY, dry_run=False)
            for i, r in enumerate(p.rules):
                if not evaluate_l7([msgspec.structs.replace(alone, rules=(r,))], facts).allowed:
                    rule = i
                    break
        out.append(PolicyMatch(p.key, p.action.name, p.dry_run, rule is not None, rule))
    return tuple(out)


def _l4_for(state: ProxyState, wl: Workload, ip: str, port: int, peer_ip: str, peer: SpiffeId | None) -> L4Verdict:
    facts = ConnFacts(src_ip=peer_ip, src_port=0, dst_ip=ip, dst_port=port, src_identity=peer,
                      dst_network=wl.network)  # fmt: skip
    policies = state.policies_for(wl)
    return L4Verdict(wl, facts, evaluate_l4(policies, facts), l4_matches(policies, facts))


def explain(
    config: MeshConfig, src: Workload, dst_ip: str, dst_port: int, request: RequestSpec | None = None
) -> Explanation:
    """The route, the L7 decision at a waypoint and the L4 decision at each endpoint (module docstring)."""
    state = config.state
    route = plan_route(config, src, dst_ip, dst_port)
    dst = SockAddr(dst_ip, dst_port)
    src_ip = address_of(src, ":" in dst_ip) or "0.0.0.0"
    peer: SpiffeId | None = src.identity if src.in_mesh else None
    if route.error:
        return Explanation(src, dst, route, None, ())
    if route.kind == PASSTHROUGH:
        return Explanation(src, dst, route, None, ())
    if route.kind == DIRECT:
        verdicts = tuple(
            _l4_for(state, h.workload, (h.authority or h.next_hop).ip, (h.authority or h.next_hop).port,
                    src_ip, peer if h.protocol == "HBONE" else None)
            for h in route.hops if h.workload is not None and h.workload.in_mesh
        )  # fmt: skip
        return Explanation(src, dst, route, None, verdicts)
    # Through a waypoint: L7 there, then the waypoint's own connection to each endpoint (its identity).
    waypoint = route.hops[0].workload
    assert waypoint is not None
    l7 = _l7_verdict(config, route, src, src_ip, dst, request)
    wp_ip = address_of(waypoint, ":" in dst_ip) or "0.0.0.0"
    targets: list[tuple[Workload, str, int]] = []
    if route.service is not None:
        port = service_port(route.service, dst_port)
        if port is not None:
            usable, _ = service_endpoints(state, route.service, port, network=waypoint.network, v6=":" in dst_ip)
            targets = [(e.workload, e.address, e.port) for e in usable]
    elif route.workload is not None:
        targets = [(route.workload, dst.ip, dst.port)]
    verdicts = tuple(_l4_for(state, wl, ip, port, wp_ip, waypoint.identity) for wl, ip, port in targets if wl.in_mesh)
    return Explanation(src, dst, route, l7, verdicts)


def _l7_verdict(
    config: MeshConfig, route: RoutePlan, src: Workload, src_ip: str, dst: SockAddr, request: RequestSpec | None
) -> L7Verdict:
    service = route.service.hostname if route.service is not None else None
    policies = select_l7_policies(config.l7_policies, route.gateway, service)
    if request is None:
        return L7Verdict(route.gateway, l7_matches(policies, None))
    try:
        facts = RequestFacts(
            source_ip=src_ip,
            destination_ip=dst.ip,
            destination_port=dst.port,
            method=request.method,
            path=request.path,
            authority=request.authority or str(dst),
            headers=request.headers,
            source_principal=src.identity if src.in_mesh else None,
        )
    except (PolicyError, ValueError) as e:
        return L7Verdict(route.gateway, l7_matches(policies, None), None, f"unreadable request ({e}): denied")
    return L7Verdict(route.gateway, l7_matches(policies, facts), evaluate_l7(policies, facts))


# --- text -----------------------------------------------------------------------------------------------


def _who(w: Workload | None) -> str:
    if w is None:
        return "-"
    return f"{w.namespace}/{w.name} on {w.node or '?'} ({w.identity})"


def _match_lines(matches: Sequence[PolicyMatch], evaluated: bool) -> list[str]:
    lines = []
    for m in matches:
        flag = " (dry run)" if m.dry_run else ""
        if not evaluated:
            state = "applies"
        elif m.matched:
            state = f"matched rule {m.rule}"
        else:
            state = "no rule matched"
        lines.append(f"      {m.action:<5} {m.policy}{flag}: {state}")
    return lines or ["      (no policy applies)"]


def _decision(d: Decision) -> str:
    if d.allowed:
        return "ALLOW" + (f" (by {d.policy})" if d.policy else " (no ALLOW policy applies)")
    return f"DENY ({d.message})"


def render(e: Explanation) -> list[str]:
    """The explanation as the lines ``ambientctl explain`` prints."""
    r = e.route
    lines = [f"source:       {_who(e.source)}", f"destination:  {e.destination}"]
    if r.service is not None:
        lines.append(f"  service     {r.service.namespace}/{r.service.name} ({r.service.hostname})")
    if r.workload is not None:
        lines.append(f"  workload    {_who(r.workload)}")
    if r.error:
        lines += [f"route:        REFUSED by the source ztunnel ({r.error_reason})", f"  {r.error}"]
    else:
        label = {DIRECT: "direct", WAYPOINT: f"through waypoint {r.gateway or '?'}", PASSTHROUGH: "passthrough"}
        lines.append(f"route:        {label.get(r.kind, r.kind)} ({r.kind})" + (
            f", one of {len(r.hops)} picked per connection" if len(r.hops) > 1 else ""))  # fmt: skip
        for h in r.hops:
            if h.protocol == "HBONE":
                ids = ", ".join(str(i) for i in h.identities)
                lines.append(f"  HBONE to {h.next_hop} CONNECT {h.authority} [{_who(h.workload)}]")
                lines.append(f"    expected identity: {ids}")
            else:
                lines.append(f"  TCP (plaintext) to {h.next_hop}" + (
                    f" [{_who(h.workload)}, not in the mesh]" if h.workload is not None else " (not in the mesh)"))  # fmt: skip
    if e.l7 is not None:
        lines.append(f"L7 policy at waypoint {e.l7.gateway}:")
        lines += _match_lines(e.l7.policies, e.l7.decision is not None)
        if e.l7.error:
            lines.append(f"    decision: DENY 403 ({e.l7.error})")
        elif e.l7.decision is None:
            if e.l7.policies:
                lines.append("    decision: depends on the request (pass --method/--path/--header)")
            else:
                lines.append("    decision: ALLOW (no L7 policy applies)")
        else:
            lines.append(f"    decision: {_decision(e.l7.decision)}" + (
                "" if e.l7.decision.allowed else " -> 403 RBAC: access denied"))  # fmt: skip
    for v in e.l4:
        peer = v.facts.src_identity or "no identity (plaintext)"
        lines.append(f"L4 policy at {v.workload.namespace}/{v.workload.name} ({v.facts.dst_ip}:{v.facts.dst_port}) "
                     f"for {peer} from {v.facts.src_ip}:")  # fmt: skip
        lines += _match_lines(v.policies, True)
        lines.append(f"    decision: {_decision(v.decision)}")
    verdict = e.allowed
    lines.append("verdict:      " + {True: "ALLOWED", False: "DENIED", None: "DEPENDS (see above)"}[verdict])
    return lines


def to_json(e: Explanation) -> dict[str, Any]:
    def hop(h: Hop) -> dict[str, Any]:
        return {
            "protocol": h.protocol,
            "nextHop": str(h.next_hop),
            "authority": str(h.authority) if h.authority else None,
            "identities": [str(i) for i in h.identities],
            "workload": h.workload.uid if h.workload else None,
        }

    def decision(d: Decision | None) -> dict[str, Any] | None:
        if d is None:
            return None
        return {"allowed": d.allowed, "policy": d.policy, "message": d.message}

    def matches(ms: Sequence[PolicyMatch]) -> list[dict[str, Any]]:
        return [{"policy": m.policy, "action": m.action, "dryRun": m.dry_run, "matched": m.matched, "rule": m.rule}
                for m in ms]  # fmt: skip

    r = e.route
    return {
        "source": e.source.uid,
        "destination": str(e.destination),
        "route": {"kind": r.kind, "service": r.service.key if r.service else None,
                  "workload": r.workload.uid if r.workload else None, "waypoint": r.gateway or None,
                  "hops": [hop(h) for h in r.hops], "errorReason": r.error_reason or None, "error": r.error or None},
        "l7": None if e.l7 is None else {"gateway": e.l7.gateway, "policies": matches(e.l7.policies),
                                         "decision": decision(e.l7.decision), "error": e.l7.error or None},
        "l4": [{"workload": v.workload.uid, "peer": str(v.facts.src_identity) if v.facts.src_identity else None,
                "sourceIp": v.facts.src_ip, "destination": f"{v.facts.dst_ip}:{v.facts.dst_port}",
                "policies": matches(v.policies), "decision": decision(v.decision)} for v in e.l4],
        "allowed": e.allowed,
    }  # fmt: skip


# --- naming the endpoints ---------------------------------------------------------------------------------


class ExplainInputError(ValueError):
    """FROM or TO does not name a workload/service of the configuration; the message says what to write."""


def resolve_source(state: ProxyState, text: str, namespace: str = "default") -> Workload:
    """``pod/<ns>/<name>``, ``<ns>/<name>`` or ``<name>`` (in ``namespace``), or the workload's IP."""
    name = text.removeprefix("pod/")
    ns, sep, pod = name.partition("/")
    if not sep:
        ns, pod = namespace, name
    found = find_workload(state, ns, pod)
    if found is None:
        by_ip = state.find_workload_by_addr(text) if _is_ip(text) else None
        if by_ip is not None:
            return by_ip
        raise ExplainInputError(f"no workload {ns}/{pod} in the mesh's configuration: name a pod as <namespace>/<name>")
    return found


def resolve_destination(state: ProxyState, text: str, namespace: str = "default") -> tuple[str, int]:
    """``TO[:PORT]`` -> (ip, port). TO: an IP, ``svc/<ns>/<name>``, ``pod/<ns>/<name>``, a service host
    (``echo.shop``, ``echo.shop.svc.cluster.local``, or ``echo`` in ``namespace``). Without a port: a
    service's first port; a pod's is required."""
    head, sep, port_text = text.rpartition(":")
    if sep and port_text.isdigit() and not head.endswith(":"):
        target, port = head, int(port_text)
    else:
        target, port = text, None
    target = target.strip("[]")
    if _is_ip(target):
        if port is None:
            raise ExplainInputError(f"{text}: give the port as {target}:PORT")
        return target, port
    if target.startswith("pod/"):
        wl = resolve_source(state, target, namespace)
        if port is None:
            raise ExplainInputError(f"{text}: give the port as {target}:PORT")
        addr = address_of(wl, False)
        if addr is None:
            raise ExplainInputError(f"workload {wl.namespace}/{wl.name} has no IP address")
        return addr, port
    if target.startswith(("svc/", "service/")):
        ns, _, name = target.split("/", 1)[1].partition("/")
        svc = find_service(state, name, ns)
    else:
        svc = find_service(state, target) or (find_service(state, target, namespace) if "." not in target else None)
    if svc is None or not svc.addresses:
        raise ExplainInputError(
            f"{target!r} is not a service with an address in the mesh's configuration: "
            "write svc/<namespace>/<name>, <name>.<namespace>, pod/<namespace>/<name>:PORT or IP:PORT"
        )
    if port is None:
        if not svc.ports:
            raise ExplainInputError(f"service {svc.key} has no ports")
        port = svc.ports[0].service_port
    return svc.addresses[0].address, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- one pod ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodSummary:
    """What applies to traffic *to* a workload: its services, its waypoint and the policies enforced."""

    workload: Workload
    services: tuple[Service, ...]
    waypoint: str  # namespace/name of the Gateway ("" none)
    l4_policies: tuple[Authorization, ...]
    l7_policies: tuple[L7Authorization, ...]
    missing_policies: tuple[str, ...]


def describe_pod(config: MeshConfig, wl: Workload) -> PodSummary:
    state = config.state
    services = tuple(s for key in wl.services if (s := state.find_service(key)) is not None)
    gateway = _waypoint_gateway(config, wl.waypoint) if wl.waypoint is not None else ""
    l7: list[L7Authorization] = []
    for svc in services:
        if svc.waypoint is not None:
            gw = _waypoint_gateway(config, svc.waypoint)
            l7 += [p for p in select_l7_policies(config.l7_policies, gw, svc.hostname) if p not in l7]
    if gateway:
        l7 += [p for p in select_l7_policies(config.l7_policies, gateway, None) if p not in l7]
    return PodSummary(wl, services, gateway, state.policies_for(wl), tuple(l7), state.missing_policies(wl))


def render_pod(s: PodSummary) -> list[str]:
    w = s.workload
    lines = [
        f"pod:          {w.namespace}/{w.name} on {w.node or '?'}",
        f"identity:     {w.identity}" + ("" if w.in_mesh else " (not in the mesh: plain TCP, no policy enforced)"),
        f"addresses:    {', '.join(w.addresses) or '-'}",
        "services:     " + (", ".join(f"{x.hostname} ({x.addresses[0].address if x.addresses else 'no VIP'})"
                                      for x in s.services) or "-"),
        f"waypoint:     {s.waypoint or '-'} (workload-addressed traffic)",
    ]  # fmt: skip
    for svc in s.services:
        if svc.waypoint is not None:
            lines.append(f"  service {svc.hostname} uses waypoint {_waypoint_gateway_text(svc.waypoint)}")
    lines.append("L4 policies enforced by its ztunnel (inbound):")
    for p in s.l4_policies:
        scope = {Scope.GLOBAL: "global", Scope.NAMESPACE: "namespace", Scope.WORKLOAD_SELECTOR: "selector"}.get(
            p.scope, str(p.scope)
        )
        lines.append(f"      {'ALLOW' if p.action == Action.ALLOW else 'DENY':<5} {p.key} ({scope}, {len(p.rules)} rule(s))"
                     + (" dry run" if p.dry_run else ""))  # fmt: skip
    if not s.l4_policies:
        lines.append("      (none: every mesh peer is allowed)")
    for name in s.missing_policies:
        lines.append(f"      ?     {name} (named by the workload but not received: ztunnel skips it, so it is not enforced until it arrives)")
    lines.append("L7 policies at its waypoints:")
    for lp in s.l7_policies:
        lines.append(f"      {lp.action.name:<5} {lp.key}" + (" dry run" if lp.dry_run else ""))
    if not s.l7_policies:
        lines.append("      (none)")
    return lines


def _waypoint_gateway_text(gw: GatewayAddress) -> str:
    if gw.hostname is not None:
        return f"{gw.hostname.namespace}/{gw.hostname.hostname}"
    return gw.address.address if gw.address is not None else "?"


# --- the access log beside the prediction -------------------------------------------------------------------

# Records of one connection, as the proxies it crossed logged it, are this close in time to each other.
SAME_CONNECTION = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """What an access-log record must name to be about an explained connection."""

    source: tuple[str, str]  # (namespace, name) of the source workload
    source_ips: frozenset[str]
    destinations: frozenset[str]  # ``ip:port``: dialled, CONNECT authorities, endpoints, direct hops
    service: str = ""  # hostname, when a service was dialled


def record_query(e: Explanation) -> RecordQuery:
    dests = {str(e.destination)}
    for h in e.route.hops:
        dests.add(str(h.authority if h.authority is not None else h.next_hop))
    dests.update(str(SockAddr(v.facts.dst_ip, v.facts.dst_port)) for v in e.l4)
    service = e.route.service.hostname if e.route.service is not None else ""
    return RecordQuery((e.source.namespace, e.source.name), frozenset(e.source.addresses), frozenset(dests), service)


def _ip_of(addr: str) -> str:
    host = addr.rpartition(":")[0] if addr.count(":") == 1 or addr.startswith("[") else addr
    return host.strip("[]")


def _namespace_of(f: Mapping[str, str]) -> str | None:
    if "src.namespace" in f:
        return f["src.namespace"]
    identity = f.get("src.identity", "")
    _, sep, rest = identity.partition("/ns/")
    return rest.split("/", 1)[0] if sep else None


def about(record: LogRecord, q: RecordQuery) -> bool:
    """Whether an access record is about the source and destination of ``q``."""
    if not record.is_access:
        return False
    f = record.fields
    ns, name = q.source
    by_ip = _ip_of(f.get("src.addr", "")) in q.source_ips
    by_name = f.get("src.workload") == name and _namespace_of(f) in (ns, None)
    if not (by_ip or by_name):
        return False
    if q.service and f.get("dst.service") == q.service:
        return True
    return f.get("dst.hbone_addr") in q.destinations or f.get("dst.addr") in q.destinations


def last_seen(records: Iterable[LogRecord], q: RecordQuery, window: timedelta = SAME_CONNECTION) -> tuple[LogRecord, ...]:
    """The most recent record about ``q`` and, from each other proxy (and direction), its latest one
    within ``window`` of it: the last connection as each proxy it crossed logged it, newest first."""
    latest: dict[tuple[str, str], tuple[datetime, LogRecord]] = {}
    for r in records:
        if r.time is None or not about(r, q):
            continue
        key = (r.source, r.fields.get("direction", r.event))
        if key not in latest or r.time >= latest[key][0]:
            latest[key] = (r.time, r)
    if not latest:
        return ()
    ordered = sorted(latest.values(), key=lambda pair: pair[0], reverse=True)
    newest = ordered[0][0]
    return tuple(r for when, r in ordered if newest - when <= window)


def outcome(record: LogRecord) -> tuple[str, str]:
    """(``DENIED`` | ``FAILED`` | ``OK``, why) for one access record."""
    f = record.fields
    if record.event == "request complete":
        code = f.get("response_code", "")
        detail = f.get("detail", "")
        if code == "403" or detail.startswith("rbac_access_denied"):
            by = f" by {f['policy']}" if f.get("policy") else ""
            return "DENIED", f"HTTP 403{by}" + (f" ({detail})" if detail else "")
        flags = f.get("response_flags", "-")
        failed = not code or code == "0" or code.startswith("5")
        return ("FAILED" if failed else "OK"), f"HTTP {code or '-'}" + (f" {flags}" if flags not in ("-", "") else "")
    error = f.get("error")
    if error is not None:
        lowered = error.lower()
        denied = "denied" in lowered or "policy rejection" in lowered or " 401" in error
        return ("DENIED" if denied else "FAILED"), error
    return "OK", f"{f.get('bytes_sent', '-')}/{f.get('bytes_recv', '-')} bytes in {f.get('duration', '-')}"


def render_last_seen(records: Sequence[LogRecord]) -> list[str]:
    """The lines ``explain`` prints under its verdict: what the access logs last recorded."""
    if not records:
        return ["last seen:    no access-log record for this source and destination"]
    newest = records[0].time
    when = f"{newest:%Y-%m-%d %H:%M:%S}Z" if newest is not None else "?"
    lines = [f"last seen:    {when} in the access logs, as each proxy logged it"]
    for r in records:
        word, why = outcome(r)
        where = f"{r.source} ({r.fields.get('direction', r.event)})"
        stamp = f"{r.time:%H:%M:%S.%f}"[:-3] if r.time is not None else "-"
        lines.append(f"  {stamp} {where}: {word}: {why}")
    return lines


def last_seen_json(records: Sequence[LogRecord]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        word, why = outcome(r)
        out.append({**record_json(r), "outcome": word, "reason": why})
    return out

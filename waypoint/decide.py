"""Per-request decisions of the waypoint, as pure functions over one ``WaypointState`` snapshot.

``decide(state, me, request, pick)`` answers one HTTP request with a ``Routed`` value:
1. Where was it going? The HBONE CONNECT authority (the original destination: a service VIP and port,
   or a pod IP and port) is looked up in the snapshot. Unknown: 404 ``NR`` (no route), never a guess.
2. Is it allowed? The L7 policies that apply here (``select_l7_policies``: those targeting this
   waypoint's Gateway, and those targeting the destination service) are evaluated on the request's
   facts (``evaluate_l7``). Denied: 403 ``RBAC: access denied``, as Istio users expect. Facts that
   cannot be built (a request the policy engine cannot read) are denied too: fail closed.
3. Which route? ``router.route`` over the destination service's ``ServiceTraffic`` (HTTPRoute /
   VirtualService rules, DestinationRule, rate limit): no rule matches: 404 ``NR``; a redirect rule
   answers here (301/302/...) with its Location; else the rule's backend (chosen by weight with ``rand``)
   names the service, port and subset to use, and its header edits and URL rewrite go on the
   ``Forward``. No traffic config: the service as dialled. The ``RouteDecision`` rides on ``Routed.route``
   for the rest (rate limit, faults, pool limits, timeouts, retries, mirrors: ``app``/``resilience``).
4. To which endpoint? A service request goes to one of the backend service's usable endpoints for that port
   (healthy, on our network, serving the port), chosen per request by ``pick`` (``choose_endpoint``: an
   ``EndpointChooser`` applies the DestinationRule's subset, outlier ejection and load balancer, and
   lists alternatives for retries; a plain ``pick`` is round robin), so requests of one downstream
   connection may go to different endpoints; none usable: 503 ``UH``. A workload request goes to that
   workload as dialled.
The ``Forward`` names an ``HboneEndpoint``: the endpoint's pod IP and target port as the CONNECT
authority, its HBONE address, and the identities its certificate may carry. No I/O; the only state is
the ``pick``'s (cursors, ejections, read from its injected clock).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from meshcore.identity import SpiffeId
from meshcore.model import DEFAULT_HBONE_PORT, Service, Workload
from meshcore.model.traffic import Subset, TrafficPolicy
from meshcore.policy.decision import Decision
from meshcore.policy.errors import PolicyError
from meshcore.policy.l7 import L7PolicyCache, evaluate_l7, select_l7_policies
from meshcore.policy.request import RequestFacts, trusted_headers
from meshcore.routing import (
    Endpoint,
    SockAddr,
    canonical_ip,
    expected_identities,
    service_endpoints,
    service_port,
)
from waypoint.l7.model import Forward, LocalResponse, Request, Upstream
from waypoint.resilience.chooser import EndpointChooser
from waypoint.resilience.policies import lb_policy, outlier_policy
from waypoint.router import Rand, RouteDecision, route
from waypoint.state import WaypointState

RBAC_DENIED_BODY = b"RBAC: access denied"
NO_HEALTHY_UPSTREAM_BODY = b"no healthy upstream"

Pick = Callable[[str, int], int]
"""``pick(key, n)``: the index (0 <= i < n) of the endpoint to use for ``key`` (a service key)."""


@dataclass(frozen=True, slots=True)
class Me:
    """Who this waypoint is."""

    gateway: str  # namespace/name of its Gateway (what targetRefs name)
    identity: SpiffeId
    network: str = ""


@dataclass(frozen=True, slots=True)
class HboneEndpoint:
    """An upstream reached over HBONE: dial ``hbone`` with mTLS, then CONNECT ``authority``."""

    authority: SockAddr  # the endpoint pod's IP and target port
    hbone: SockAddr  # the pod IP and its HBONE port
    identities: tuple[SpiffeId, ...]  # what the peer's certificate may carry

    def __str__(self) -> str:
        return str(self.authority)


@dataclass(frozen=True, slots=True)
class Routed:
    """The decision for one request and what it is about (for metrics and the access log)."""

    decision: Forward | LocalResponse
    detail: str = ""  # why a local answer was given (Envoy's response_code_details)
    service: Service | None = None
    workload: Workload | None = None  # the endpoint chosen (or the workload dialled)
    policy: Decision | None = None  # the L7 authorization outcome, when it was evaluated
    pool: str = ""  # the endpoint pool (service key, "/subset" appended) when an EndpointChooser chose
    workloads: Mapping[str, Workload] = field(default_factory=dict)  # label -> workload of every candidate
    pool_size: int = 0  # usable endpoints in the pool (outlier detection's percentage base)
    route: RouteDecision | None = None  # the traffic route applied (retries, timeouts, faults, mirrors, limits)


def _local(status: int, body: bytes, flags: str, detail: str, **about: object) -> Routed:
    response = LocalResponse(status, body, response_flags=flags)
    return Routed(response, detail, **about)  # type: ignore[arg-type]


def destination_of(request: Request) -> SockAddr | None:
    """The CONNECT authority the request's tunnel was opened to, or None if unreadable."""
    text = request.connection.destination
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.removeprefix("[").removesuffix("]")
    try:
        return SockAddr(canonical_ip(host), int(port))
    except ValueError:
        return None


def request_facts(request: Request, dst: SockAddr) -> RequestFacts:
    """What L7 policy knows about ``request`` (raises ``PolicyError`` for facts it cannot read)."""
    headers = trusted_headers(request.headers)  # checked by the HTTP parser already
    conn = request.connection
    return RequestFacts(
        source_ip=canonical_ip(conn.source_ip) if conn.source_ip else "0.0.0.0",
        destination_ip=dst.ip,
        destination_port=dst.port,
        method=request.method,
        path=request.path,
        authority=request.authority,
        headers=headers,
        source_principal=conn.peer_identity,
    )


def decide(
    state: WaypointState, me: Me, request: Request, pick: Pick | EndpointChooser, *,
    cache: L7PolicyCache | None = None, rand: Rand = random.random,
) -> Routed:
    """The decision for one request (see the module docstring)."""
    dst = destination_of(request)
    if dst is None:
        return _local(404, b"no route", "NR", f"unreadable tunnel destination {request.connection.destination!r}")
    found = state.proxy.find_destination(dst.ip, me.network)
    service = found if isinstance(found, Service) else None
    target = found if isinstance(found, Workload) else None
    if found is None:
        return _local(404, b"no route", "NR", f"{dst} is neither a service nor a workload this waypoint knows")
    policies = select_l7_policies(state.l7_policies.values(), me.gateway, service.hostname if service else None)
    try:
        facts = request_facts(request, dst)
    except (PolicyError, ValueError) as exc:
        return _local(403, RBAC_DENIED_BODY, "-", f"rbac_access_denied: unreadable request ({exc})", service=service)
    verdict = evaluate_l7(policies, facts, cache=cache)
    if not verdict.allowed:
        why = f"rbac_access_denied_matched_policy[{verdict.policy}]" if verdict.policy else "rbac_access_denied"
        return _local(403, RBAC_DENIED_BODY, "-", why, service=service, workload=target, policy=verdict)
    if service is not None:
        return _route_service(state, me, request, pick, service, dst, verdict, rand)
    assert target is not None
    endpoint = HboneEndpoint(dst, SockAddr(dst.ip, DEFAULT_HBONE_PORT), (target.identity,))
    return Routed(Forward(endpoint, label=str(dst)), "", None, target, verdict)


def _route_service(
    state: WaypointState, me: Me, request: Request, pick: Pick | EndpointChooser, service: Service,
    dst: SockAddr, verdict: Decision, rand: Rand,
) -> Routed:
    """Steps 3 and 4 of ``decide`` for a request to ``service`` (the original destination)."""
    rd = route(state.traffic.get(service.key), request, rand=rand, port=dst.port)
    if rd.no_route:
        return _local(404, b"no route", "NR", f"service {service.key}: no route rule matches the request",
                      service=service, policy=verdict, route=rd)
    if rd.redirect is not None:
        status, location = rd.redirect
        response = LocalResponse(status, b"", headers=(("location", location),))
        return Routed(response, f"redirect by {rd.origin}", service, None, verdict, route=rd)
    target, want_port, traffic, subset = service, dst.port, rd.policy, rd.subset
    backend = rd.backend
    if backend is not None:
        if backend.port:
            want_port = backend.port
        if backend.service_key != service.key:
            found = state.proxy.find_service(backend.service_key)
            if found is None:
                return _local(503, NO_HEALTHY_UPSTREAM_BODY, "UH",
                              f"route {rd.origin}: backend service {backend.service_key} is unknown here",
                              service=service, policy=verdict, route=rd)
            target = found
            other = state.traffic.get(backend.service_key)
            dest_policy = other.policy if other is not None else None
            traffic = dest_policy.policy_for(backend.subset) if dest_policy is not None else None
            subset = dest_policy.subset(backend.subset) if dest_policy is not None and backend.subset else None
        if backend.subset and subset is None:
            return _local(503, NO_HEALTHY_UPSTREAM_BODY, "NC",
                          f"route {rd.origin}: subset {backend.subset!r} of {target.key} is defined by no "
                          "DestinationRule", service=target, policy=verdict, route=rd)
    port = service_port(target, want_port)
    if port is None:
        exposed = ", ".join(str(p.service_port) for p in target.ports) or "none"
        return _local(404, b"no route", "NR", f"service {target.key} exposes [{exposed}], not {want_port}",
                      service=target, policy=verdict, route=rd)
    usable, skipped = service_endpoints(state.proxy, target, port, network=me.network, v6=":" in dst.ip)
    if not usable:
        why = ", ".join(f"{n} {what}" for what, n in skipped.items()) or "it has no endpoints"
        return _local(503, NO_HEALTHY_UPSTREAM_BODY, "UH", f"service {target.key}: no usable endpoint ({why})",
                      service=target, policy=verdict, route=rd)
    routed = choose_endpoint(target, usable, request, pick, policy=verdict, traffic=traffic, subset=subset,
                             retries=rd.retry.attempts if rd.retry is not None else 0, route_decision=rd)
    forward = routed.decision
    if isinstance(forward, Forward) and rd.rule is not None:  # only a matched rule edits the request
        forward = replace(
            forward,
            set_headers=rd.set_headers, add_headers=rd.add_headers, remove_headers=rd.remove_headers,
            response_set_headers=rd.response_set_headers, response_add_headers=rd.response_add_headers,
            response_remove_headers=rd.response_remove_headers,
            path=rd.rewrite_path or None, authority=rd.rewrite_authority or None,
        )
        return replace(routed, decision=forward)
    return routed


def _hbone_endpoint(chosen: Endpoint, service: Service) -> HboneEndpoint:
    return HboneEndpoint(
        SockAddr(chosen.address, chosen.port),
        SockAddr(chosen.address, DEFAULT_HBONE_PORT),
        expected_identities(chosen.workload.identity, service.subject_alt_names),
    )


def choose_endpoint(
    service: Service, usable: Sequence[Endpoint], request: Request, pick: Pick | EndpointChooser, *,
    policy: Decision | None = None, traffic: TrafficPolicy | None = None, subset: Subset | None = None,
    retries: int = 0, route_decision: RouteDecision | None = None,
) -> Routed:
    """Step 3 of ``decide``: the endpoint among ``usable`` (the service's usable endpoints for the port).

    With an ``EndpointChooser``: only the ``subset``'s workloads (when a route named one), minus ejected
    endpoints (``traffic.outlier_detection``), balanced by ``traffic.load_balancer`` (round robin by
    default; a consistent hash reads its header or the source IP from ``request``); ``retries`` > 0
    adds up to that many other endpoints as ``Forward.alternatives``. None left: 503 ``UH`` saying why.
    With a plain ``pick``: round robin over ``usable``, as before the chooser existed.
    """
    pool = service.key
    if subset is not None:
        members = set(subset.workloads)
        usable = [e for e in usable if e.workload.uid in members]
        pool = f"{service.key}/{subset.name}"
        if not usable:
            return _local(503, NO_HEALTHY_UPSTREAM_BODY, "UH",
                          f"service {service.key}: subset {subset.name!r} has no usable endpoint",
                          service=service, policy=policy, route=route_decision)
    if not isinstance(pick, EndpointChooser):
        i = pick(service.key, len(usable))
        chosen = usable[i if 0 <= i < len(usable) else 0]
        endpoint = _hbone_endpoint(chosen, service)
        return Routed(Forward(endpoint, label=str(endpoint.authority)), "", service, chosen.workload, policy,
                      route=route_decision)
    lb = lb_policy(traffic.load_balancer if traffic else None)
    outlier = outlier_policy(traffic.outlier_detection if traffic else None)
    keys = [f"{SockAddr(e.address, e.port)}" for e in usable]
    hash_key = lb.hash_key(request.headers, request.connection.source_ip) if lb.hash_on is not None else None
    choice = pick.pick(pool, keys, lb, outlier, hash_key=hash_key, alternatives=min(retries, 3))
    if choice is None:
        return _local(503, NO_HEALTHY_UPSTREAM_BODY, "UH",
                      f"service {service.key}: every endpoint of {pool} is ejected by outlier detection",
                      service=service, policy=policy, route=route_decision)
    endpoints = [(_hbone_endpoint(usable[i], service), usable[i].workload) for i in choice.order]
    first, workload = endpoints[0]
    alternatives = tuple(Upstream(e, str(e.authority)) for e, _ in endpoints[1:])
    forward = Forward(first, label=str(first.authority), alternatives=alternatives)
    return Routed(forward, "", service, workload, policy, pool=pool,
                  workloads={str(e.authority): w for e, w in endpoints}, pool_size=len(usable), route=route_decision)


class RoundRobin:
    """``pick`` that cycles through the endpoints of each key (the process's only mutable routing state)."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def __call__(self, key: str, n: int) -> int:
        i = self._next.get(key, 0) % n
        self._next[key] = i + 1
        return i

"""Traffic resources -> one ``ServiceTraffic`` per destination service, for waypoints (pure), with status.

Sources: HTTPRoute and GRPCRoute (gateway.networking.k8s.io/v1) whose ``parentRefs`` name a Service of
their namespace (the GAMMA mesh model) or a waypoint Gateway (then ``spec.hostnames`` name the services);
VirtualService (networking.istio.io/v1, ``hosts`` = services, ``http`` only); DestinationRule; and our
HTTPLocalRateLimitPolicy (policy.ambientmesh.io/v1alpha1). ``compile_resource`` turns one resource into
its contributions (route entries, a policy or a rate limit per service key ``<ns>/<hostname>``) and the
status to write back; ``assemble`` builds a service's resource; ``update`` keeps a ``TrafficState``
current from batches of store changes, recompiling only what a change can affect: a route, rule or policy
change recompiles that resource and reassembles the services it touched (before and after); a Service,
Gateway or Namespace change recompiles every traffic resource (backend and host resolution), a Pod
change every DestinationRule (subset membership); only services whose resource changed are pushed.

Match precedence of Gateway API routes (HTTPRoute ``rules`` documentation, "Precedence"), over every
match of every route attached to the service, the first matching entry winning at the waypoint:
1. an Exact path match; 2. a PathPrefix match with the most characters; (a RegularExpression path comes
after every prefix, as Istio orders it: Exact > PathPrefix > RegularExpression, longer values first
within each kind); 3. a method match; 4. the most header matches; 5. the most query-parameter matches;
then the oldest route (our store has no creation timestamps, so this step is skipped) and the route
``{namespace}/{name}`` first in alphabetical order; then the rule, then the match, in list order. A rule
without matches is a PathPrefix ``/`` match. GRPCRoute matches become path matches (``/svc/method``
exact; a service alone a prefix ``/svc/``; a method alone or a RegularExpression a regex) and sort with
the same keys. VirtualService rules keep their order (Istio's: first match wins) and come after the
Gateway API routes of the same service (mixing both for one service is not recommended, as in Istio).

Bad config is refused alone, never half-applied and never widened: a route with one bad part (a backend
Service that does not exist, a cross-namespace reference, weights summing to 0, a regex Python's ``re``
cannot compile or RE2 would refuse, a field the waypoint does not carry out) contributes nothing and gets
``Accepted``/``ResolvedRefs`` conditions naming the field and the fix; the other resources apply. Valid
upstream fields we do not implement are refused the same way, with the reason. Nothing here logs or
touches the store: the caller writes ``TrafficUpdate.statuses`` and logs ``problems``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgspec

from istiod_lite.registry.errors import Problem, Reason, Severity
from istiod_lite.registry.waypoints import Waypoint
from istiod_lite.registry.workloads import pod_uid
from meshcore.model import Service, Workload
from meshcore.model.convert_traffic import header_name_problem, regex_problem
from meshcore.model.traffic import (
    BackendRef,
    ConnectionPool,
    DestinationPolicy,
    Fault,
    HeaderModifier,
    LoadBalancer,
    Mirror,
    OutlierDetection,
    PathMatch,
    PathRewrite,
    RateLimit,
    RateLimitOverride,
    Redirect,
    Retry,
    RouteMatch,
    RouteRule,
    ServiceTraffic,
    Subset,
    Timeouts,
    TrafficPolicy,
    UrlRewrite,
    ValueMatch,
)
from meshcore.store.resource import Resource, ResourceRef
from meshcore.store.traffic_schema import (
    DestinationRuleSpec,
    GRPCRouteSpec,
    HeaderFilterSpec,
    HTTPLocalRateLimitPolicySpec,
    HTTPRouteSpec,
    RouteBackendRef,
    RouteFilterSpec,
    RouteParentRef,
    TrafficPolicySpec,
    VirtualServiceSpec,
    parse_duration,
)

GATEWAY_GROUP = "gateway.networking.k8s.io"
CONTROLLER_NAME = "istio.io/gateway-controller"  # what Istio writes in a route's status.parents
ROUTE_KINDS = frozenset({"HTTPRoute", "GRPCRoute"})
TRAFFIC_KINDS = frozenset({"HTTPRoute", "GRPCRoute", "VirtualService", "DestinationRule", "HTTPLocalRateLimitPolicy"})
# Istio's default retryOn when a route asks for retries without saying on what.
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
_GRPC_RETRY_ON = frozenset({"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"})
_HTTP_RETRY_ON = frozenset({"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream",
                            "retriable-status-codes", "envoy-ratelimited"})

SortKey = tuple[Any, ...]


# ------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Catalog:
    """What compiling needs from the rest of the mesh (read-only views)."""

    services: Mapping[str, Service]  # "<ns>/<hostname>" -> Service
    workloads: Mapping[str, Workload]  # uid -> Workload
    pod_labels: Mapping[str, Mapping[str, str]]  # workload uid -> its pod's labels
    waypoints: Mapping[str, Waypoint]  # "<ns>/<name>" -> waypoint Gateway
    domain_suffix: str = "cluster.local"
    trust_domain: str = "cluster.local"

    def service_key(self, host: str, namespace: str) -> str | None:
        """The key of the Service ``host`` names from ``namespace`` (``name``, ``name.ns``, ``name.ns.svc``
        or the full hostname), or None if there is no such Service."""
        host = host.lower().rstrip(".")
        parts = host.split(".")
        suffix = f"svc.{self.domain_suffix}"
        if host.endswith("." + suffix):
            parts = host[: -len(suffix) - 1].split(".")
        elif len(parts) == 3 and parts[2] == "svc":
            parts = parts[:2]
        if len(parts) == 1:
            name, ns = parts[0], namespace
        elif len(parts) == 2:
            name, ns = parts
        else:
            return None
        key = f"{ns}/{name}.{ns}.{suffix}"
        return key if key in self.services else None


class _Refused(Exception):
    """One part of a resource cannot be applied: ``field`` (a path) and the message; ``reason`` is the
    status reason (Gateway API's where one fits)."""

    def __init__(self, field: str, message: str, reason: str = "UnsupportedValue") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.reason = reason


# ------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Compiled:
    """What one resource contributes, per service key, and the status it should carry."""

    ref: ResourceRef
    targets: frozenset[str] = frozenset()  # service keys it touches (accepted or not)
    entries: tuple[tuple[str, SortKey, RouteRule], ...] = ()  # (service key, precedence, rule with one match)
    policies: tuple[tuple[str, DestinationPolicy], ...] = ()
    rate_limits: tuple[tuple[str, RateLimit], ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()


def _condition(type_: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


def _plain_status(ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"conditions": [_condition("Accepted", ok, reason, message)]}


def _problem(ref: ResourceRef, e: _Refused) -> Problem:
    return Problem(ref, Severity.ERROR, Reason.INVALID_VALUE if e.reason != "UnsupportedValue"
                   else Reason.UNSUPPORTED_VALUE, f"not applied: {e}")


def _refusal_reason_is_ref(e: _Refused) -> bool:
    return e.reason in ("BackendNotFound", "RefNotPermitted", "InvalidKind")


# ------------------------------------------------------------------------------------------- helpers


def _seconds(value: str | None, field: str) -> float:
    if value is None:
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as e:
        raise _Refused(field, str(e), "InvalidValue") from None


def _regex(value: str, field: str) -> str:
    problem = regex_problem(value)
    if problem is not None:
        raise _Refused(field, problem, "UnsupportedValue")
    return value


def _header(name: str, field: str) -> str:
    lower = name.lower()
    problem = header_name_problem(lower)
    if problem is not None:
        raise _Refused(field, problem, "InvalidValue")
    return lower


def _path(value: str, field: str) -> str:
    if not value.startswith("/"):
        raise _Refused(field, f"path {value!r} must start with '/'", "InvalidValue")
    return value


def _headers_filter(f: HeaderFilterSpec | None, field: str) -> HeaderModifier:
    if f is None:
        raise _Refused(field, "is required for this filter type", "InvalidValue")
    return HeaderModifier(
        set=tuple((_header(h.name, f"{field}.set[{i}].name"), h.value) for i, h in enumerate(f.set or ())),
        add=tuple((_header(h.name, f"{field}.add[{i}].name"), h.value) for i, h in enumerate(f.add or ())),
        remove=tuple(_header(n, f"{field}.remove[{i}]") for i, n in enumerate(f.remove or ())),
    )


def _convert(spec: Mapping[str, Any], type_: type[Any]) -> Any:
    try:
        return msgspec.convert(spec, type_)
    except msgspec.ValidationError as e:
        reason, _, where = str(e).partition(" - at ")
        raise _Refused(where.strip("`").replace("$", "spec", 1) or "spec", reason, "InvalidValue") from None


# ------------------------------------------------------------------------------------------- Gateway API


def _backend(raw: RouteBackendRef | Any, namespace: str, catalog: Catalog, field: str, *, weight: int) -> BackendRef:
    if raw.group not in ("", "core") or raw.kind != "Service":
        raise _Refused(f"{field}.kind", f"{raw.group or 'core'}/{raw.kind} is not supported: use a Service",
                       "InvalidKind")
    ns = raw.namespace or namespace
    if ns != namespace:
        raise _Refused(f"{field}.namespace", f"Service {ns}/{raw.name} is in another namespace; ReferenceGrant "
                       "is not supported: reference a Service of the route's namespace", "RefNotPermitted")
    if raw.port is None:
        raise _Refused(f"{field}.port", "is required for a Service backend", "InvalidValue")
    key = catalog.service_key(raw.name, ns)
    if key is None:
        raise _Refused(f"{field}.name", f"Service {ns}/{raw.name} does not exist", "BackendNotFound")
    service = catalog.services[key]
    if all(p.service_port != raw.port for p in service.ports):
        exposed = ", ".join(str(p.service_port) for p in service.ports) or "none"
        raise _Refused(f"{field}.port", f"Service {ns}/{raw.name} has no port {raw.port} (it exposes {exposed})",
                       "BackendNotFound")
    return BackendRef(ns, service.hostname, raw.port, "", weight)


@dataclass(slots=True)
class _RuleParts:
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: UrlRewrite | None = None
    mirrors: list[Mirror] = field(default_factory=list)


def _filters(filters: list[RouteFilterSpec] | None, field: str, namespace: str, catalog: Catalog,
             prefix_only: bool, *, grpc: bool) -> _RuleParts:
    parts = _RuleParts()
    allowed = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror") + (
        () if grpc else ("RequestRedirect", "URLRewrite"))
    for i, f in enumerate(filters or ()):
        at = f"{field}[{i}]"
        if f.type not in allowed:
            raise _Refused(f"{at}.type", f"filter {f.type!r} is not supported at the waypoint "
                           f"(supported: {', '.join(allowed)})")
        if f.type == "RequestHeaderModifier":
            if parts.request_headers is not None:
                raise _Refused(f"{at}.type", "RequestHeaderModifier appears twice in one rule", "InvalidValue")
            parts.request_headers = _headers_filter(f.request_header_modifier, f"{at}.requestHeaderModifier")
        elif f.type == "ResponseHeaderModifier":
            if parts.response_headers is not None:
                raise _Refused(f"{at}.type", "ResponseHeaderModifier appears twice in one rule", "InvalidValue")
            parts.response_headers = _headers_filter(f.response_header_modifier, f"{at}.responseHeaderModifier")
        elif f.type == "RequestMirror":
            m = f.request_mirror
            if m is None:
                raise _Refused(f"{at}.requestMirror", "is required for this filter type", "InvalidValue")
            if m.percent is not None and m.fraction is not None:
                raise _Refused(f"{at}.requestMirror", "set percent or fraction, not both", "InvalidValue")
            percent = 100.0
            if m.percent is not None:
                percent = float(m.percent)
            elif m.fraction is not None:
                if m.fraction.numerator > m.fraction.denominator:
                    raise _Refused(f"{at}.requestMirror.fraction", "numerator is above denominator", "InvalidValue")
                percent = 100.0 * m.fraction.numerator / m.fraction.denominator
            backend = _backend(m.backend_ref, namespace, catalog, f"{at}.requestMirror.backendRef", weight=1)
            parts.mirrors.append(Mirror(backend, percent))
        elif f.type == "RequestRedirect":
            r = f.request_redirect
            if r is None:
                raise _Refused(f"{at}.requestRedirect", "is required for this filter type", "InvalidValue")
            parts.redirect = Redirect(r.scheme or "", r.hostname or "", r.port or 0,
                                      _path_modifier(r.path, f"{at}.requestRedirect.path", prefix_only),
                                      r.status_code)
        else:
            w = f.url_rewrite
            if w is None:
                raise _Refused(f"{at}.urlRewrite", "is required for this filter type", "InvalidValue")
            parts.rewrite = UrlRewrite(w.hostname or "", _path_modifier(w.path, f"{at}.urlRewrite.path", prefix_only))
    if parts.redirect is not None and parts.rewrite is not None:
        raise _Refused(field, "RequestRedirect and URLRewrite cannot both be set on one rule", "InvalidValue")
    return parts


def _path_modifier(p: Any, field: str, prefix_only: bool) -> PathRewrite | None:
    if p is None:
        return None
    if p.type == "ReplaceFullPath":
        if p.replace_full_path is None or p.replace_prefix_match is not None:
            raise _Refused(field, "ReplaceFullPath needs replaceFullPath (and only it)", "InvalidValue")
        return PathRewrite("full", _path(p.replace_full_path, f"{field}.replaceFullPath"))
    if p.replace_prefix_match is None or p.replace_full_path is not None:
        raise _Refused(field, "ReplacePrefixMatch needs replacePrefixMatch (and only it)", "InvalidValue")
    if not prefix_only:
        raise _Refused(field, "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                       "InvalidValue")
    return PathRewrite("prefix", _path(p.replace_prefix_match, f"{field}.replacePrefixMatch"))


def _precedence(m: RouteMatch) -> SortKey:
    path = m.path or PathMatch("prefix", "/")
    rank = {"exact": 3, "prefix": 2, "string_prefix": 2, "regex": 1}[path.kind]
    return (-rank, -len(path.value), 0 if m.method else 1, -len(m.headers), -len(m.query_params))


def _http_match(raw: Any, field: str, port: int) -> RouteMatch:
    path = None
    if raw.path is not None:
        p = raw.path
        if p.type == "RegularExpression":
            path = PathMatch("regex", _regex(p.value, f"{field}.path.value"))
        else:
            path = PathMatch("exact" if p.type == "Exact" else "prefix", _path(p.value, f"{field}.path.value"))
            if p.type == "PathPrefix" and "//" in p.value:
                raise _Refused(f"{field}.path.value", "a PathPrefix may not contain '//'", "InvalidValue")
    else:
        path = PathMatch("prefix", "/")
    return RouteMatch(
        path=path,
        headers=_value_matches(raw.headers, f"{field}.headers", header=True),
        query_params=_value_matches(raw.query_params, f"{field}.queryParams", header=False),
        method=raw.method or "",
        port=port,
    )


def _value_matches(items: Any, field: str, *, header: bool) -> tuple[ValueMatch, ...]:
    out: list[ValueMatch] = []
    seen: set[str] = set()
    for i, h in enumerate(items or ()):
        name = _header(h.name, f"{field}[{i}].name") if header else h.name
        if not name:
            raise _Refused(f"{field}[{i}].name", "is empty", "InvalidValue")
        if name in seen:  # Gateway API: only the first entry of a name counts
            continue
        seen.add(name)
        kind = "regex" if h.type == "RegularExpression" else "exact"
        value = _regex(h.value, f"{field}[{i}].value") if kind == "regex" else h.value
        out.append(ValueMatch(name, kind, value))
    return tuple(out)


def _grpc_match(raw: Any, field: str, port: int) -> RouteMatch:
    path = PathMatch("prefix", "/")
    m = raw.method
    if m is not None:
        if not m.service and not m.method:
            raise _Refused(f"{field}.method", "needs a service or a method", "InvalidValue")
        if m.type == "RegularExpression":
            svc = _regex(m.service, f"{field}.method.service") if m.service else "[^/]+"
            meth = _regex(m.method, f"{field}.method.method") if m.method else "[^/]+"
            path = PathMatch("regex", f"/({svc})/({meth})")
        elif m.service and m.method:
            path = PathMatch("exact", f"/{m.service}/{m.method}")
        elif m.service:
            path = PathMatch("string_prefix", f"/{m.service}/")
        else:
            path = PathMatch("regex", f"/[^/]+/{re.escape(m.method or '')}")
    return RouteMatch(path=path, headers=_value_matches(raw.headers, f"{field}.headers", header=True), port=port)


@dataclass(frozen=True, slots=True)
class _Parent:
    index: int
    raw: RouteParentRef
    keys: tuple[str, ...] = ()
    port: int = 0
    refused: _Refused | None = None


def _parents(spec: Any, resource: Resource, catalog: Catalog) -> list[_Parent]:
    out: list[_Parent] = []
    for p, ref in enumerate(spec.parent_refs or ()):
        at = f"spec.parentRefs[{p}]"
        kind = ref.kind or "Gateway"
        group = GATEWAY_GROUP if ref.group is None else ref.group
        ns = ref.namespace or resource.namespace
        if kind == "Service" and group in ("", "core"):
            if ns != resource.namespace:
                out.append(_Parent(p, ref, refused=_Refused(
                    f"{at}.namespace", f"a route for a Service of another namespace ({ns}) is a GAMMA consumer "
                    "route, which is not supported: put the route in the Service's namespace", "NotAllowedByListeners")))
                continue
            key = catalog.service_key(ref.name, ns)
            if key is None:
                out.append(_Parent(p, ref, refused=_Refused(
                    f"{at}.name", f"Service {ns}/{ref.name} does not exist", "NoMatchingParent")))
                continue
            if ref.port is not None and all(pt.service_port != ref.port for pt in catalog.services[key].ports):
                out.append(_Parent(p, ref, refused=_Refused(
                    f"{at}.port", f"Service {ns}/{ref.name} has no port {ref.port}", "NoMatchingParent")))
                continue
            out.append(_Parent(p, ref, (key,), ref.port or 0))
        elif kind == "Gateway" and group == GATEWAY_GROUP:
            wp = catalog.waypoints.get(f"{ns}/{ref.name}")
            if wp is None or wp.refused:
                why = wp.refused if wp is not None else "it does not exist or is not of class istio-waypoint"
                out.append(_Parent(p, ref, refused=_Refused(
                    f"{at}.name", f"Gateway {ns}/{ref.name} is no waypoint: {why}", "NoMatchingParent")))
                continue
            keys: list[str] = []
            for h, host in enumerate(spec.hostnames or ()):
                key = catalog.service_key(host, resource.namespace)
                if key is None:
                    out.append(_Parent(p, ref, refused=_Refused(
                        f"spec.hostnames[{h}]", f"{host!r} names no Service", "NoMatchingListenerHostname")))
                    break
                keys.append(key)
            else:
                if not keys:
                    out.append(_Parent(p, ref, refused=_Refused(
                        "spec.hostnames", "a route attached to a waypoint Gateway must name its Services in "
                        "spec.hostnames (or attach to the Service itself with a parentRef of kind Service)",
                        "NoMatchingListenerHostname")))
                    continue
                out.append(_Parent(p, ref, tuple(keys), ref.port or 0))
        else:
            out.append(_Parent(p, ref, refused=_Refused(
                f"{at}.kind", f"{group or 'core'}/{kind} is not a parent a waypoint serves: use kind Service "
                "(group \"\") or a waypoint Gateway", "NotAllowedByListeners")))
    return out


def _route_rules(spec: Any, resource: Resource, catalog: Catalog, *, grpc: bool) -> list[tuple[int, RouteRule, list[Any]]]:
    """(rule index, rule without matches, raw matches) per rule; raises ``_Refused`` for any bad part."""
    origin = f"{resource.kind} {resource.namespace}/{resource.name}"
    out: list[tuple[int, RouteRule, list[Any]]] = []
    for r, rule in enumerate(spec.rules or ()):
        at = f"spec.rules[{r}]"
        if rule.session_persistence is not None:
            raise _Refused(f"{at}.sessionPersistence", "session persistence is not supported at the waypoint")
        matches = list(rule.matches or ())
        prefix_only = bool(matches) and not grpc and all(
            m.path is None or m.path.type == "PathPrefix" for m in matches)
        if not matches and not grpc:
            prefix_only = True  # no matches: PathPrefix "/"
        parts = _filters(rule.filters, f"{at}.filters", resource.namespace, catalog, prefix_only, grpc=grpc)
        backends = []
        for b, raw in enumerate(rule.backend_refs or ()):
            if raw.filters:
                raise _Refused(f"{at}.backendRefs[{b}].filters", "per-backend filters are not supported at the "
                               "waypoint: put the filter on the rule")
            backends.append(_backend(raw, resource.namespace, catalog, f"{at}.backendRefs[{b}]", weight=raw.weight))
        if parts.redirect is not None and backends:
            raise _Refused(f"{at}.backendRefs", "a rule with a RequestRedirect filter may not have backendRefs",
                           "InvalidValue")
        if parts.redirect is None:
            if not backends:
                raise _Refused(f"{at}.backendRefs", "a rule needs backendRefs (or a RequestRedirect filter)",
                               "InvalidValue")
            if sum(b.weight for b in backends) <= 0:
                raise _Refused(f"{at}.backendRefs", "the weights sum to 0: give at least one backend a weight "
                               "above 0", "InvalidValue")
        timeouts = retry = None
        if not grpc and rule.timeouts is not None:
            request = _seconds(rule.timeouts.request, f"{at}.timeouts.request")
            backend_request = _seconds(rule.timeouts.backend_request, f"{at}.timeouts.backendRequest")
            if request and backend_request > request:
                raise _Refused(f"{at}.timeouts.backendRequest", "may not be longer than timeouts.request",
                               "InvalidValue")
            timeouts = Timeouts(request, backend_request)
        if not grpc and rule.retry is not None:
            attempts = 2 if rule.retry.attempts is None else rule.retry.attempts
            if attempts:
                retry = Retry(attempts, timeouts.backend_request if timeouts else 0.0, DEFAULT_RETRY_ON,
                              tuple(rule.retry.codes or (503,)), _seconds(rule.retry.backoff, f"{at}.retry.backoff"))
        out.append((r, RouteRule(
            origin=origin, name=rule.name or "", backends=tuple(backends),
            request_headers=parts.request_headers, response_headers=parts.response_headers,
            redirect=parts.redirect, rewrite=parts.rewrite, mirrors=tuple(parts.mirrors),
            timeouts=timeouts, retry=retry,
        ), matches))
    return out


def compile_route(resource: Resource, catalog: Catalog) -> Compiled:
    """An HTTPRoute or GRPCRoute: entries per attached service, and ``status.parents``."""
    grpc = resource.kind == "GRPCRoute"
    ref = resource.ref
    spec_type: type[Any] = GRPCRouteSpec if grpc else HTTPRouteSpec
    try:
        spec = _convert(resource.spec, spec_type)
    except _Refused as e:
        raw_parents = resource.spec.get("parentRefs")
        statuses = [
            {"parentRef": p, "controllerName": CONTROLLER_NAME, "conditions": [
                _condition("Accepted", False, "UnsupportedValue", f"route not applied: {e}"),
                _condition("ResolvedRefs", True, "ResolvedRefs", "")]}
            for p in (raw_parents if isinstance(raw_parents, list) else []) if isinstance(p, dict)
        ]
        return Compiled(ref, status={"parents": statuses}, problems=(_problem(ref, e),))
    parents = _parents(spec, resource, catalog)
    targets = frozenset(k for p in parents for k in p.keys)
    refusal: _Refused | None = None
    rules: list[tuple[int, RouteRule, list[Any]]] = []
    try:
        rules = _route_rules(spec, resource, catalog, grpc=grpc)
        if not rules:
            raise _Refused("spec.rules", "a route needs at least one rule", "InvalidValue")
    except _Refused as e:
        refusal = e
    entries: list[tuple[str, SortKey, RouteRule]] = []
    route_key = f"{resource.namespace}/{resource.name}"
    statuses: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for parent in parents:
        if parent.refused is not None:
            accepted = _condition("Accepted", False, parent.refused.reason, parent.refused.message +
                                  f" ({parent.refused.field})")
            resolved = _condition("ResolvedRefs", True, "ResolvedRefs", "")
            problems.append(_problem(ref, parent.refused))
        elif refusal is not None:
            ref_problem = _refusal_reason_is_ref(refusal)
            text = f"{refusal.field}: {refusal.message}"
            accepted = _condition("Accepted", False, "UnsupportedValue", f"route not applied: {text}")
            resolved = (_condition("ResolvedRefs", False, refusal.reason, text) if ref_problem
                        else _condition("ResolvedRefs", True, "ResolvedRefs", ""))
        else:
            accepted = _condition("Accepted", True, "Accepted", "Route was valid")
            resolved = _condition("ResolvedRefs", True, "ResolvedRefs", "All references resolved")
            for key in parent.keys:
                for r, rule, matches in rules:
                    if not matches:
                        m = RouteMatch(path=PathMatch("prefix", "/"), port=parent.port)
                        entries.append((key, (*_precedence(m), route_key, r, 0), msgspec.structs.replace(rule, matches=(m,))))
                    for j, raw in enumerate(matches):
                        try:
                            m = (_grpc_match if grpc else _http_match)(raw, f"spec.rules[{r}].matches[{j}]", parent.port)
                        except _Refused as e:
                            refusal = e
                            break
                        entries.append((key, (*_precedence(m), route_key, r, j), msgspec.structs.replace(rule, matches=(m,))))
        statuses.append({"parentRef": msgspec.to_builtins(parent.raw), "controllerName": CONTROLLER_NAME,
                         "conditions": [accepted, resolved]})
    if refusal is not None:
        # A bad match found while expanding: the whole route is refused for every parent.
        text = f"{refusal.field}: {refusal.message}"
        entries = []
        for st, parent in zip(statuses, parents, strict=True):
            if parent.refused is None:
                st["conditions"] = [
                    _condition("Accepted", False, "UnsupportedValue", f"route not applied: {text}"),
                    _condition("ResolvedRefs", False, refusal.reason, text) if _refusal_reason_is_ref(refusal)
                    else _condition("ResolvedRefs", True, "ResolvedRefs", ""),
                ]
        problems.append(_problem(ref, refusal))
    if not parents:
        problems.append(Problem(ref, Severity.WARNING, Reason.INVALID_VALUE,
                                "the route has no parentRefs: it applies nowhere (attach it to a Service)"))
    return Compiled(ref, targets, tuple(entries), status={"parents": statuses}, problems=tuple(problems))


# ------------------------------------------------------------------------------------------- Istio


def _istio_string(m: Any, field: str) -> tuple[str, str]:
    set_ = [(k, v) for k, v in (("exact", m.exact), ("prefix", m.prefix), ("regex", m.regex)) if v is not None]
    if len(set_) != 1:
        raise _Refused(field, "set exactly one of exact, prefix, regex", "InvalidValue")
    kind, value = set_[0]
    if kind == "regex":
        _regex(value, f"{field}.regex")
    return kind, value


def _istio_match(m: Any, field: str) -> RouteMatch:
    for name in ("scheme", "source_labels", "gateways", "source_namespace", "stat_prefix"):
        if getattr(m, name) is not None:
            camel = re.sub(r"_(\w)", lambda x: x.group(1).upper(), name)
            raise _Refused(f"{field}.{camel}", "is not supported for waypoint routes")
    if m.ignore_uri_case:
        raise _Refused(f"{field}.ignoreUriCase", "is not supported for waypoint routes")
    path = None
    if m.uri is not None:
        kind, value = _istio_string(m.uri, f"{field}.uri")
        path = PathMatch({"exact": "exact", "prefix": "string_prefix", "regex": "regex"}[kind], value)  # type: ignore[arg-type]
    method = ""
    if m.method is not None:
        kind, value = _istio_string(m.method, f"{field}.method")
        if kind != "exact":
            raise _Refused(f"{field}.method", "only exact method matches are supported")
        method = value
    headers: list[ValueMatch] = []
    for where, items, invert in (("headers", m.headers, False), ("withoutHeaders", m.without_headers, True)):
        for name, sm in (items or {}).items():
            kind, value = _istio_string(sm, f"{field}.{where}.{name}")
            headers.append(ValueMatch(_header(name, f"{field}.{where}.{name}"), kind, value, invert))  # type: ignore[arg-type]
    if m.authority is not None:
        kind, value = _istio_string(m.authority, f"{field}.authority")
        headers.append(ValueMatch(":authority", kind, value))  # type: ignore[arg-type]
    params = []
    for name, sm in (m.query_params or {}).items():
        kind, value = _istio_string(sm, f"{field}.queryParams.{name}")
        params.append(ValueMatch(name, kind, value))  # type: ignore[arg-type]
    return RouteMatch(path=path, headers=tuple(headers), query_params=tuple(params), method=method, port=m.port or 0)


def _istio_headers(h: Any, field: str) -> tuple[HeaderModifier | None, HeaderModifier | None]:
    if h is None:
        return None, None

    def one(ops: Any, at: str) -> HeaderModifier | None:
        if ops is None:
            return None
        return HeaderModifier(
            set=tuple((_header(k, f"{at}.set.{k}"), v) for k, v in (ops.set or {}).items()),
            add=tuple((_header(k, f"{at}.add.{k}"), v) for k, v in (ops.add or {}).items()),
            remove=tuple(_header(k, f"{at}.remove[{i}]") for i, k in enumerate(ops.remove or ())),
        )

    return one(h.request, f"{field}.request"), one(h.response, f"{field}.response")


def _destination(d: Any, namespace: str, catalog: Catalog, field: str, weight: int) -> BackendRef:
    key = catalog.service_key(d.host, namespace)
    if key is None:
        raise _Refused(f"{field}.host", f"{d.host!r} names no Service of the mesh", "BackendNotFound")
    service = catalog.services[key]
    port = d.port.number if d.port is not None else 0
    if port and all(p.service_port != port for p in service.ports):
        raise _Refused(f"{field}.port.number", f"Service {key} has no port {port}", "BackendNotFound")
    return BackendRef(service.namespace, service.hostname, port, d.subset or "", weight)


def _percentage(p: Any, legacy: int | None, default: float = 100.0) -> float:
    if p is not None:
        return float(p.value)
    if legacy is not None:
        return float(legacy)
    return default


def _vs_rule(h: Any, field: str, resource: Resource, catalog: Catalog) -> RouteRule:
    for name in ("direct_response", "delegate", "cors_policy"):
        if getattr(h, name) is not None:
            camel = re.sub(r"_(\w)", lambda x: x.group(1).upper(), name)
            raise _Refused(f"{field}.{camel}", "is not supported at the waypoint")
    matches = tuple(_istio_match(m, f"{field}.match[{j}]") for j, m in enumerate(h.match or ()))
    req_mod, resp_mod = _istio_headers(h.headers, f"{field}.headers")
    routes = list(h.route or ())
    backends = []
    for i, dst in enumerate(routes):
        weight = dst.weight if dst.weight is not None else (100 if len(routes) == 1 else 0)
        backends.append(_destination(dst.destination, resource.namespace, catalog, f"{field}.route[{i}].destination",
                                     weight))
        if dst.headers is not None:
            if len(routes) > 1:
                raise _Refused(f"{field}.route[{i}].headers", "per-destination headers are only supported with "
                               "a single destination: put them on the http route")
            req_mod, resp_mod = _istio_headers(dst.headers, f"{field}.route[{i}].headers")
    redirect = None
    if h.redirect is not None:
        r = h.redirect
        if r.derive_port is not None:
            raise _Refused(f"{field}.redirect.derivePort", "is not supported at the waypoint")
        code = r.redirect_code or 301
        if code not in (301, 302, 303, 307, 308):
            raise _Refused(f"{field}.redirect.redirectCode", f"{code} is not a redirect status", "InvalidValue")
        redirect = Redirect(r.scheme or "", r.authority or "", r.port or 0,
                            PathRewrite("full", _path(r.uri, f"{field}.redirect.uri")) if r.uri else None, code)
    if redirect is not None and backends:
        raise _Refused(f"{field}.route", "an http route has either route or redirect, not both", "InvalidValue")
    if redirect is None:
        if not backends:
            raise _Refused(f"{field}.route", "needs at least one destination (or a redirect)", "InvalidValue")
        if sum(b.weight for b in backends) <= 0:
            raise _Refused(f"{field}.route", "the weights sum to 0: give at least one destination a weight above 0",
                           "InvalidValue")
    rewrite = None
    if h.rewrite is not None:
        w = h.rewrite
        if w.uri_regex_rewrite is not None:
            raise _Refused(f"{field}.rewrite.uriRegexRewrite", "is not supported at the waypoint")
        path = None
        if w.uri:
            prefix = bool(matches) and all(m.path is not None and m.path.kind == "string_prefix" for m in matches)
            path = PathRewrite("prefix" if prefix else "full", w.uri)
        rewrite = UrlRewrite(w.authority or "", path)
    timeouts = Timeouts(_seconds(h.timeout, f"{field}.timeout")) if h.timeout is not None else None
    retry = None
    if h.retries is not None:
        rt = h.retries
        for name in ("retry_remote_localities", "retry_ignore_previous_hosts"):
            if getattr(rt, name) is not None:
                camel = re.sub(r"_(\w)", lambda x: x.group(1).upper(), name)
                raise _Refused(f"{field}.retries.{camel}", "is not supported at the waypoint")
        attempts = rt.attempts if rt.attempts is not None else 2
        conditions: list[str] = []
        codes: list[int] = []
        for cond in (rt.retry_on or "").split(","):
            cond = cond.strip()
            if not cond:
                continue
            if cond.isdigit():
                codes.append(int(cond))
            elif cond in _HTTP_RETRY_ON or cond in _GRPC_RETRY_ON:
                conditions.append(cond)
            else:
                raise _Refused(f"{field}.retries.retryOn", f"{cond!r} is not a retry condition the waypoint knows")
        if codes and "retriable-status-codes" not in conditions:
            conditions.append("retriable-status-codes")
        if attempts:
            retry = Retry(attempts, _seconds(rt.per_try_timeout, f"{field}.retries.perTryTimeout"),
                          tuple(conditions) or DEFAULT_RETRY_ON, tuple(codes) or ((503,) if not conditions else ()),
                          _seconds(rt.backoff, f"{field}.retries.backoff"))
    fault = None
    if h.fault is not None:
        d, a = h.fault.delay, h.fault.abort
        delay = delay_pct = abort_pct = 0.0
        abort = 0
        if d is not None:
            if d.exponential_delay is not None:
                raise _Refused(f"{field}.fault.delay.exponentialDelay", "is not supported at the waypoint")
            if d.fixed_delay is None:
                raise _Refused(f"{field}.fault.delay.fixedDelay", "is required", "InvalidValue")
            delay = _seconds(d.fixed_delay, f"{field}.fault.delay.fixedDelay")
            delay_pct = _percentage(d.percentage, d.percent)
        if a is not None:
            if a.grpc_status is not None or a.http2_error is not None:
                raise _Refused(f"{field}.fault.abort", "only httpStatus aborts are supported at the waypoint")
            if a.http_status is None:
                raise _Refused(f"{field}.fault.abort.httpStatus", "is required", "InvalidValue")
            abort, abort_pct = a.http_status, _percentage(a.percentage, None)
        fault = Fault(delay, delay_pct, abort, abort_pct)
    mirrors = []
    if h.mirror is not None:
        mirrors.append(Mirror(_destination(h.mirror, resource.namespace, catalog, f"{field}.mirror", 1),
                              _percentage(h.mirror_percentage, h.mirror_percent)))
    for i, mp in enumerate(h.mirrors or ()):
        mirrors.append(Mirror(_destination(mp.destination, resource.namespace, catalog, f"{field}.mirrors[{i}]", 1),
                              _percentage(mp.percentage, None)))
    return RouteRule(
        origin=f"VirtualService {resource.namespace}/{resource.name}", name=h.name or "", matches=matches,
        backends=tuple(backends), request_headers=req_mod, response_headers=resp_mod, redirect=redirect,
        rewrite=rewrite, mirrors=tuple(mirrors), timeouts=timeouts, retry=retry, fault=fault,
    )


def compile_virtual_service(resource: Resource, catalog: Catalog) -> Compiled:
    ref = resource.ref
    keys: list[str] = []
    try:
        spec: VirtualServiceSpec = _convert(resource.spec, VirtualServiceSpec)
        for h, host in enumerate(spec.hosts or ()):
            key = catalog.service_key(host, resource.namespace) if "*" not in host else None
            if key is None:
                raise _Refused(f"spec.hosts[{h}]", f"{host!r} names no Service of the mesh (a waypoint route needs "
                               "a Service host, no wildcards)", "NoMatchingParent")
            keys.append(key)
        if not keys:
            raise _Refused("spec.hosts", "is required: name the Service(s) the routes are for", "InvalidValue")
        if spec.gateways is not None and any(g != "mesh" for g in spec.gateways):
            raise _Refused("spec.gateways", "routes bound to ingress gateways are not waypoint config "
                           "(only 'mesh' or no gateways)")
        if spec.tcp or spec.tls:
            raise _Refused("spec.tcp" if spec.tcp else "spec.tls", "only http routes are applied at the waypoint")
        if spec.export_to is not None and spec.export_to != ["*"]:
            raise _Refused("spec.exportTo", "only '*' (the default) is supported")
        rules = [_vs_rule(h, f"spec.http[{i}]", resource, catalog) for i, h in enumerate(spec.http or ())]
    except _Refused as e:
        return Compiled(ref, frozenset(keys), status=_plain_status(False, e.reason, f"not applied: {e}"),
                        problems=(_problem(ref, e),))
    name_key = f"{resource.namespace}/{resource.name}"
    entries = tuple((key, (1, name_key, i), rule) for key in keys for i, rule in enumerate(rules))
    return Compiled(ref, frozenset(keys), entries, status=_plain_status(True, "Accepted", "applied at the waypoint"))


_LB_SIMPLE = {"UNSPECIFIED": "round_robin", "ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request",
              "LEAST_CONN": "least_request", "RANDOM": "random"}


def _traffic_policy(p: TrafficPolicySpec | None, field: str) -> TrafficPolicy | None:
    if p is None:
        return None
    for name in ("port_level_settings", "tunnel", "proxy_protocol"):
        if getattr(p, name) is not None:
            camel = re.sub(r"_(\w)", lambda x: x.group(1).upper(), name)
            raise _Refused(f"{field}.{camel}", "is not supported at the waypoint")
    if p.tls is not None and (p.tls.get("mode") != "ISTIO_MUTUAL" or len(p.tls) != 1):
        raise _Refused(f"{field}.tls", "only mode ISTIO_MUTUAL (what the mesh always does over HBONE) is supported")
    lb = cp = od = None
    if p.load_balancer is not None:
        b = p.load_balancer
        for name in ("locality_lb_setting", "warmup_duration_secs", "warmup"):
            if getattr(b, name) is not None:
                camel = re.sub(r"_(\w)", lambda x: x.group(1).upper(), name)
                raise _Refused(f"{field}.loadBalancer.{camel}", "is not supported at the waypoint")
        if b.simple is not None and b.consistent_hash is not None:
            raise _Refused(f"{field}.loadBalancer", "set simple or consistentHash, not both", "InvalidValue")
        if b.consistent_hash is not None:
            h = b.consistent_hash
            if h.http_header_name and not h.use_source_ip:
                lb = LoadBalancer("consistent_hash", hash_header=_header(
                    h.http_header_name, f"{field}.loadBalancer.consistentHash.httpHeaderName"))
            elif h.use_source_ip and not h.http_header_name:
                lb = LoadBalancer("consistent_hash", hash_source_ip=True)
            else:
                raise _Refused(f"{field}.loadBalancer.consistentHash", "only one of httpHeaderName or useSourceIp "
                               "is supported (httpCookie, httpQueryParameterName, ringHash, maglev are not)")
            for name in ("http_cookie", "http_query_parameter_name", "ring_hash", "maglev", "minimum_ring_size"):
                if getattr(h, name) is not None:
                    raise _Refused(f"{field}.loadBalancer.consistentHash", f"{name} is not supported at the waypoint")
        elif b.simple is not None:
            if b.simple not in _LB_SIMPLE:
                raise _Refused(f"{field}.loadBalancer.simple", f"{b.simple} is not supported at the waypoint")
            lb = LoadBalancer(_LB_SIMPLE[b.simple])  # type: ignore[arg-type]
    if p.connection_pool is not None:
        tcp, http = p.connection_pool.tcp, p.connection_pool.http
        for part, names in ((tcp, ("connect_timeout", "tcp_keepalive", "max_connection_duration", "idle_timeout")),
                            (http, ("max_retries", "idle_timeout", "h2_upgrade_policy", "use_client_protocol",
                                    "max_concurrent_streams"))):
            for name in names:
                if part is not None and getattr(part, name) is not None:
                    raise _Refused(f"{field}.connectionPool", f"{name} is not supported at the waypoint")
        cp = ConnectionPool(
            max_connections=(tcp.max_connections or 0) if tcp else 0,
            http1_max_pending_requests=(http.http1_max_pending_requests or 0) if http else 0,
            http2_max_requests=(http.http2_max_requests or 0) if http else 0,
            max_requests_per_connection=(http.max_requests_per_connection or 0) if http else 0,
        )
    if p.outlier_detection is not None:
        o = p.outlier_detection
        for name in ("consecutive_local_origin_failures", "split_external_local_origin_errors", "consecutive_errors",
                     "min_health_percent"):
            if getattr(o, name) is not None:
                raise _Refused(f"{field}.outlierDetection", f"{name} is not supported at the waypoint")
        interval = _seconds(o.interval, f"{field}.outlierDetection.interval") if o.interval else 10.0
        if interval <= 0:
            raise _Refused(f"{field}.outlierDetection.interval", "must be above 0", "InvalidValue")
        od = OutlierDetection(
            consecutive_5xx_errors=5 if o.consecutive_5xx_errors is None else o.consecutive_5xx_errors,
            consecutive_gateway_errors=o.consecutive_gateway_errors or 0,
            interval=interval,
            base_ejection_time=_seconds(o.base_ejection_time, f"{field}.outlierDetection.baseEjectionTime")
            if o.base_ejection_time else 30.0,
            max_ejection_percent=10 if o.max_ejection_percent is None else o.max_ejection_percent,
        )
    return TrafficPolicy(lb, cp, od)


def compile_destination_rule(resource: Resource, catalog: Catalog) -> Compiled:
    ref = resource.ref
    key = None
    try:
        spec: DestinationRuleSpec = _convert(resource.spec, DestinationRuleSpec)
        key = catalog.service_key(spec.host, resource.namespace) if "*" not in spec.host else None
        if key is None:
            raise _Refused("spec.host", f"{spec.host!r} names no Service of the mesh (no wildcards)", "NoMatchingParent")
        if spec.workload_selector is not None:
            raise _Refused("spec.workloadSelector", "is sidecar config; a waypoint applies the rule to the host")
        if spec.export_to is not None and spec.export_to != ["*"]:
            raise _Refused("spec.exportTo", "only '*' (the default) is supported")
        members = [uid for uid, w in catalog.workloads.items() if key in w.services]
        subsets = []
        for i, s in enumerate(spec.subsets or ()):
            if any(s.name == other.name for other in subsets):
                raise _Refused(f"spec.subsets[{i}].name", f"subset {s.name!r} appears twice", "InvalidValue")
            labels = dict(s.labels or {})
            chosen = tuple(sorted(uid for uid in members
                                  if all(catalog.pod_labels.get(uid, {}).get(k) == v for k, v in labels.items())))
            subsets.append(Subset(s.name, tuple(sorted(labels.items())), chosen,
                                  _traffic_policy(s.traffic_policy, f"spec.subsets[{i}].trafficPolicy")))
        policy = DestinationPolicy(f"DestinationRule {resource.namespace}/{resource.name}",
                                   _traffic_policy(spec.traffic_policy, "spec.trafficPolicy") or TrafficPolicy(),
                                   tuple(subsets))
    except _Refused as e:
        return Compiled(ref, frozenset({key} if key else ()), status=_plain_status(False, e.reason, f"not applied: {e}"),
                        problems=(_problem(ref, e),))
    return Compiled(ref, frozenset({key}), policies=((key, policy),),
                    status=_plain_status(True, "Accepted", "applied at the waypoint"))


def compile_rate_limit(resource: Resource, catalog: Catalog) -> Compiled:
    ref = resource.ref
    keys: list[str] = []
    try:
        spec: HTTPLocalRateLimitPolicySpec = _convert(resource.spec, HTTPLocalRateLimitPolicySpec)
        t = spec.target_ref
        if t.kind == "Service":
            if t.group not in ("", "core"):
                raise _Refused("spec.targetRef.group", "a Service is in the core group (\"\")", "InvalidKind")
            key = catalog.service_key(t.name, resource.namespace)
            if key is None:
                raise _Refused("spec.targetRef.name", f"Service {resource.namespace}/{t.name} does not exist",
                               "TargetNotFound")
            keys.append(key)
        else:
            if t.group != GATEWAY_GROUP:
                raise _Refused("spec.targetRef.group", f"a Gateway is in group {GATEWAY_GROUP}", "InvalidKind")
            wp = catalog.waypoints.get(f"{resource.namespace}/{t.name}")
            if wp is None or wp.refused:
                raise _Refused("spec.targetRef.name", f"Gateway {resource.namespace}/{t.name} is no waypoint",
                               "TargetNotFound")
            keys.extend(sorted(
                s.key for s in catalog.services.values()
                if s.waypoint is not None and s.waypoint.hostname is not None
                and s.waypoint.hostname.hostname == wp.hostname))
        if spec.total is None and spec.identity is None and not spec.overrides:
            raise _Refused("spec.total", "set total, identity or overrides: the policy limits nothing", "InvalidValue")
        overrides = []
        for i, o in enumerate(spec.overrides or ()):
            principals = tuple(
                f"spiffe://{catalog.trust_domain}/ns/{c.namespace or resource.namespace}/sa/{c.name}"
                for c in o.client_refs)
            if not principals:
                raise _Refused(f"spec.overrides[{i}].clientRefs", "is empty", "InvalidValue")
            overrides.append(RateLimitOverride(principals, o.requests_per_second))
        limit = RateLimit(f"HTTPLocalRateLimitPolicy {resource.namespace}/{resource.name}",
                          spec.total.requests_per_second if spec.total else 0,
                          spec.identity.requests_per_second if spec.identity else 0, tuple(overrides))
    except _Refused as e:
        return Compiled(ref, frozenset(keys), status=_plain_status(False, e.reason, f"not applied: {e}"),
                        problems=(_problem(ref, e),))
    return Compiled(ref, frozenset(keys), rate_limits=tuple((k, limit) for k in keys),
                    status=_plain_status(True, "Accepted", f"limits {len(keys)} service(s) at the waypoint"))


def compile_resource(resource: Resource, catalog: Catalog) -> Compiled:
    """One traffic resource's contributions and status (see the module docstring)."""
    if resource.kind in ROUTE_KINDS:
        return compile_route(resource, catalog)
    if resource.kind == "VirtualService":
        return compile_virtual_service(resource, catalog)
    if resource.kind == "DestinationRule":
        return compile_destination_rule(resource, catalog)
    if resource.kind == "HTTPLocalRateLimitPolicy":
        return compile_rate_limit(resource, catalog)
    raise ValueError(f"{resource.kind} is not a traffic kind")


def assemble(key: str, compiled: Iterable[Compiled]) -> tuple[ServiceTraffic | None, list[Problem]]:
    """The resource of service ``key`` from every compiled contribution (None: nothing configures it).
    Several DestinationRules or rate limits for one service: the first by ``namespace/name`` wins, the
    others are reported."""
    gateway_entries: list[tuple[SortKey, RouteRule]] = []
    vs_entries: list[tuple[SortKey, RouteRule]] = []
    policies: list[tuple[str, ResourceRef, DestinationPolicy]] = []
    limits: list[tuple[str, ResourceRef, RateLimit]] = []
    for c in compiled:
        if key not in c.targets:
            continue
        for k, sort_key, rule in c.entries:
            if k == key:
                (vs_entries if c.ref.kind == "VirtualService" else gateway_entries).append((sort_key, rule))
        policies.extend((f"{c.ref.namespace}/{c.ref.name}", c.ref, p) for k, p in c.policies if k == key)
        limits.extend((f"{c.ref.namespace}/{c.ref.name}", c.ref, r) for k, r in c.rate_limits if k == key)
    problems: list[Problem] = []
    policies.sort(key=lambda t: t[0])
    limits.sort(key=lambda t: t[0])
    for _, ref, _p in policies[1:]:
        problems.append(Problem(ref, Severity.WARNING, Reason.INVALID_VALUE,
                                f"ignored for {key}: DestinationRule {policies[0][0]} already configures it"))
    for _, ref, _l in limits[1:]:
        problems.append(Problem(ref, Severity.WARNING, Reason.INVALID_VALUE,
                                f"ignored for {key}: HTTPLocalRateLimitPolicy {limits[0][0]} already limits it"))
    if not gateway_entries and not vs_entries and not policies and not limits:
        return None, problems
    ns, _, hostname = key.partition("/")
    gateway_entries.sort(key=lambda t: t[0])
    vs_entries.sort(key=lambda t: t[0])
    return ServiceTraffic(
        ns, hostname,
        routes=tuple(r for _, r in gateway_entries) + tuple(r for _, r in vs_entries),
        policy=policies[0][2] if policies else None,
        rate_limit=limits[0][2] if limits else None,
    ), problems


# ------------------------------------------------------------------------------------------- incremental


@dataclass(frozen=True, slots=True)
class TrafficState:
    """The traffic resources, what each compiled to, the pods' labels and the pushed resources."""

    resources: Mapping[ResourceRef, Resource] = field(default_factory=lambda: MappingProxyType({}))
    compiled: Mapping[ResourceRef, Compiled] = field(default_factory=lambda: MappingProxyType({}))
    pod_labels: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    traffic: Mapping[str, ServiceTraffic] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class TrafficUpdate:
    state: TrafficState
    changed: dict[str, ServiceTraffic]  # service key -> its new resource
    removed: set[str]  # service keys whose resource is gone
    statuses: dict[ResourceRef, dict[str, Any]]  # the status each recompiled resource should now carry
    problems: list[Problem]


def update(
    state: TrafficState,
    changed: Iterable[Resource],
    deleted: Iterable[ResourceRef],
    *,
    services: Mapping[str, Service],
    workloads: Mapping[str, Workload],
    waypoints: Mapping[str, Waypoint],
    cluster_id: str = "Kubernetes",
    domain_suffix: str = "cluster.local",
    trust_domain: str = "cluster.local",
    everything: bool = False,
) -> TrafficUpdate:
    """The next state after a batch of store changes (``everything``: recompile all, e.g. at start)."""
    resources = dict(state.resources)
    pod_labels = dict(state.pod_labels)
    dirty: set[ResourceRef] = set()
    recompile_all = everything
    recompile_rules = False
    for r in changed:
        if r.kind in TRAFFIC_KINDS:
            resources[r.ref] = r
            dirty.add(r.ref)
        elif r.kind == "Pod":
            uid = pod_uid(cluster_id, r.namespace, r.name)
            if pod_labels.get(uid) != r.labels:
                pod_labels[uid] = dict(r.labels)
                recompile_rules = True
        elif r.kind in ("Service", "Gateway", "Namespace"):
            recompile_all = True
    for ref in deleted:
        if ref.kind in TRAFFIC_KINDS:
            resources.pop(ref, None)
            dirty.add(ref)
        elif ref.kind == "Pod":
            if pod_labels.pop(pod_uid(cluster_id, ref.namespace, ref.name), None) is not None:
                recompile_rules = True
        elif ref.kind in ("Service", "Gateway", "Namespace"):
            recompile_all = True
    if recompile_all:
        dirty |= set(resources)
    elif recompile_rules:
        dirty |= {ref for ref in resources if ref.kind == "DestinationRule"}
    catalog = Catalog(services, workloads, pod_labels, waypoints, domain_suffix, trust_domain)
    compiled = dict(state.compiled)
    affected: set[str] = set()
    statuses: dict[ResourceRef, dict[str, Any]] = {}
    problems: list[Problem] = []
    for ref in dirty:
        old = compiled.pop(ref, None)
        if old is not None:
            affected |= old.targets
        resource = resources.get(ref)
        if resource is None:
            continue
        c = compile_resource(resource, catalog)
        compiled[ref] = c
        affected |= c.targets
        problems.extend(c.problems)
        if not _same_status(c.status, resource.status):
            statuses[ref] = dict(c.status)
    traffic = dict(state.traffic)
    out_changed: dict[str, ServiceTraffic] = {}
    removed: set[str] = set()
    if recompile_all:
        affected |= set(traffic)
    for key in sorted(affected):
        built, conflicts = assemble(key, compiled.values())
        problems.extend(conflicts)
        if built is None:
            if traffic.pop(key, None) is not None:
                removed.add(key)
        elif traffic.get(key) != built:
            traffic[key] = built
            out_changed[key] = built
    new_state = TrafficState(MappingProxyType(resources), MappingProxyType(compiled), MappingProxyType(pod_labels),
                             MappingProxyType(traffic))
    return TrafficUpdate(new_state, out_changed, removed, statuses, problems)


def _same_status(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Equal but for condition transition times (which only change with the condition's status)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "lastTransitionTime"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return bool(strip(dict(new)) == strip(dict(old)))


__all__ = [
    "CONTROLLER_NAME",
    "TRAFFIC_KINDS",
    "Catalog",
    "Compiled",
    "TrafficState",
    "TrafficUpdate",
    "assemble",
    "compile_resource",
    "update",
]

"""Schemas of the traffic-management kinds: HTTPRoute, GRPCRoute (gateway.networking.k8s.io/v1),
VirtualService, DestinationRule (networking.istio.io/v1) and HTTPLocalRateLimitPolicy
(policy.ambientmesh.io/v1alpha1, ours, shaped like Linkerd's).

Strict: every Struct forbids unknown fields, so a typo (``backendRef``, ``mirrorPercent``) is refused at
apply with its path (``$.spec.rules[0].backendRef``) instead of becoming a weaker route. Fields the
upstream schemas define but the mesh does not carry out are accepted here and refused by the compiler
(``istiod_lite.registry.traffic``) with the reason in the resource's status: never silently dropped.
Durations are checked here (``parse_duration``: Go / Gateway API style ``1h2m3s``, ``500ms``, ``1.5s``).
Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

PortNumber = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Weight = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """Seconds of a duration written ``1h``, ``2m30s``, ``500ms``, ``1.5s`` or ``0s``; ValueError if not."""
    if not text:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration (write e.g. 500ms, 1.5s, 2m30s, 1h)")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total


class _Strict(msgspec.Struct, rename="camel", frozen=True, forbid_unknown_fields=True):
    """Kubernetes field naming (camelCase); unknown fields are errors."""


# --- Gateway API ----------------------------------------------------------------------------------------


class RouteParentRef(_Strict, frozen=True):
    name: str
    group: str | None = None
    kind: str | None = None
    namespace: str | None = None
    section_name: str | None = None
    port: PortNumber | None = None


class PathMatchSpec(_Strict, frozen=True):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"


class HeaderMatchSpec(_Strict, frozen=True):
    name: str
    value: str
    type: Literal["Exact", "RegularExpression"] = "Exact"


class HTTPRouteMatchSpec(_Strict, frozen=True):
    path: PathMatchSpec | None = None
    headers: list[HeaderMatchSpec] | None = None
    query_params: list[HeaderMatchSpec] | None = None
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] | None = None


class HeaderValue(_Strict, frozen=True):
    name: str
    value: str


class HeaderFilterSpec(_Strict, frozen=True):
    set: list[HeaderValue] | None = None
    add: list[HeaderValue] | None = None
    remove: list[str] | None = None


class BackendObjectRef(_Strict, frozen=True):
    name: str
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None
    port: PortNumber | None = None


class Fraction(_Strict, frozen=True):
    numerator: Annotated[int, msgspec.Meta(ge=0)]
    denominator: Annotated[int, msgspec.Meta(ge=1)] = 100


class MirrorFilterSpec(_Strict, frozen=True):
    backend_ref: BackendObjectRef
    percent: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    fraction: Fraction | None = None


class PathModifierSpec(_Strict, frozen=True):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None


class RedirectFilterSpec(_Strict, frozen=True):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    path: PathModifierSpec | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class RewriteFilterSpec(_Strict, frozen=True):
    hostname: str | None = None
    path: PathModifierSpec | None = None


class RouteFilterSpec(_Strict, frozen=True):
    type: str
    request_header_modifier: HeaderFilterSpec | None = None
    response_header_modifier: HeaderFilterSpec | None = None
    request_mirror: MirrorFilterSpec | None = None
    request_redirect: RedirectFilterSpec | None = None
    url_rewrite: RewriteFilterSpec | None = None
    extension_ref: dict[str, Any] | None = None
    cors: dict[str, Any] | None = None
    external_auth: dict[str, Any] | None = None


class RouteBackendRef(_Strict, frozen=True):
    name: str
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None
    port: PortNumber | None = None
    weight: Weight = 1
    filters: list[RouteFilterSpec] | None = None


class RouteTimeoutsSpec(_Strict, frozen=True):
    request: str | None = None
    backend_request: str | None = None


class RouteRetrySpec(_Strict, frozen=True):
    codes: list[Annotated[int, msgspec.Meta(ge=400, le=599)]] | None = None
    attempts: Annotated[int, msgspec.Meta(ge=0)] | None = None
    backoff: str | None = None


class HTTPRouteRuleSpec(_Strict, frozen=True):
    name: str | None = None
    matches: list[HTTPRouteMatchSpec] | None = None
    filters: list[RouteFilterSpec] | None = None
    backend_refs: list[RouteBackendRef] | None = None
    timeouts: RouteTimeoutsSpec | None = None
    retry: RouteRetrySpec | None = None
    session_persistence: dict[str, Any] | None = None


class HTTPRouteSpec(_Strict, frozen=True):
    parent_refs: list[RouteParentRef] | None = None
    hostnames: list[str] | None = None
    rules: list[HTTPRouteRuleSpec] | None = None


class GRPCMethodMatchSpec(_Strict, frozen=True):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: str | None = None
    method: str | None = None


class GRPCRouteMatchSpec(_Strict, frozen=True):
    method: GRPCMethodMatchSpec | None = None
    headers: list[HeaderMatchSpec] | None = None


class GRPCRouteRuleSpec(_Strict, frozen=True):
    name: str | None = None
    matches: list[GRPCRouteMatchSpec] | None = None
    filters: list[RouteFilterSpec] | None = None
    backend_refs: list[RouteBackendRef] | None = None
    session_persistence: dict[str, Any] | None = None


class GRPCRouteSpec(_Strict, frozen=True):
    parent_refs: list[RouteParentRef] | None = None
    hostnames: list[str] | None = None
    rules: list[GRPCRouteRuleSpec] | None = None


# --- Istio networking -----------------------------------------------------------------------------------


class IstioStringMatch(_Strict, frozen=True):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


class IstioPercent(_Strict, frozen=True):
    value: Percent


class PortSelector(_Strict, frozen=True):
    number: PortNumber


class Destination(_Strict, frozen=True):
    host: str
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(_Strict, frozen=True):
    set: dict[str, str] | None = None
    add: dict[str, str] | None = None
    remove: list[str] | None = None


class Headers(_Strict, frozen=True):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPMatchRequest(_Strict, frozen=True):
    name: str | None = None
    uri: IstioStringMatch | None = None
    scheme: IstioStringMatch | None = None
    method: IstioStringMatch | None = None
    authority: IstioStringMatch | None = None
    headers: dict[str, IstioStringMatch] | None = None
    port: PortNumber | None = None
    source_labels: dict[str, str] | None = None
    gateways: list[str] | None = None
    query_params: dict[str, IstioStringMatch] | None = None
    ignore_uri_case: bool | None = None
    without_headers: dict[str, IstioStringMatch] | None = None
    source_namespace: str | None = None
    stat_prefix: str | None = None


class HTTPRouteDestination(_Strict, frozen=True):
    destination: Destination
    weight: Weight | None = None
    headers: Headers | None = None


class HTTPRedirect(_Strict, frozen=True):
    uri: str | None = None
    authority: str | None = None
    port: PortNumber | None = None
    derive_port: str | None = None
    scheme: str | None = None
    redirect_code: int | None = None


class HTTPRewrite(_Strict, frozen=True):
    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: dict[str, Any] | None = None


class HTTPRetry(_Strict, frozen=True):
    attempts: Annotated[int, msgspec.Meta(ge=0)] | None = None
    per_try_timeout: str | None = None
    retry_on: str | None = None
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: str | None = None


class FaultDelay(_Strict, frozen=True):
    fixed_delay: str | None = None
    exponential_delay: str | None = None
    percentage: IstioPercent | None = None
    percent: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None


class FaultAbort(_Strict, frozen=True):
    http_status: Annotated[int, msgspec.Meta(ge=200, le=599)] | None = None
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: IstioPercent | None = None


class HTTPFaultInjection(_Strict, frozen=True):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class HTTPMirrorPolicy(_Strict, frozen=True):
    destination: Destination
    percentage: IstioPercent | None = None


class VirtualServiceHTTPRoute(_Strict, frozen=True):
    name: str | None = None
    match: list[HTTPMatchRequest] | None = None
    route: list[HTTPRouteDestination] | None = None
    redirect: HTTPRedirect | None = None
    direct_response: dict[str, Any] | None = None
    delegate: dict[str, Any] | None = None
    rewrite: HTTPRewrite | None = None
    timeout: str | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] | None = None
    mirror_percentage: IstioPercent | None = None
    mirror_percent: int | None = None
    cors_policy: dict[str, Any] | None = None
    headers: Headers | None = None


class VirtualServiceSpec(_Strict, frozen=True):
    hosts: list[str] | None = None
    gateways: list[str] | None = None
    http: list[VirtualServiceHTTPRoute] | None = None
    tls: list[dict[str, Any]] | None = None
    tcp: list[dict[str, Any]] | None = None
    export_to: list[str] | None = None


class ConsistentHash(_Strict, frozen=True):
    http_header_name: str | None = None
    http_cookie: dict[str, Any] | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: dict[str, Any] | None = None
    maglev: dict[str, Any] | None = None
    minimum_ring_size: int | None = None


class LoadBalancerSettings(_Strict, frozen=True):
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: dict[str, Any] | None = None
    warmup_duration_secs: str | None = None
    warmup: dict[str, Any] | None = None


class TcpSettings(_Strict, frozen=True):
    max_connections: Annotated[int, msgspec.Meta(ge=0)] | None = None
    connect_timeout: str | None = None
    tcp_keepalive: dict[str, Any] | None = None
    max_connection_duration: str | None = None
    idle_timeout: str | None = None


class HttpSettings(_Strict, frozen=True):
    http1_max_pending_requests: Annotated[int, msgspec.Meta(ge=0)] | None = None
    http2_max_requests: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_requests_per_connection: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_retries: int | None = None
    idle_timeout: str | None = None
    h2_upgrade_policy: str | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = None


class ConnectionPoolSettings(_Strict, frozen=True):
    tcp: TcpSettings | None = None
    http: HttpSettings | None = None


class OutlierDetectionSpec(_Strict, frozen=True):
    consecutive_5xx_errors: Annotated[int, msgspec.Meta(ge=0)] | None = msgspec.field(
        name="consecutive5xxErrors", default=None
    )
    consecutive_gateway_errors: Annotated[int, msgspec.Meta(ge=0)] | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool | None = None
    consecutive_errors: int | None = None
    interval: str | None = None
    base_ejection_time: str | None = None
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    min_health_percent: int | None = None


class TrafficPolicySpec(_Strict, frozen=True):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetectionSpec | None = None
    tls: dict[str, Any] | None = None
    port_level_settings: list[dict[str, Any]] | None = None
    tunnel: dict[str, Any] | None = None
    proxy_protocol: dict[str, Any] | None = None


class SubsetSpec(_Strict, frozen=True):
    name: str
    labels: dict[str, str] | None = None
    traffic_policy: TrafficPolicySpec | None = None


class DestinationRuleSpec(_Strict, frozen=True):
    host: str
    subsets: list[SubsetSpec] | None = None
    traffic_policy: TrafficPolicySpec | None = None
    export_to: list[str] | None = None
    workload_selector: dict[str, Any] | None = None


# --- policy.ambientmesh.io ------------------------------------------------------------------------------


class RateLimitTargetRef(_Strict, frozen=True):
    kind: Literal["Service", "Gateway"]
    name: str
    group: str = ""


class RequestsPerSecond(_Strict, frozen=True):
    requests_per_second: Annotated[int, msgspec.Meta(ge=1)]


class ClientRef(_Strict, frozen=True):
    kind: Literal["ServiceAccount"]
    name: str
    namespace: str | None = None


class RateLimitOverrideSpec(_Strict, frozen=True):
    requests_per_second: Annotated[int, msgspec.Meta(ge=1)]
    client_refs: list[ClientRef]


class HTTPLocalRateLimitPolicySpec(_Strict, frozen=True):
    target_ref: RateLimitTargetRef
    total: RequestsPerSecond | None = None
    identity: RequestsPerSecond | None = None
    overrides: list[RateLimitOverrideSpec] | None = None


# --- document-level checks (called by schema) -----------------------------------------------------------


def _durations(paths_values: list[tuple[str, str | None]]) -> tuple[str, str] | None:
    for path, value in paths_values:
        if value is None:
            continue
        try:
            parse_duration(value)
        except ValueError as e:
            return path, str(e)
    return None


def http_route_problem(spec: HTTPRouteSpec | None) -> tuple[str, str] | None:
    """(path, reason) of the first duration that does not parse, or None."""
    if spec is None:
        return None
    found: list[tuple[str, str | None]] = []
    for r, rule in enumerate(spec.rules or ()):
        if rule.timeouts is not None:
            found.append((f"$.spec.rules[{r}].timeouts.request", rule.timeouts.request))
            found.append((f"$.spec.rules[{r}].timeouts.backendRequest", rule.timeouts.backend_request))
        if rule.retry is not None:
            found.append((f"$.spec.rules[{r}].retry.backoff", rule.retry.backoff))
    return _durations(found)


def virtual_service_problem(spec: VirtualServiceSpec | None) -> tuple[str, str] | None:
    if spec is None:
        return None
    found: list[tuple[str, str | None]] = []
    for h, http in enumerate(spec.http or ()):
        at = f"$.spec.http[{h}]"
        found.append((f"{at}.timeout", http.timeout))
        if http.retries is not None:
            found.append((f"{at}.retries.perTryTimeout", http.retries.per_try_timeout))
            found.append((f"{at}.retries.backoff", http.retries.backoff))
        if http.fault is not None and http.fault.delay is not None:
            found.append((f"{at}.fault.delay.fixedDelay", http.fault.delay.fixed_delay))
    return _durations(found)


def destination_rule_problem(spec: DestinationRuleSpec | None) -> tuple[str, str] | None:
    if spec is None:
        return None
    policies = [("$.spec.trafficPolicy", spec.traffic_policy)] + [
        (f"$.spec.subsets[{i}].trafficPolicy", s.traffic_policy) for i, s in enumerate(spec.subsets or ())
    ]
    found: list[tuple[str, str | None]] = []
    for at, p in policies:
        if p is not None and p.outlier_detection is not None:
            found.append((f"{at}.outlierDetection.interval", p.outlier_detection.interval))
            found.append((f"{at}.outlierDetection.baseEjectionTime", p.outlier_detection.base_ejection_time))
    return _durations(found)


__all__ = [
    "DestinationRuleSpec",
    "GRPCRouteSpec",
    "HTTPLocalRateLimitPolicySpec",
    "HTTPRouteSpec",
    "VirtualServiceSpec",
    "destination_rule_problem",
    "http_route_problem",
    "parse_duration",
    "virtual_service_problem",
]

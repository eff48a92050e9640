"""Traffic-management model: how a waypoint routes and treats requests to one destination service.

One ``ServiceTraffic`` per destination service (xDS resource name ``<namespace>/<hostname>``), compiled
by istiod_lite from HTTPRoute / GRPCRoute / VirtualService (``routes``), DestinationRule (``policy``) and
our ``HTTPLocalRateLimitPolicy`` (``rate_limit``). No resource for a service: the data plane's default
(the service's endpoints, round robin, no retries/timeouts).

Invariants the data plane relies on (``convert_traffic`` checks them when a resource arrives):
- ``routes`` is already in precedence order: the data plane takes the FIRST rule with a matching entry
  (Gateway API precedence for HTTPRoute/GRPCRoute, document order for a VirtualService). A rule with no
  ``matches`` matches every request. Routes exist but none matches: the request gets 404 ``NR``.
- Within a ``RouteMatch`` every set part must hold (AND); header and query-parameter names are
  lower-case / as written respectively; regexes compile with Python's ``re`` and avoid what RE2 refuses.
- A forwarding rule has at least one backend with a positive weight; a redirect rule has no backends.
- Durations are seconds (float); percentages are 0..100 (float); 0 / None means "not set".
- Subsets name the workloads they hold (``workloads``: uids resolved by istiod_lite from the
  DestinationRule's labels over the service's endpoints) and keep the labels for display.
Pure values (frozen msgspec Structs, ``gc=False``: no back references, no cycles).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Seconds = float


class PathMatch(msgspec.Struct, frozen=True, gc=False):
    """Gateway API path match: ``exact``, ``prefix`` (whole path segments, as PathPrefix) or ``regex``
    (full match). Istio's VirtualService ``uri`` prefix is a plain string prefix: ``string_prefix``."""

    kind: Literal["exact", "prefix", "regex", "string_prefix"]
    value: str


class ValueMatch(msgspec.Struct, frozen=True, gc=False):
    """A header or query-parameter match: ``exact`` value, ``regex`` (full match), ``prefix`` (Istio
    only) or ``present`` (the value ignored)."""

    name: str
    kind: Literal["exact", "regex", "prefix", "present"] = "exact"
    value: str = ""
    invert: bool = False  # Istio's withoutHeaders: the request must NOT match


class RouteMatch(msgspec.Struct, frozen=True, gc=False):
    """One match entry (AND of every set part). ``port`` 0: any destination port."""

    path: PathMatch | None = None
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str = ""
    port: int = 0


class BackendRef(msgspec.Struct, frozen=True, gc=False):
    """A destination service (``namespace``/``hostname``), port (0: the request's port), optional
    DestinationRule subset, and relative weight."""

    namespace: str
    hostname: str
    port: int = 0
    subset: str = ""
    weight: int = 1

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.hostname}"


class HeaderModifier(msgspec.Struct, frozen=True, gc=False):
    """Set (replace), add (append) and remove headers; names lower-case."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


class PathRewrite(msgspec.Struct, frozen=True, gc=False):
    """``full``: replace the whole path; ``prefix``: replace the matched prefix (the rule's match must be
    a prefix match)."""

    kind: Literal["full", "prefix"]
    value: str


class Redirect(msgspec.Struct, frozen=True, gc=False):
    """Answer locally with ``status_code`` and a Location built from the request with these parts
    replaced (empty / 0 / None: kept from the request)."""

    scheme: str = ""
    hostname: str = ""
    port: int = 0
    path: PathRewrite | None = None
    status_code: int = 302


class UrlRewrite(msgspec.Struct, frozen=True, gc=False):
    """Rewrite the authority and/or path before forwarding."""

    hostname: str = ""
    path: PathRewrite | None = None


class Mirror(msgspec.Struct, frozen=True, gc=False):
    """Send a copy of ``percent`` % of the matched requests to ``backend`` (fire and forget)."""

    backend: BackendRef
    percent: float = 100.0


class Timeouts(msgspec.Struct, frozen=True, gc=False):
    """``request``: the whole exchange incl. retries; ``backend_request``: each attempt. 0: none."""

    request: Seconds = 0.0
    backend_request: Seconds = 0.0


class Retry(msgspec.Struct, frozen=True, gc=False):
    """Up to ``attempts`` retries after the first try. ``retry_on``: Envoy conditions (``5xx``,
    ``gateway-error``, ``reset``, ``connect-failure``, ``retriable-4xx``, ``refused-stream``,
    ``retriable-status-codes``, gRPC ``cancelled``/``deadline-exceeded``/``internal``/
    ``resource-exhausted``/``unavailable``); ``codes``: HTTP statuses retried as well."""

    attempts: int
    per_try_timeout: Seconds = 0.0
    retry_on: tuple[str, ...] = ()
    codes: tuple[int, ...] = ()
    backoff: Seconds = 0.0  # base interval; 0: the data plane's default (25 ms, Envoy's)


class Fault(msgspec.Struct, frozen=True, gc=False):
    """Delay ``delay`` seconds for ``delay_percent`` % of requests; answer ``abort_status`` for
    ``abort_percent`` % of requests (0: no abort)."""

    delay: Seconds = 0.0
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_percent: float = 0.0


class RouteRule(msgspec.Struct, frozen=True, gc=False):
    """One rule (see the module docstring for order and matching). ``origin`` names its source
    resource for logs (``HTTPRoute ns/name``, ``VirtualService ns/name``), ``name`` the rule if named."""

    origin: str
    matches: tuple[RouteMatch, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: UrlRewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    fault: Fault | None = None
    name: str = ""


# ------------------------------------------------------------------------------------------ DestinationRule

LoadBalancerKind = Literal["round_robin", "least_request", "random", "consistent_hash"]


class LoadBalancer(msgspec.Struct, frozen=True, gc=False):
    """``consistent_hash`` hashes ``hash_header`` (lower-case) when set, else the source IP."""

    kind: LoadBalancerKind = "round_robin"
    hash_header: str = ""
    hash_source_ip: bool = False


class ConnectionPool(msgspec.Struct, frozen=True, gc=False):
    """Circuit-breaker limits; 0: unlimited (Envoy's defaults are 2^32-1)."""

    max_connections: int = 0
    http1_max_pending_requests: int = 0
    http2_max_requests: int = 0
    max_requests_per_connection: int = 0


class OutlierDetection(msgspec.Struct, frozen=True, gc=False):
    """Eject an endpoint after ``consecutive_5xx_errors`` 5xx (or ``consecutive_gateway_errors``
    502/503/504) in a row, for ``base_ejection_time`` x times ejected, at most ``max_ejection_percent`` %
    of the endpoints at once; re-checked every ``interval``. 0 errors: that detector is off."""

    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0
    interval: Seconds = 10.0
    base_ejection_time: Seconds = 30.0
    max_ejection_percent: int = 10


class TrafficPolicy(msgspec.Struct, frozen=True, gc=False):
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None


class Subset(msgspec.Struct, frozen=True, gc=False):
    """A named subset: the service's endpoints whose workloads carry ``labels``. ``workloads`` are
    their uids (resolved by istiod_lite); ``policy`` overrides the service's policy field by field."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    workloads: tuple[str, ...] = ()
    policy: TrafficPolicy | None = None


class DestinationPolicy(msgspec.Struct, frozen=True, gc=False):
    origin: str
    traffic_policy: TrafficPolicy = TrafficPolicy()
    subsets: tuple[Subset, ...] = ()

    def subset(self, name: str) -> Subset | None:
        for s in self.subsets:
            if s.name == name:
                return s
        return None

    def policy_for(self, subset: str = "") -> TrafficPolicy:
        """The effective policy of ``subset`` ("" = the service): the subset's fields override."""
        base = self.traffic_policy
        found = self.subset(subset) if subset else None
        if found is None or found.policy is None:
            return base
        o = found.policy
        return TrafficPolicy(
            load_balancer=o.load_balancer or base.load_balancer,
            connection_pool=o.connection_pool or base.connection_pool,
            outlier_detection=o.outlier_detection or base.outlier_detection,
        )


# ------------------------------------------------------------------------------------------ rate limit


class RateLimitOverride(msgspec.Struct, frozen=True, gc=False):
    """A per-client limit for the listed SPIFFE principals (``spiffe://td/ns/x/sa/y``)."""

    principals: tuple[str, ...]
    requests_per_second: int


class RateLimit(msgspec.Struct, frozen=True, gc=False):
    """Local rate limit: ``requests_per_second`` in total (0: no total limit), ``identity_rps`` per
    client identity (0: none), ``overrides`` for named principals. Excess: 429, counted."""

    origin: str
    requests_per_second: int = 0
    identity_rps: int = 0
    overrides: tuple[RateLimitOverride, ...] = ()


# ------------------------------------------------------------------------------------------ the resource


class ServiceTraffic(msgspec.Struct, frozen=True, gc=False):
    namespace: str
    hostname: str
    routes: tuple[RouteRule, ...] = ()
    policy: DestinationPolicy | None = None
    rate_limit: RateLimit | None = None

    @property
    def key(self) -> str:
        """The xDS resource name and the service key (``namespace/hostname``)."""
        return f"{self.namespace}/{self.hostname}"


__all__ = [
    "BackendRef",
    "ConnectionPool",
    "DestinationPolicy",
    "Fault",
    "HeaderModifier",
    "LoadBalancer",
    "Mirror",
    "OutlierDetection",
    "PathMatch",
    "PathRewrite",
    "RateLimit",
    "RateLimitOverride",
    "Redirect",
    "Retry",
    "RouteMatch",
    "RouteRule",
    "ServiceTraffic",
    "Subset",
    "Timeouts",
    "TrafficPolicy",
    "UrlRewrite",
    "ValueMatch",
]

"""Conversion between ``ServiceTraffic`` and ``ambientmesh.waypoint.v1.ServiceTraffic`` (pure).

``service_traffic_from_proto`` is where a waypoint's traffic config enters the model from xDS, so it
validates what the router relies on and raises ``ConversionError`` naming the field path (the NACK
message): namespace and hostname present; known enum values; every regex compiles and uses only what
RE2 (Envoy's engine) accepts (``regex_problem``); header names lower-case HTTP tokens; a forwarding rule
has a backend with a positive weight and a redirect rule none; a prefix rewrite only on a rule whose
matches are all path prefixes; statuses, percentages and ports in range. Durations travel as
milliseconds and are seconds in the model. ``service_traffic_to_proto`` raises ``ConversionError`` for
model values that cannot be encoded. No I/O, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from meshcore.model.convert import ConversionError, _port, _required, convert_each, encode_each
from meshcore.model.policy_text import header_name_problem
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
from meshcore.proto import traffic_pb2

SERVICE_TRAFFIC_TYPE_URL = "type.googleapis.com/ambientmesh.waypoint.v1.ServiceTraffic"


_PATH_KINDS = ("exact", "prefix", "regex", "string_prefix")
_VALUE_KINDS = ("exact", "regex", "prefix", "present")
_REWRITE_KINDS = ("full", "prefix")
_LB_KINDS = ("round_robin", "least_request", "random", "consistent_hash")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)

# What Python's ``re`` accepts and RE2 refuses: backreferences, lookaround, atomic groups, possessive
# quantifiers, conditionals. Refused so a pattern means the same here as on an Envoy waypoint.
_RE2_REFUSED = (
    (re.compile(r"\\[1-9]|\(\?P="), "backreferences"),
    (re.compile(r"\(\?<?[=!]"), "lookahead/lookbehind"),
    (re.compile(r"\(\?>"), "atomic groups"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers"),
    (re.compile(r"\(\?\("), "conditional groups"),
)


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a route regex (does not compile, or uses what RE2 refuses), or None."""
    for finder, what in _RE2_REFUSED:
        if finder.search(pattern.replace("\\\\", "")):
            return f"regex {pattern!r} uses {what}, which RE2 (Envoy's regex engine) does not support"
    try:
        re.compile(pattern)
    except re.error as e:
        return f"regex {pattern!r} does not compile: {e}"
    return None



def _kind(names: tuple[str, ...], value: int, field: str) -> str:
    if not 0 <= value < len(names):
        raise ConversionError(field, f"unknown kind {value}")
    return names[value]


def _kind_number(names: tuple[str, ...], kind: str, field: str) -> int:
    if kind not in names:
        raise ConversionError(field, f"unknown kind {kind!r}")
    return names.index(kind)


def _ms(seconds: float, field: str) -> int:
    if seconds < 0:
        raise ConversionError(field, f"duration {seconds}s is negative")
    return round(seconds * 1000)


def _percent(value: float, field: str) -> float:
    if not 0.0 <= value <= 100.0:
        raise ConversionError(field, f"percentage {value} is outside 0..100")
    return value


def _header(name: str, field: str) -> str:
    problem = header_name_problem(name)
    if problem is not None:
        raise ConversionError(field, problem)
    return name


# ------------------------------------------------------------------------------------------- matches


def _path_to_proto(m: PathMatch, field: str) -> traffic_pb2.RoutePathMatch:
    return traffic_pb2.RoutePathMatch(kind=_kind_number(_PATH_KINDS, m.kind, f"{field}.kind"), value=m.value)  # type: ignore[arg-type]


def _path_from_proto(pb: traffic_pb2.RoutePathMatch, field: str) -> PathMatch:
    kind = _kind(_PATH_KINDS, pb.kind, f"{field}.kind")
    if kind == "regex":
        problem = regex_problem(pb.value)
        if problem is not None:
            raise ConversionError(f"{field}.value", problem)
    elif not pb.value.startswith("/"):
        raise ConversionError(f"{field}.value", f"path {pb.value!r} must start with '/'")
    return PathMatch(kind, pb.value)  # type: ignore[arg-type]


def _value_to_proto(m: ValueMatch, field: str) -> traffic_pb2.ValueMatch:
    return traffic_pb2.ValueMatch(
        name=m.name, kind=_kind_number(_VALUE_KINDS, m.kind, f"{field}.kind"), value=m.value, invert=m.invert  # type: ignore[arg-type]
    )


def _value_from_proto(pb: traffic_pb2.ValueMatch, field: str, *, header: bool) -> ValueMatch:
    kind = _kind(_VALUE_KINDS, pb.kind, f"{field}.kind")
    if header:
        _header(pb.name, f"{field}.name")
    elif not pb.name:
        raise ConversionError(f"{field}.name", "the query parameter name is empty")
    if kind == "regex":
        problem = regex_problem(pb.value)
        if problem is not None:
            raise ConversionError(f"{field}.value", problem)
    return ValueMatch(pb.name, kind, pb.value, pb.invert)  # type: ignore[arg-type]


def _match_to_proto(m: RouteMatch, field: str) -> traffic_pb2.RouteMatch:
    return traffic_pb2.RouteMatch(
        path=_path_to_proto(m.path, f"{field}.path") if m.path is not None else None,
        headers=encode_each(m.headers, f"{field}.headers", _value_to_proto),
        query_params=encode_each(m.query_params, f"{field}.query_params", _value_to_proto),
        method=m.method,
        port=_port(m.port, f"{field}.port"),
    )


def _match_from_proto(pb: traffic_pb2.RouteMatch, field: str) -> RouteMatch:
    return RouteMatch(
        path=_path_from_proto(pb.path, f"{field}.path") if pb.HasField("path") else None,
        headers=convert_each(pb.headers, f"{field}.headers", lambda v, f: _value_from_proto(v, f, header=True)),
        query_params=convert_each(
            pb.query_params, f"{field}.query_params", lambda v, f: _value_from_proto(v, f, header=False)
        ),
        method=pb.method,
        port=_port(pb.port, f"{field}.port"),
    )


# ------------------------------------------------------------------------------------------- actions


def _backend_to_proto(b: BackendRef, field: str) -> traffic_pb2.BackendRef:
    if b.weight < 0:
        raise ConversionError(f"{field}.weight", f"weight {b.weight} is negative")
    return traffic_pb2.BackendRef(
        namespace=b.namespace, hostname=b.hostname, port=_port(b.port, f"{field}.port"),
        subset=b.subset, weight=b.weight,
    )


def _backend_from_proto(pb: traffic_pb2.BackendRef, field: str) -> BackendRef:
    return BackendRef(
        namespace=_required(pb.namespace, f"{field}.namespace"),
        hostname=_required(pb.hostname, f"{field}.hostname"),
        port=_port(pb.port, f"{field}.port"),
        subset=pb.subset,
        weight=pb.weight,
    )


def _pairs_to_proto(pairs: Sequence[tuple[str, str]]) -> list[traffic_pb2.HeaderPair]:
    return [traffic_pb2.HeaderPair(name=n, value=v) for n, v in pairs]


def _modifier_to_proto(m: HeaderModifier, field: str) -> traffic_pb2.HeaderModifier:
    return traffic_pb2.HeaderModifier(set=_pairs_to_proto(m.set), add=_pairs_to_proto(m.add), remove=list(m.remove))


def _modifier_from_proto(pb: traffic_pb2.HeaderModifier, field: str) -> HeaderModifier:
    def pairs(values: Iterable[traffic_pb2.HeaderPair], at: str) -> tuple[tuple[str, str], ...]:
        return tuple((_header(p.name, f"{at}[{i}].name"), p.value) for i, p in enumerate(values))

    return HeaderModifier(
        set=pairs(pb.set, f"{field}.set"),
        add=pairs(pb.add, f"{field}.add"),
        remove=tuple(_header(n, f"{field}.remove[{i}]") for i, n in enumerate(pb.remove)),
    )


def _rewrite_path_to_proto(p: PathRewrite, field: str) -> traffic_pb2.PathRewrite:
    return traffic_pb2.PathRewrite(kind=_kind_number(_REWRITE_KINDS, p.kind, f"{field}.kind"), value=p.value)  # type: ignore[arg-type]


def _rewrite_path_from_proto(pb: traffic_pb2.PathRewrite, field: str) -> PathRewrite:
    kind = _kind(_REWRITE_KINDS, pb.kind, f"{field}.kind")
    if kind == "full" and not pb.value.startswith("/"):
        raise ConversionError(f"{field}.value", f"path {pb.value!r} must start with '/'")
    return PathRewrite(kind, pb.value)  # type: ignore[arg-type]


def _redirect_to_proto(r: Redirect, field: str) -> traffic_pb2.Redirect:
    return traffic_pb2.Redirect(
        scheme=r.scheme, hostname=r.hostname, port=_port(r.port, f"{field}.port"),
        path=_rewrite_path_to_proto(r.path, f"{field}.path") if r.path is not None else None,
        status_code=r.status_code,
    )


def _redirect_from_proto(pb: traffic_pb2.Redirect, field: str) -> Redirect:
    if pb.status_code not in REDIRECT_STATUSES:
        raise ConversionError(f"{field}.status_code", f"{pb.status_code} is not one of {REDIRECT_STATUSES}")
    if pb.scheme not in ("", "http", "https"):
        raise ConversionError(f"{field}.scheme", f"{pb.scheme!r} is not http or https")
    return Redirect(
        scheme=pb.scheme, hostname=pb.hostname, port=_port(pb.port, f"{field}.port"),
        path=_rewrite_path_from_proto(pb.path, f"{field}.path") if pb.HasField("path") else None,
        status_code=pb.status_code,
    )


def _rewrite_to_proto(r: UrlRewrite, field: str) -> traffic_pb2.UrlRewrite:
    return traffic_pb2.UrlRewrite(
        hostname=r.hostname, path=_rewrite_path_to_proto(r.path, f"{field}.path") if r.path is not None else None
    )


def _rewrite_from_proto(pb: traffic_pb2.UrlRewrite, field: str) -> UrlRewrite:
    return UrlRewrite(
        hostname=pb.hostname,
        path=_rewrite_path_from_proto(pb.path, f"{field}.path") if pb.HasField("path") else None,
    )


def _mirror_to_proto(m: Mirror, field: str) -> traffic_pb2.Mirror:
    return traffic_pb2.Mirror(backend=_backend_to_proto(m.backend, f"{field}.backend"), percent=m.percent)


def _mirror_from_proto(pb: traffic_pb2.Mirror, field: str) -> Mirror:
    if not pb.HasField("backend"):
        raise ConversionError(f"{field}.backend", "is required")
    return Mirror(_backend_from_proto(pb.backend, f"{field}.backend"), _percent(pb.percent, f"{field}.percent"))


def _retry_to_proto(r: Retry, field: str) -> traffic_pb2.Retry:
    return traffic_pb2.Retry(
        attempts=r.attempts, per_try_timeout_ms=_ms(r.per_try_timeout, f"{field}.per_try_timeout"),
        retry_on=list(r.retry_on), codes=list(r.codes), backoff_ms=_ms(r.backoff, f"{field}.backoff"),
    )


def _retry_from_proto(pb: traffic_pb2.Retry, field: str) -> Retry:
    for i, code in enumerate(pb.codes):
        if not 100 <= code <= 599:
            raise ConversionError(f"{field}.codes[{i}]", f"HTTP status {code} is outside 100..599")
    return Retry(
        attempts=pb.attempts, per_try_timeout=pb.per_try_timeout_ms / 1000, retry_on=tuple(pb.retry_on),
        codes=tuple(pb.codes), backoff=pb.backoff_ms / 1000,
    )


def _fault_from_proto(pb: traffic_pb2.Fault, field: str) -> Fault:
    if pb.abort_status and not 200 <= pb.abort_status <= 599:
        raise ConversionError(f"{field}.abort_status", f"HTTP status {pb.abort_status} is outside 200..599")
    return Fault(
        delay=pb.delay_ms / 1000, delay_percent=_percent(pb.delay_percent, f"{field}.delay_percent"),
        abort_status=pb.abort_status, abort_percent=_percent(pb.abort_percent, f"{field}.abort_percent"),
    )


def _rule_to_proto(r: RouteRule, field: str) -> traffic_pb2.RouteRule:
    pb = traffic_pb2.RouteRule(
        origin=r.origin,
        name=r.name,
        matches=encode_each(r.matches, f"{field}.matches", _match_to_proto),
        backends=encode_each(r.backends, f"{field}.backends", _backend_to_proto),
        mirrors=encode_each(r.mirrors, f"{field}.mirrors", _mirror_to_proto),
    )
    if r.request_headers is not None:
        pb.request_headers.CopyFrom(_modifier_to_proto(r.request_headers, f"{field}.request_headers"))
    if r.response_headers is not None:
        pb.response_headers.CopyFrom(_modifier_to_proto(r.response_headers, f"{field}.response_headers"))
    if r.redirect is not None:
        pb.redirect.CopyFrom(_redirect_to_proto(r.redirect, f"{field}.redirect"))
    if r.rewrite is not None:
        pb.rewrite.CopyFrom(_rewrite_to_proto(r.rewrite, f"{field}.rewrite"))
    if r.timeouts is not None:
        pb.timeouts.CopyFrom(traffic_pb2.Timeouts(
            request_ms=_ms(r.timeouts.request, f"{field}.timeouts.request"),
            backend_request_ms=_ms(r.timeouts.backend_request, f"{field}.timeouts.backend_request"),
        ))
    if r.retry is not None:
        pb.retry.CopyFrom(_retry_to_proto(r.retry, f"{field}.retry"))
    if r.fault is not None:
        f = r.fault
        pb.fault.CopyFrom(traffic_pb2.Fault(
            delay_ms=_ms(f.delay, f"{field}.fault.delay"), delay_percent=f.delay_percent,
            abort_status=f.abort_status, abort_percent=f.abort_percent,
        ))
    return pb


def _rule_from_proto(pb: traffic_pb2.RouteRule, field: str) -> RouteRule:
    matches = convert_each(pb.matches, f"{field}.matches", _match_from_proto)
    backends = convert_each(pb.backends, f"{field}.backends", _backend_from_proto)
    redirect = _redirect_from_proto(pb.redirect, f"{field}.redirect") if pb.HasField("redirect") else None
    rewrite = _rewrite_from_proto(pb.rewrite, f"{field}.rewrite") if pb.HasField("rewrite") else None
    fault = _fault_from_proto(pb.fault, f"{field}.fault") if pb.HasField("fault") else None
    if redirect is not None:
        if backends:
            raise ConversionError(f"{field}.backends", "a redirect rule has no backends")
    elif fault is None or fault.abort_percent < 100.0 or not fault.abort_status:
        if not any(b.weight > 0 for b in backends):
            raise ConversionError(f"{field}.backends", "a forwarding rule needs a backend with a positive weight")
    prefix_rewrites = [
        f"{field}.{where}.path" for where, r in (("redirect", redirect), ("rewrite", rewrite))
        if r is not None and r.path is not None and r.path.kind == "prefix"
    ]
    if prefix_rewrites and (not matches or any(m.path is None or m.path.kind not in ("prefix", "string_prefix")
                                               for m in matches)):
        raise ConversionError(prefix_rewrites[0], "a prefix rewrite needs every match to be a path prefix")
    timeouts = None
    if pb.HasField("timeouts"):
        timeouts = Timeouts(pb.timeouts.request_ms / 1000, pb.timeouts.backend_request_ms / 1000)
    return RouteRule(
        origin=pb.origin,
        name=pb.name,
        matches=matches,
        backends=backends,
        request_headers=_modifier_from_proto(pb.request_headers, f"{field}.request_headers")
        if pb.HasField("request_headers") else None,
        response_headers=_modifier_from_proto(pb.response_headers, f"{field}.response_headers")
        if pb.HasField("response_headers") else None,
        redirect=redirect,
        rewrite=rewrite,
        mirrors=convert_each(pb.mirrors, f"{field}.mirrors", _mirror_from_proto),
        timeouts=timeouts,
        retry=_retry_from_proto(pb.retry, f"{field}.retry") if pb.HasField("retry") else None,
        fault=fault,
    )


# ------------------------------------------------------------------------------------------- policy


def _policy_to_proto(p: TrafficPolicy, field: str) -> traffic_pb2.TrafficPolicy:
    pb = traffic_pb2.TrafficPolicy()
    if p.load_balancer is not None:
        lb = p.load_balancer
        pb.load_balancer.CopyFrom(traffic_pb2.LoadBalancer(
            kind=_kind_number(_LB_KINDS, lb.kind, f"{field}.load_balancer.kind"),  # type: ignore[arg-type]
            hash_header=lb.hash_header, hash_source_ip=lb.hash_source_ip,
        ))
    if p.connection_pool is not None:
        c = p.connection_pool
        pb.connection_pool.CopyFrom(traffic_pb2.ConnectionPool(
            max_connections=c.max_connections, http1_max_pending_requests=c.http1_max_pending_requests,
            http2_max_requests=c.http2_max_requests, max_requests_per_connection=c.max_requests_per_connection,
        ))
    if p.outlier_detection is not None:
        o = p.outlier_detection
        pb.outlier_detection.CopyFrom(traffic_pb2.OutlierDetection(
            consecutive_5xx_errors=o.consecutive_5xx_errors, consecutive_gateway_errors=o.consecutive_gateway_errors,
            interval_ms=_ms(o.interval, f"{field}.outlier_detection.interval"),
            base_ejection_time_ms=_ms(o.base_ejection_time, f"{field}.outlier_detection.base_ejection_time"),
            max_ejection_percent=o.max_ejection_percent,
        ))
    return pb


def _policy_from_proto(pb: traffic_pb2.TrafficPolicy, field: str) -> TrafficPolicy:
    lb = cp = od = None
    if pb.HasField("load_balancer"):
        kind = _kind(_LB_KINDS, pb.load_balancer.kind, f"{field}.load_balancer.kind")
        header = pb.load_balancer.hash_header
        if header:
            _header(header, f"{field}.load_balancer.hash_header")
        lb = LoadBalancer(kind, header, pb.load_balancer.hash_source_ip)  # type: ignore[arg-type]
    if pb.HasField("connection_pool"):
        c = pb.connection_pool
        cp = ConnectionPool(c.max_connections, c.http1_max_pending_requests, c.http2_max_requests,
                            c.max_requests_per_connection)
    if pb.HasField("outlier_detection"):
        o = pb.outlier_detection
        if o.max_ejection_percent > 100:
            raise ConversionError(f"{field}.outlier_detection.max_ejection_percent",
                                  f"{o.max_ejection_percent} is outside 0..100")
        if not o.interval_ms:
            raise ConversionError(f"{field}.outlier_detection.interval_ms", "must be positive")
        od = OutlierDetection(o.consecutive_5xx_errors, o.consecutive_gateway_errors, o.interval_ms / 1000,
                              o.base_ejection_time_ms / 1000, o.max_ejection_percent)
    return TrafficPolicy(lb, cp, od)


def _subset_from_proto(pb: traffic_pb2.Subset, field: str) -> Subset:
    return Subset(
        name=_required(pb.name, f"{field}.name"),
        labels=tuple((p.name, p.value) for p in pb.labels),
        workloads=tuple(pb.workloads),
        policy=_policy_from_proto(pb.policy, f"{field}.policy") if pb.HasField("policy") else None,
    )


def _subset_to_proto(s: Subset, field: str) -> traffic_pb2.Subset:
    pb = traffic_pb2.Subset(name=s.name, labels=_pairs_to_proto(s.labels), workloads=list(s.workloads))
    if s.policy is not None:
        pb.policy.CopyFrom(_policy_to_proto(s.policy, f"{field}.policy"))
    return pb


# ------------------------------------------------------------------------------------------- resource


def service_traffic_to_proto(t: ServiceTraffic) -> traffic_pb2.ServiceTraffic:
    """Encode; raises ``ConversionError`` for a value that cannot be encoded."""
    pb = traffic_pb2.ServiceTraffic(
        namespace=t.namespace,
        hostname=t.hostname,
        routes=encode_each(t.routes, "service_traffic.routes", _rule_to_proto),
    )
    if t.policy is not None:
        pb.policy.CopyFrom(traffic_pb2.DestinationPolicy(
            origin=t.policy.origin,
            traffic_policy=_policy_to_proto(t.policy.traffic_policy, "service_traffic.policy.traffic_policy"),
            subsets=encode_each(t.policy.subsets, "service_traffic.policy.subsets", _subset_to_proto),
        ))
    if t.rate_limit is not None:
        r = t.rate_limit
        pb.rate_limit.CopyFrom(traffic_pb2.RateLimit(
            origin=r.origin, requests_per_second=r.requests_per_second, identity_rps=r.identity_rps,
            overrides=[traffic_pb2.RateLimitOverride(principals=list(o.principals),
                                                     requests_per_second=o.requests_per_second)
                       for o in r.overrides],
        ))
    return pb


def service_traffic_from_proto(pb: traffic_pb2.ServiceTraffic) -> ServiceTraffic:
    """Decode and validate; raises ``ConversionError`` naming the bad field."""
    policy = None
    if pb.HasField("policy"):
        subsets = convert_each(pb.policy.subsets, "service_traffic.policy.subsets", _subset_from_proto)
        names = [s.name for s in subsets]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConversionError(f"service_traffic.policy.subsets[{i}].name", f"subset {name!r} appears twice")
        policy = DestinationPolicy(
            origin=pb.policy.origin,
            traffic_policy=_policy_from_proto(pb.policy.traffic_policy, "service_traffic.policy.traffic_policy"),
            subsets=subsets,
        )
    rate_limit = None
    if pb.HasField("rate_limit"):
        r = pb.rate_limit
        overrides = []
        for i, o in enumerate(r.overrides):
            if not o.principals:
                raise ConversionError(f"service_traffic.rate_limit.overrides[{i}].principals", "is empty")
            overrides.append(RateLimitOverride(tuple(o.principals), o.requests_per_second))
        rate_limit = RateLimit(r.origin, r.requests_per_second, r.identity_rps, tuple(overrides))
    return ServiceTraffic(
        namespace=_required(pb.namespace, "service_traffic.namespace"),
        hostname=_required(pb.hostname, "service_traffic.hostname"),
        routes=convert_each(pb.routes, "service_traffic.routes", _rule_from_proto),
        policy=policy,
        rate_limit=rate_limit,
    )


__all__ = [
    "REDIRECT_STATUSES",
    "SERVICE_TRAFFIC_TYPE_URL",
    "header_name_problem",
    "regex_problem",
    "service_traffic_from_proto",
    "service_traffic_to_proto",
]

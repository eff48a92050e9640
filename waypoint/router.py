"""The waypoint's route selection: ``route(traffic, request, *, rand) -> RouteDecision``, a pure function.

Given the destination service's ``ServiceTraffic`` (None: no traffic config) and one request, it says
what to do with it:
- no config, or config without routes: ``RouteDecision(rule=None)``: the service as dialled, with the
  service's DestinationRule policy and rate limit still attached;
- routes exist: the FIRST rule with a matching entry wins (istiod_lite already sorted them by the
  Gateway API's precedence, or kept a VirtualService's order); none matches: ``no_route`` (404 ``NR``);
- the matched rule redirects: ``redirect`` = (status, Location), answered locally;
- else a backend is chosen by weight with ``rand`` (``rand() -> [0, 1)``, injectable so tests are
  seeded), request/response header edits, URL rewrite, mirrors (each taken with its percentage),
  timeouts, the retry policy, and the fault decided for this request (delay and/or abort status).
Matching: path on the path without query string (Exact; PathPrefix on whole segments, a trailing ``/``
of the prefix ignored; RegularExpression a full match); header values (several values of one name joined
with ``,`` as Envoy does), query parameters (the first value of a name, case-sensitive), method exact,
port when set. No I/O, no clock, no randomness of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

from meshcore.model.traffic import (
    BackendRef,
    PathMatch,
    PathRewrite,
    RateLimit,
    Redirect,
    Retry,
    RouteMatch,
    RouteRule,
    ServiceTraffic,
    Subset,
    TrafficPolicy,
    ValueMatch,
)
from waypoint.l7.model import HeaderList, Request

Rand = Callable[[], float]
"""A uniform random number in [0, 1) (``random.Random(seed).random`` in tests)."""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """What to do with one request (the data plane carries it out; see the module docstring).

    ``backend`` None with no ``redirect`` / ``no_route``: the destination service as dialled.
    Durations are seconds, 0 = not set. ``fault_delay`` / ``fault_abort`` are already decided for
    this request (0: none). ``policy`` is the effective DestinationRule policy of the chosen backend
    (subset overrides merged), ``subset`` the subset it must use (its ``workloads`` are the endpoints
    allowed), ``rate_limit`` the destination service's local rate limit.
    """

    rule: RouteRule | None = None
    rule_index: int = -1
    backend: BackendRef | None = None
    no_route: bool = False
    redirect: tuple[int, str] | None = None  # (status, Location)
    set_headers: HeaderList = ()
    add_headers: HeaderList = ()
    remove_headers: tuple[str, ...] = ()
    response_set_headers: HeaderList = ()
    response_add_headers: HeaderList = ()
    response_remove_headers: tuple[str, ...] = ()
    rewrite_authority: str = ""  # "": keep
    rewrite_path: str = ""  # "": keep (includes the query string when set)
    mirrors: tuple[BackendRef, ...] = ()
    timeout: float = 0.0  # the whole request, retries included
    backend_timeout: float = 0.0  # each attempt (backendRequest / perTryTimeout)
    retry: Retry | None = None
    fault_delay: float = 0.0
    fault_abort: int = 0
    policy: TrafficPolicy | None = None
    subset: Subset | None = None
    rate_limit: RateLimit | None = None

    @property
    def origin(self) -> str:
        """Which resource decided (for logs); "" for the default route."""
        return self.rule.origin if self.rule is not None else ""


# ------------------------------------------------------------------------------------------- matching


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _path_matches(m: PathMatch, path: str) -> bool:
    if m.kind == "exact":
        return path == m.value
    if m.kind == "prefix":
        prefix = m.value.rstrip("/")
        return path == prefix or path.startswith(prefix + "/") or prefix == ""
    if m.kind == "string_prefix":
        return path.startswith(m.value)
    return _regex(m.value).fullmatch(path) is not None


def _value_matches(m: ValueMatch, value: str | None) -> bool:
    if value is None:
        found = False
    elif m.kind == "exact":
        found = value == m.value
    elif m.kind == "prefix":
        found = value.startswith(m.value)
    elif m.kind == "present":
        found = True
    else:
        found = _regex(m.value).fullmatch(value) is not None
    return found != m.invert


@dataclass(frozen=True, slots=True)
class _Facts:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    method: str
    port: int


def _facts(request: Request, port: int) -> _Facts:
    path, _, query = request.path.partition("?")
    params: dict[str, str] = {}
    if query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(name, value)
    headers: dict[str, str] = {}
    for name, value in request.headers:
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    headers.setdefault(":authority", request.authority)
    return _Facts(path, params, headers, request.method, port)


def _matches(m: RouteMatch, f: _Facts) -> bool:
    if m.port and m.port != f.port:
        return False
    if m.method and m.method != f.method:
        return False
    if m.path is not None and not _path_matches(m.path, f.path):
        return False
    for h in m.headers:
        if not _value_matches(h, f.headers.get(h.name)):
            return False
    return all(_value_matches(q, f.query.get(q.name)) for q in m.query_params)


def match_rule(traffic: ServiceTraffic, request: Request, port: int = 0) -> tuple[int, RouteMatch | None]:
    """The index of the first rule with a matching entry (and that entry; None for a rule without
    matches), or (-1, None)."""
    f = _facts(request, port)
    for i, rule in enumerate(traffic.routes):
        if not rule.matches:
            return i, None
        for m in rule.matches:
            if _matches(m, f):
                return i, m
    return -1, None


# ------------------------------------------------------------------------------------------- actions


def pick_weighted(backends: tuple[BackendRef, ...], rand: Rand) -> BackendRef | None:
    """A backend chosen with probability weight / total (weight-0 backends never); None if total is 0."""
    total = sum(b.weight for b in backends if b.weight > 0)
    if total <= 0:
        return None
    x = rand() * total
    for b in backends:
        if b.weight <= 0:
            continue
        if x < b.weight:
            return b
        x -= b.weight
    return [b for b in backends if b.weight > 0][-1]  # float rounding at the top end


def _rewritten_path(rewrite: PathRewrite, path: str, matched: RouteMatch | None) -> str:
    """The new path (query kept) for a full or prefix rewrite of ``path``."""
    bare, sep, query = path.partition("?")
    if rewrite.kind == "full":
        new = rewrite.value
    else:
        prefix = ""
        if matched is not None and matched.path is not None:
            prefix = matched.path.value if matched.path.kind == "string_prefix" else matched.path.value.rstrip("/")
        rest = bare[len(prefix):]
        if matched is not None and matched.path is not None and matched.path.kind == "string_prefix":
            new = rewrite.value + rest
        else:
            new = rewrite.value.rstrip("/") + rest
        if not new.startswith("/"):
            new = "/" + new
    return new + (sep + query if sep else "")


def _split_authority(authority: str) -> tuple[str, str]:
    if authority.startswith("["):
        host, _, rest = authority.partition("]")
        return host + "]", rest.removeprefix(":")
    host, _, port = authority.partition(":")
    return host, port


def redirect_location(r: Redirect, request: Request, matched: RouteMatch | None) -> str:
    """The Location of a redirect: the request's URL with the redirect's parts replaced. A changed
    scheme without a port drops the port (the scheme's default), as the Gateway API specifies."""
    host, port = _split_authority(request.authority)
    scheme = r.scheme or request.scheme or "http"
    if r.hostname:
        host = r.hostname
    if r.port:
        port = str(r.port)
    elif r.scheme and r.scheme != request.scheme:
        port = ""
    if (scheme, port) in (("http", "80"), ("https", "443")):
        port = ""
    path = _rewritten_path(r.path, request.path, matched) if r.path is not None else request.path
    return f"{scheme}://{host}{':' + port if port else ''}{path}"


def _chance(percent: float, rand: Rand) -> bool:
    return percent >= 100.0 or (percent > 0.0 and rand() * 100.0 < percent)


def route(traffic: ServiceTraffic | None, request: Request, *, rand: Rand, port: int = 0) -> RouteDecision:
    """The routing decision for ``request`` to the service ``traffic`` describes (module docstring).
    ``port`` is the destination port the request was sent to (0: match rules on any port)."""
    if traffic is None:
        return RouteDecision()
    dest_policy = traffic.policy
    if not traffic.routes:
        return RouteDecision(policy=dest_policy.policy_for() if dest_policy else None, rate_limit=traffic.rate_limit)
    index, matched = match_rule(traffic, request, port)
    if index < 0:
        return RouteDecision(no_route=True, rate_limit=traffic.rate_limit)
    rule = traffic.routes[index]
    if rule.redirect is not None:
        location = redirect_location(rule.redirect, request, matched)
        return RouteDecision(rule=rule, rule_index=index, redirect=(rule.redirect.status_code, location),
                             rate_limit=traffic.rate_limit)
    backend = pick_weighted(rule.backends, rand)
    policy = subset = None
    if dest_policy is not None and backend is not None and backend.service_key == traffic.key:
        policy = dest_policy.policy_for(backend.subset)
        subset = dest_policy.subset(backend.subset) if backend.subset else None
    fault = rule.fault
    abort = 0
    fault_delay = 0.0
    if fault is not None:
        if fault.delay > 0 and _chance(fault.delay_percent, rand):
            fault_delay = fault.delay
        if fault.abort_status and _chance(fault.abort_percent, rand):
            abort = fault.abort_status
    req_mod, resp_mod = rule.request_headers, rule.response_headers
    rewrite = rule.rewrite
    timeouts = rule.timeouts
    backend_timeout = timeouts.backend_request if timeouts else 0.0
    if rule.retry is not None and rule.retry.per_try_timeout:
        backend_timeout = rule.retry.per_try_timeout
    return RouteDecision(
        rule=rule,
        rule_index=index,
        backend=backend,
        set_headers=req_mod.set if req_mod else (),
        add_headers=req_mod.add if req_mod else (),
        remove_headers=req_mod.remove if req_mod else (),
        response_set_headers=resp_mod.set if resp_mod else (),
        response_add_headers=resp_mod.add if resp_mod else (),
        response_remove_headers=resp_mod.remove if resp_mod else (),
        rewrite_authority=rewrite.hostname if rewrite else "",
        rewrite_path=_rewritten_path(rewrite.path, request.path, matched) if rewrite and rewrite.path else "",
        mirrors=tuple(m.backend for m in rule.mirrors if _chance(m.percent, rand)),
        timeout=timeouts.request if timeouts else 0.0,
        backend_timeout=backend_timeout,
        retry=rule.retry,
        fault_delay=fault_delay,
        fault_abort=abort,
        policy=policy,
        subset=subset,
        rate_limit=traffic.rate_limit,
    )


__all__ = ["Rand", "RouteDecision", "match_rule", "pick_weighted", "redirect_location", "route"]

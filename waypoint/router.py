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

Speed: each ``ServiceTraffic`` is compiled once (memoised by object identity, as resources are frozen
and shared by snapshots) into an index of its match entries by path: exact paths in a dict, segment and
string prefixes by length, the rest (regex paths, no path, rules without matches) always candidates. A
request looks up the entries its path can satisfy, then checks them fully in table order, so the first
matching entry wins exactly as a linear scan would; the index only skips entries whose path cannot match.
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


_NO_VALUES: dict[str, str] = {}


def _facts(request: Request, port: int, *, headers: frozenset[str] | None = None, query: bool = True) -> _Facts:
    """The request as the matchers see it. ``headers``: the only header names to collect (None: all);
    ``query`` False leaves the query map empty (for a table none of whose entries looks at them)."""
    path, _, raw_query = request.path.partition("?")
    params = _NO_VALUES
    if raw_query and query:
        params = {}
        for name, value in parse_qsl(raw_query, keep_blank_values=True):
            params.setdefault(name, value)
    values = _NO_VALUES
    if headers is None or headers:
        values = {}
        for name, value in request.headers:
            if headers is None or name in headers:
                values[name] = f"{values[name]},{value}" if name in values else value
        values.setdefault(":authority", request.authority)
    return _Facts(path, params, values, request.method, port)


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


class _Index:
    """A route table's match entries (rule index, entry; None for a rule without matches), numbered in
    table order, bucketed by what a request path must be for them to match (module docstring)."""

    __slots__ = ("always", "entries", "exact", "prefix", "prefix_lengths", "query", "headers",
                 "string_prefix", "string_prefix_lengths")

    def __init__(self, traffic: ServiceTraffic) -> None:
        self.entries: list[tuple[int, RouteMatch | None]] = []
        self.always: list[int] = []
        self.exact: dict[str, list[int]] = {}
        self.prefix: dict[str, list[int]] = {}
        self.string_prefix: dict[str, list[int]] = {}
        names: set[str] = set()
        self.query = False
        for i, rule in enumerate(traffic.routes):
            if not rule.matches:
                self.always.append(len(self.entries))
                self.entries.append((i, None))
                break  # matches every request: no later entry can win
            for m in rule.matches:
                at = len(self.entries)
                self.entries.append((i, m))
                names.update(h.name for h in m.headers)
                self.query = self.query or bool(m.query_params)
                p = m.path
                if p is None or p.kind == "regex":
                    self.always.append(at)
                elif p.kind == "exact":
                    self.exact.setdefault(p.value, []).append(at)
                elif p.kind == "prefix" and p.value.rstrip("/"):
                    self.prefix.setdefault(p.value.rstrip("/"), []).append(at)
                elif p.kind == "string_prefix" and p.value:
                    self.string_prefix.setdefault(p.value, []).append(at)
                else:  # an empty prefix: every path
                    self.always.append(at)
        self.headers = frozenset(names)  # the only headers a request's entries look at
        self.prefix_lengths = sorted({len(k) for k in self.prefix})
        self.string_prefix_lengths = sorted({len(k) for k in self.string_prefix})

    def candidates(self, path: str) -> list[int]:
        """The numbers of the entries whose path part may match ``path``, in table order."""
        found = [self.always]
        hit = self.exact.get(path)
        if hit is not None:
            found.append(hit)
        size = len(path)
        for n in self.prefix_lengths:
            if n > size:
                break
            if n == size or path[n] == "/":
                hit = self.prefix.get(path[:n])
                if hit is not None:
                    found.append(hit)
        for n in self.string_prefix_lengths:
            if n > size:
                break
            hit = self.string_prefix.get(path[:n])
            if hit is not None:
                found.append(hit)
        if len(found) == 1:
            return self.always
        return sorted(x for part in found for x in part)


class _IndexMemo:
    """Compiled route tables by ``ServiceTraffic`` identity; holding each one keeps its ``id`` from being
    reused. Bounded (oldest evicted first). A memo only: results never depend on it."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._maxsize = maxsize
        self._entries: dict[int, tuple[ServiceTraffic, _Index]] = {}

    def get(self, traffic: ServiceTraffic) -> _Index:
        entry = self._entries.get(id(traffic))
        if entry is not None and entry[0] is traffic:
            return entry[1]
        index = _Index(traffic)
        while len(self._entries) >= self._maxsize:
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[id(traffic)] = (traffic, index)
        return index


_MEMO = _IndexMemo()


def match_rule(traffic: ServiceTraffic, request: Request, port: int = 0) -> tuple[int, RouteMatch | None]:
    """The index of the first rule with a matching entry (and that entry; None for a rule without
    matches), or (-1, None)."""
    index = _MEMO.get(traffic)
    f = _facts(request, port, headers=index.headers, query=index.query)
    entries = index.entries
    for at in index.candidates(f.path):
        i, m = entries[at]
        if m is None or _matches(m, f):
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

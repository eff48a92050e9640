"""The pure router: which rule matches, weighted picking, redirects, rewrites, mirrors, faults."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshcore.model.traffic import (
    BackendRef,
    DestinationPolicy,
    Fault,
    HeaderModifier,
    LoadBalancer,
    Mirror,
    PathMatch,
    PathRewrite,
    RateLimit,
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
from waypoint.l7.model import ConnectionFacts, Request
from waypoint.router import RouteDecision, pick_weighted, route

HOST = "echo.demo.svc.cluster.local"


def req(path: str = "/", method: str = "GET", authority: str = "echo:80", scheme: str = "http",
        **headers: str) -> Request:
    return Request(method, scheme, authority, path, tuple((k.replace("_", "-"), v) for k, v in headers.items()),
                   "1.1", "id", ConnectionFacts(destination="10.96.0.10:80"))


def to(name: str, weight: int = 1, subset: str = "") -> BackendRef:
    return BackendRef("demo", f"{name}.demo.svc.cluster.local", 80, subset, weight)


def rule(origin: str, *matches: RouteMatch, backends: tuple[BackendRef, ...] | None = None, **kw: object) -> RouteRule:
    return RouteRule(origin, matches=matches, backends=(to(origin),) if backends is None else backends, **kw)  # type: ignore[arg-type]


def m(path: str | None = None, kind: str = "prefix", **kw: object) -> RouteMatch:
    return RouteMatch(path=PathMatch(kind, path) if path else None, **kw)  # type: ignore[arg-type]


TABLE = ServiceTraffic("demo", HOST, routes=(
    rule("exact-login", m("/login", "exact")),
    rule("api-v2-header", m("/api", headers=(ValueMatch("x-version", "exact", "v2"),))),
    rule("api-post", m("/api", method="POST")),
    rule("api-debug", m("/api", query_params=(ValueMatch("debug", "exact", "1"),))),
    rule("api", m("/api")),
    rule("regex", m("/v[0-9]+/items", "regex")),
    rule("port-8080", m("/", port=8080)),
    rule("not-beta", m(headers=(ValueMatch("x-beta", "present", invert=True),))),
))

CASES = [
    pytest.param(req("/login"), "exact-login", id="an exact path wins"),
    pytest.param(req("/login/x"), "not-beta", id="an exact path does not match a longer path"),
    pytest.param(req("/api/x", x_version="v2"), "api-v2-header", id="a header match sends to its rule"),
    pytest.param(req("/api", "POST"), "api-post", id="a method match sends to its rule"),
    pytest.param(req("/api/x?debug=1&debug=2"), "api-debug", id="the first value of a query parameter counts"),
    pytest.param(req("/api/x?debug=2"), "api", id="a different query value falls through"),
    pytest.param(req("/apix"), "not-beta", id="a path prefix matches whole segments only"),
    pytest.param(req("/api/"), "api", id="a path prefix matches with a trailing slash"),
    pytest.param(req("/v12/items"), "regex", id="a regex path is a full match"),
    pytest.param(req("/v12/items/x"), "not-beta", id="a regex path does not match a longer path"),
    pytest.param(req("/other", x_beta="1"), None, id="no rule matching is no route"),
]


@pytest.mark.parametrize(("request_", "origin"), CASES)
def test_the_first_matching_rule_wins(request_: Request, origin: str | None) -> None:
    decision = route(TABLE, request_, rand=random.Random(1).random, port=80)
    if origin is None:
        assert decision.no_route
    else:
        assert decision.rule is not None and decision.rule.origin == origin


def test_a_port_match_applies_only_to_that_port() -> None:
    d = route(TABLE, req("/other", x_beta="1"), rand=random.random, port=8080)
    assert d.rule is not None and d.rule.origin == "port-8080"


def test_header_values_of_one_name_are_joined_as_envoy_does() -> None:
    t = ServiceTraffic("demo", HOST, routes=(rule("both", m(headers=(ValueMatch("x-a", "exact", "1,2"),))),))
    r = Request("GET", "http", "echo", "/", (("x-a", "1"), ("x-a", "2")), "1.1", "id", ConnectionFacts())
    assert route(t, r, rand=random.random).rule is not None


def test_no_config_is_the_service_as_dialled() -> None:
    assert route(None, req(), rand=random.random) == RouteDecision()


def test_policy_only_config_keeps_the_default_route_with_its_policy_and_limit() -> None:
    policy = DestinationPolicy("dr", TrafficPolicy(LoadBalancer("random")))
    t = ServiceTraffic("demo", HOST, policy=policy, rate_limit=RateLimit("rl", 10))
    d = route(t, req(), rand=random.random)
    assert d.rule is None and d.backend is None and not d.no_route
    assert d.policy == TrafficPolicy(LoadBalancer("random")) and d.rate_limit == RateLimit("rl", 10)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_weighted_picking_converges_to_the_weights(seed: int) -> None:
    backends = (to("v1", 90), to("v2", 10), to("never", 0))
    rng = random.Random(seed)
    n = 20_000
    counts = Counter(b.hostname.split(".")[0] for _ in range(n) if (b := pick_weighted(backends, rng.random)))
    assert counts["never"] == 0
    assert abs(counts["v2"] / n - 0.10) < 0.01
    assert counts["v1"] + counts["v2"] == n


def test_weights_summing_to_zero_pick_nothing() -> None:
    assert pick_weighted((to("a", 0),), random.random) is None


def test_the_backend_subset_brings_its_policy_override() -> None:
    sub = Subset("v2", (("version", "v2"),), ("uid-2",), TrafficPolicy(LoadBalancer("least_request")))
    policy = DestinationPolicy("dr", TrafficPolicy(LoadBalancer("random")), (sub,))
    t = ServiceTraffic("demo", HOST, routes=(rule("r", backends=(BackendRef("demo", HOST, 0, "v2", 1),)),),
                       policy=policy)
    d = route(t, req(), rand=random.random)
    assert d.subset == sub and d.policy == TrafficPolicy(LoadBalancer("least_request"))


REDIRECTS = [
    pytest.param(Redirect(scheme="https"), req("/a?x=1", authority="echo:80"), "https://echo/a?x=1",
                 id="a scheme change drops the port"),
    pytest.param(Redirect(hostname="new.example", port=8443), req("/a"), "http://new.example:8443/a",
                 id="hostname and port are replaced"),
    pytest.param(Redirect(path=PathRewrite("full", "/moved")), req("/a?x=1"), "http://echo/moved?x=1",
                 id="a full path replacement keeps the query"),
    pytest.param(Redirect(path=PathRewrite("prefix", "/v2")), req("/api/items"), "http://echo/v2/items",
                 id="a prefix replacement replaces the matched prefix"),
    pytest.param(Redirect(path=PathRewrite("prefix", "/")), req("/api/items"), "http://echo/items",
                 id="a prefix replacement with slash keeps one slash"),
]


@pytest.mark.parametrize(("redirect", "request_", "location"), REDIRECTS)
def test_redirects_build_the_location_from_the_request(redirect: Redirect, request_: Request, location: str) -> None:
    t = ServiceTraffic("demo", HOST, routes=(rule("r", m("/api"), m("/a"), backends=(), redirect=redirect),))
    d = route(t, request_, rand=random.random)
    assert d.redirect == (redirect.status_code, location) and d.backend is None


def test_rewrites_and_header_edits_are_carried_out_as_written() -> None:
    t = ServiceTraffic("demo", HOST, routes=(rule(
        "r", m("/api"),
        request_headers=HeaderModifier(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)),
        response_headers=HeaderModifier(remove=("server",)),
        rewrite=UrlRewrite("backend.example", PathRewrite("prefix", "/internal")),
        timeouts=Timeouts(5.0, 1.0), retry=Retry(2, 0.5, ("5xx",)),
    ),))
    d = route(t, req("/api/x?q=1"), rand=random.random)
    assert (d.set_headers, d.add_headers, d.remove_headers) == ((("x-a", "1"),), (("x-b", "2"),), ("x-c",))
    assert d.response_remove_headers == ("server",)
    assert (d.rewrite_authority, d.rewrite_path) == ("backend.example", "/internal/x?q=1")
    assert (d.timeout, d.backend_timeout) == (5.0, 0.5)


def test_mirrors_and_faults_are_taken_with_their_percentages() -> None:
    t = ServiceTraffic("demo", HOST, routes=(rule(
        "r", mirrors=(Mirror(to("shadow"), 25.0),), fault=Fault(0.1, 50.0, 503, 10.0)),))
    rng = random.Random(7)
    n = 4000
    decisions = [route(t, req(), rand=rng.random) for _ in range(n)]
    mirrored = sum(1 for d in decisions if d.mirrors)
    delayed = sum(1 for d in decisions if d.fault_delay == 0.1)
    aborted = sum(1 for d in decisions if d.fault_abort == 503)
    assert abs(mirrored / n - 0.25) < 0.03
    assert abs(delayed / n - 0.50) < 0.03
    assert abs(aborted / n - 0.10) < 0.02

"""Compiling HTTPRoute / GRPCRoute / VirtualService / DestinationRule / HTTPLocalRateLimitPolicy into one
ServiceTraffic per service: precedence, every supported field, bad config refused alone with its status."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from istiod_lite.registry.traffic import TrafficState, TrafficUpdate, update
from meshcore.model import Port
from meshcore.model.traffic import (
    BackendRef,
    ConnectionPool,
    Fault,
    LoadBalancer,
    Mirror,
    OutlierDetection,
    PathMatch,
    RateLimitOverride,
    Retry,
    RouteMatch,
    Timeouts,
    ValueMatch,
)
from meshcore.store.resource import Resource, ResourceRef
from meshcore.testing.builders import service, workload

NS = "demo"
ECHO = f"{NS}/echo.{NS}.svc.cluster.local"
SERVICES = {s.key: s for s in (
    service("echo", "10.96.0.10", {80: 8080}, namespace=NS),
    service("echo-v1", "10.96.0.11", {80: 8080}, namespace=NS),
    service("echo-v2", "10.96.0.12", {80: 8080}, namespace=NS),
    service("other", "10.96.0.13", {80: 8080}, namespace=NS),
)}
WORKLOADS = {w.uid: w for w in (
    workload("echo-a", "10.0.0.1", namespace=NS, services={ECHO: (Port(80, 8080),)}),
    workload("echo-b", "10.0.0.2", namespace=NS, services={ECHO: (Port(80, 8080),)}),
)}
LABELS = {"echo-a": {"app": "echo", "version": "v1"}, "echo-b": {"app": "echo", "version": "v2"}}


def res(kind: str, name: str, spec: dict[str, Any], namespace: str = NS) -> Resource:
    api = {"HTTPRoute": "gateway.networking.k8s.io/v1", "GRPCRoute": "gateway.networking.k8s.io/v1",
           "VirtualService": "networking.istio.io/v1", "DestinationRule": "networking.istio.io/v1",
           "HTTPLocalRateLimitPolicy": "policy.ambientmesh.io/v1alpha1"}[kind]
    return Resource(kind, name, namespace, api, spec=spec)


def pods() -> list[Resource]:
    return [Resource("Pod", name, NS, "v1", labels=labels) for name, labels in LABELS.items()]


def run(*resources: Resource, state: TrafficState | None = None, deleted: tuple[ResourceRef, ...] = ()) -> TrafficUpdate:
    return update(state or TrafficState(), [*pods(), *resources] if state is None else list(resources), deleted,
                  services=SERVICES, workloads=WORKLOADS, waypoints={}, everything=state is None)


def route(name: str, *rules: dict[str, Any], parent: str = "echo", **spec: Any) -> Resource:
    return res("HTTPRoute", name, {"parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
                                   "rules": list(rules), **spec})


def to(*names_weights: tuple[str, int], **rule: Any) -> dict[str, Any]:
    return {"backendRefs": [{"name": n, "port": 80, "weight": w} for n, w in names_weights], **rule}


def conditions(u: TrafficUpdate, kind: str, name: str) -> dict[str, tuple[str, str, str]]:
    status = u.statuses[ResourceRef(kind, NS, name)]
    conds = status["parents"][0]["conditions"] if "parents" in status else status["conditions"]
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conds}


# ------------------------------------------------------------------------------------------- precedence


def test_matches_are_ordered_by_the_gateway_api_precedence() -> None:
    u = run(
        route("b-general", to(("echo-v1", 1), matches=[{"path": {"type": "PathPrefix", "value": "/"}}])),
        route("a-specific", to(("echo-v2", 1), matches=[
            {"path": {"type": "PathPrefix", "value": "/api"}},
            {"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"},
            {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-A", "value": "1"}]},
            {"path": {"type": "PathPrefix", "value": "/api"}, "queryParams": [{"name": "q", "value": "1"},
                                                                              {"name": "r", "value": "2"}]},
            {"path": {"type": "Exact", "value": "/"}},
            {"path": {"type": "RegularExpression", "value": "/api/v[0-9]+/very/long/pattern"}},
        ])),
        route("c-tie", to(("other", 1), matches=[{"path": {"type": "PathPrefix", "value": "/"}}])),
    )
    routes = u.changed[ECHO].routes
    got = [(r.origin.split("/")[1], r.matches[0].path, r.matches[0].method, len(r.matches[0].headers),
            len(r.matches[0].query_params)) for r in routes]
    assert got == [
        ("a-specific", PathMatch("exact", "/"), "", 0, 0),
        ("a-specific", PathMatch("prefix", "/api"), "POST", 0, 0),
        ("a-specific", PathMatch("prefix", "/api"), "", 1, 0),
        ("a-specific", PathMatch("prefix", "/api"), "", 0, 2),
        ("a-specific", PathMatch("prefix", "/api"), "", 0, 0),
        ("b-general", PathMatch("prefix", "/"), "", 0, 0),
        ("c-tie", PathMatch("prefix", "/"), "", 0, 0),
        ("a-specific", PathMatch("regex", "/api/v[0-9]+/very/long/pattern"), "", 0, 0),
    ]
    assert routes[2].matches[0].headers == (ValueMatch("x-a", "exact", "1"),)
    assert all(r.matches[0].port == 80 for r in routes)


def test_a_canary_split_keeps_its_weights_and_every_rule_field() -> None:
    u = run(route("canary", to(("echo-v1", 90), ("echo-v2", 10),
                               filters=[{"type": "RequestHeaderModifier",
                                         "requestHeaderModifier": {"set": [{"name": "X-Canary", "value": "1"}]}},
                                        {"type": "RequestMirror", "requestMirror": {
                                            "backendRef": {"name": "other", "port": 80}, "percent": 5}}],
                               timeouts={"request": "10s", "backendRequest": "2s"},
                               retry={"attempts": 3, "codes": [502, 503], "backoff": "100ms"})))
    (rule,) = u.changed[ECHO].routes
    host = f"{NS}.svc.cluster.local"
    assert rule.backends == (BackendRef(NS, f"echo-v1.{host}", 80, "", 90), BackendRef(NS, f"echo-v2.{host}", 80, "", 10))
    assert rule.request_headers is not None and rule.request_headers.set == (("x-canary", "1"),)
    assert rule.mirrors == (Mirror(BackendRef(NS, f"other.{host}", 80, "", 1), 5.0),)
    assert rule.timeouts == Timeouts(10.0, 2.0)
    assert rule.retry is not None and rule.retry.attempts == 3 and rule.retry.codes == (502, 503)
    assert rule.retry.backoff == pytest.approx(0.1)
    assert conditions(u, "HTTPRoute", "canary") == {
        "Accepted": ("True", "Accepted", "Route was valid"),
        "ResolvedRefs": ("True", "ResolvedRefs", "All references resolved"),
    }


def test_a_grpc_route_matches_service_and_method_as_paths() -> None:
    u = run(res("GRPCRoute", "g", {"parentRefs": [{"kind": "Service", "group": "", "name": "echo"}], "rules": [
        {"matches": [{"method": {"service": "echo.Echo", "method": "Say"}}, {"method": {"service": "echo.Echo"}}],
         "backendRefs": [{"name": "echo-v2", "port": 80}]}]}))
    paths = [r.matches[0].path for r in u.changed[ECHO].routes]
    assert paths == [PathMatch("exact", "/echo.Echo/Say"), PathMatch("string_prefix", "/echo.Echo/")]


# ------------------------------------------------------------------------------------------- refusals

BAD_ROUTES = [
    pytest.param(route("r", to(("missing", 1))), "ResolvedRefs", ("False", "BackendNotFound"),
                 "spec.rules[0].backendRefs[0].name", id="a backend Service that does not exist is refused"),
    pytest.param(route("r", to(("echo-v1", 0), ("echo-v2", 0))), "Accepted", ("False", "UnsupportedValue"),
                 "weights sum to 0", id="weights summing to zero are refused"),
    pytest.param(route("r", to(("echo-v1", 1), matches=[{"path": {"type": "RegularExpression", "value": "/(a"}}])),
                 "Accepted", ("False", "UnsupportedValue"), "does not compile",
                 id="a regex that does not compile is refused"),
    pytest.param(route("r", to(("echo-v1", 1), matches=[{"headers": [
        {"name": "x", "type": "RegularExpression", "value": "(?=a)b"}]}])),
                 "Accepted", ("False", "UnsupportedValue"), "RE2", id="a regex RE2 would refuse is refused"),
    pytest.param(route("r", {"backendRefs": [{"name": "echo-v1", "namespace": "elsewhere", "port": 80}]}),
                 "ResolvedRefs", ("False", "RefNotPermitted"), "ReferenceGrant",
                 id="a backend in another namespace is refused without ReferenceGrant"),
    pytest.param(route("r", to(("echo-v1", 1)), parent="nope"), "Accepted", ("False", "NoMatchingParent"),
                 "does not exist", id="a parent Service that does not exist is refused"),
    pytest.param(route("r", to(("echo-v1", 1), filters=[{"type": "CORS", "cors": {}}])),
                 "Accepted", ("False", "UnsupportedValue"), "not supported",
                 id="a filter the waypoint does not carry out is refused with the reason"),
    pytest.param(route("r", to(("echo-v1", 1), timeouts={"request": "1s", "backendRequest": "2s"})),
                 "Accepted", ("False", "UnsupportedValue"), "timeouts.backendRequest",
                 id="a backend timeout longer than the request timeout is refused"),
    pytest.param(route("r", to(("echo-v1", 1), backendRef=[])), "Accepted", ("False", "UnsupportedValue"),
                 "backendRef", id="an unknown field is refused naming it"),
]


@pytest.mark.parametrize(("bad", "condition", "expected", "mentions"), BAD_ROUTES)
def test_a_bad_route_is_refused_alone_with_an_actionable_status(
    bad: Resource, condition: str, expected: tuple[str, str], mentions: str
) -> None:
    good = route("good", to(("echo-v1", 1), matches=[{"path": {"type": "Exact", "value": "/ok"}}]))
    u = run(good, bad)
    assert [r.origin for r in u.changed[ECHO].routes] == ["HTTPRoute demo/good"]
    status, reason, message = conditions(u, "HTTPRoute", "r")[condition]
    assert (status, reason) == expected
    assert mentions in message
    assert any(p.ref == ResourceRef("HTTPRoute", NS, "r") and mentions in p.message for p in u.problems)


# ------------------------------------------------------------------------------------------- Istio kinds


def test_a_virtual_service_carries_fault_retries_timeout_mirror_and_subsets() -> None:
    u = run(res("VirtualService", "vs", {"hosts": ["echo"], "http": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "echo",
                                                                                               "subset": "v2"}}]},
        {"route": [{"destination": {"host": "echo", "subset": "v1"}, "weight": 90},
                   {"destination": {"host": "echo", "subset": "v2"}, "weight": 10}],
         "fault": {"delay": {"fixedDelay": "5s", "percentage": {"value": 10}},
                   "abort": {"httpStatus": 503, "percentage": {"value": 50}}},
         "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset,503"},
         "timeout": "10s", "mirror": {"host": "other"}, "mirrorPercentage": {"value": 5}},
    ]}))
    first, second = u.changed[ECHO].routes
    assert first.matches == (RouteMatch(headers=(ValueMatch("end-user", "exact", "jason"),)),)
    assert first.backends[0].subset == "v2" and first.backends[0].weight == 100
    assert [(b.subset, b.weight) for b in second.backends] == [("v1", 90), ("v2", 10)]
    assert second.fault == Fault(5.0, 10.0, 503, 50.0)
    assert second.retry == Retry(3, 2.0, ("5xx", "reset", "retriable-status-codes"), (503,), 0.0)
    assert second.timeouts == Timeouts(10.0)
    assert second.mirrors[0].percent == 5.0 and second.mirrors[0].backend.hostname.startswith("other.")
    assert conditions(u, "VirtualService", "vs")["Accepted"][0] == "True"


def test_a_virtual_service_for_a_host_that_is_no_service_is_refused() -> None:
    u = run(res("VirtualService", "vs", {"hosts": ["*.example.com"], "http": [{"route": [
        {"destination": {"host": "echo"}}]}]}))
    assert ECHO not in u.changed
    status, reason, message = conditions(u, "VirtualService", "vs")["Accepted"]
    assert (status, reason) == ("False", "NoMatchingParent") and "spec.hosts[0]" in message


def test_a_destination_rule_resolves_subsets_to_the_pods_with_those_labels() -> None:
    u = run(res("DestinationRule", "dr", {
        "host": "echo.demo.svc.cluster.local",
        "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                          "connectionPool": {"tcp": {"maxConnections": 10}, "http": {"http1MaxPendingRequests": 1}},
                          "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "30s"},
                          "tls": {"mode": "ISTIO_MUTUAL"}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"},
                     "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "X-User"}}}}],
    }))
    policy = u.changed[ECHO].policy
    assert policy is not None
    assert policy.traffic_policy.load_balancer == LoadBalancer("least_request")
    assert policy.traffic_policy.connection_pool == ConnectionPool(10, 1, 0, 0)
    assert policy.traffic_policy.outlier_detection == OutlierDetection(3, 0, 1.0, 30.0, 10)
    assert [(s.name, s.workloads) for s in policy.subsets] == [
        ("v1", ("Kubernetes//Pod/demo/echo-a",)), ("v2", ("Kubernetes//Pod/demo/echo-b",))]
    assert policy.policy_for("v2").load_balancer == LoadBalancer("consistent_hash", hash_header="x-user")
    assert policy.policy_for("v2").connection_pool == ConnectionPool(10, 1, 0, 0)


def test_a_destination_rule_with_a_tls_mode_the_mesh_does_not_do_is_refused() -> None:
    u = run(res("DestinationRule", "dr", {"host": "echo", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}))
    assert ECHO not in u.changed
    status, _, message = conditions(u, "DestinationRule", "dr")["Accepted"]
    assert status == "False" and "spec.trafficPolicy.tls" in message


def test_a_rate_limit_names_its_overrides_by_spiffe_principal() -> None:
    u = run(res("HTTPLocalRateLimitPolicy", "rl", {
        "targetRef": {"kind": "Service", "name": "echo"}, "total": {"requestsPerSecond": 100},
        "identity": {"requestsPerSecond": 10},
        "overrides": [{"requestsPerSecond": 50, "clientRefs": [{"kind": "ServiceAccount", "name": "web"}]}]}))
    limit = u.changed[ECHO].rate_limit
    assert limit is not None and (limit.requests_per_second, limit.identity_rps) == (100, 10)
    assert limit.overrides == (RateLimitOverride(("spiffe://cluster.local/ns/demo/sa/web",), 50),)


# ------------------------------------------------------------------------------------------- incremental


def test_a_route_change_recomputes_only_its_service_and_a_deletion_removes_it() -> None:
    first = run(route("r1", to(("echo-v1", 1))), route("r2", to(("echo-v1", 1)), parent="other"))
    assert set(first.changed) == {ECHO, f"{NS}/other.{NS}.svc.cluster.local"}
    edited = run(route("r1", to(("echo-v1", 50), ("echo-v2", 50))), state=first.state)
    assert set(edited.changed) == {ECHO} and not edited.removed
    written = msgspec.structs.replace(route("r1", to(("echo-v1", 50), ("echo-v2", 50))),
                                      status=edited.statuses[ResourceRef("HTTPRoute", NS, "r1")])
    same = run(written, state=edited.state)
    assert not same.changed and not same.removed and not same.statuses
    gone = run(state=same.state, deleted=(ResourceRef("HTTPRoute", NS, "r1"),))
    assert gone.removed == {ECHO} and not gone.changed


def test_a_pod_relabelled_moves_between_subsets() -> None:
    first = run(res("DestinationRule", "dr", {"host": "echo", "subsets": [{"name": "v2", "labels": {"version": "v2"}}]}))
    moved = run(Resource("Pod", "echo-a", NS, "v1", labels={"app": "echo", "version": "v2"}), state=first.state)
    policy = moved.changed[ECHO].policy
    assert policy is not None
    assert policy.subsets[0].workloads == ("Kubernetes//Pod/demo/echo-a", "Kubernetes//Pod/demo/echo-b")

"""Strict schemas of the traffic kinds: valid Istio / Gateway API YAML is accepted, typos and bad durations
are refused with the field path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.store import InvalidResource, build_resource, resolve_kind
from meshcore.store.traffic_schema import parse_duration


def doc(kind: str, api: str, spec: dict[str, Any], name: str = "r") -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


GW = "gateway.networking.k8s.io/v1"
NET = "networking.istio.io/v1"
RL = "policy.ambientmesh.io/v1alpha1"

VALID = [
    pytest.param(doc("HTTPRoute", GW, {
        "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "headers": [{"name": "x-v", "value": "2"}],
                         "queryParams": [{"name": "q", "value": "1", "type": "RegularExpression"}], "method": "GET"}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}},
                        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 80},
                                                                    "percent": 10}}],
            "backendRefs": [{"name": "echo-v1", "port": 80, "weight": 90}, {"name": "echo-v2", "port": 80, "weight": 10}],
            "timeouts": {"request": "10s", "backendRequest": "500ms"},
            "retry": {"attempts": 3, "codes": [503], "backoff": "25ms"},
        }],
    }), id="an HTTPRoute with matches, filters, weights, timeouts and retry is accepted"),
    pytest.param(doc("GRPCRoute", GW, {
        "parentRefs": [{"kind": "Service", "name": "echo"}],
        "rules": [{"matches": [{"method": {"service": "echo.Echo", "method": "Say"}}],
                   "backendRefs": [{"name": "echo", "port": 9000}]}],
    }), id="a GRPCRoute with a method match is accepted"),
    pytest.param(doc("VirtualService", NET, {
        "hosts": ["echo"],
        "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/"}}],
                  "route": [{"destination": {"host": "echo", "subset": "v2"}, "weight": 100}],
                  "fault": {"delay": {"fixedDelay": "5s", "percentage": {"value": 10}},
                            "abort": {"httpStatus": 503, "percentage": {"value": 50}}},
                  "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset"},
                  "timeout": "10s", "mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 5}}],
    }), id="a VirtualService with fault, retries, timeout and mirror is accepted"),
    pytest.param(doc("DestinationRule", NET, {
        "host": "echo",
        "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}},
                          "connectionPool": {"tcp": {"maxConnections": 10},
                                             "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 5,
                                                      "maxRequestsPerConnection": 2}},
                          "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "3m",
                                               "maxEjectionPercent": 100}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"},
                     "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}],
    }), id="a DestinationRule with subsets, load balancer, pool and outlier detection is accepted"),
    pytest.param(doc("HTTPLocalRateLimitPolicy", RL, {
        "targetRef": {"kind": "Service", "name": "echo"},
        "total": {"requestsPerSecond": 100}, "identity": {"requestsPerSecond": 10},
        "overrides": [{"requestsPerSecond": 50, "clientRefs": [{"kind": "ServiceAccount", "name": "web"}]}],
    }), id="a rate-limit policy shaped like Linkerd's is accepted"),
]


@pytest.mark.parametrize("document", VALID)
def test_valid_traffic_documents_are_accepted(document: dict[str, Any]) -> None:
    r = build_resource(document)
    assert r.kind == document["kind"]
    assert r.spec == document["spec"]


INVALID = [
    pytest.param(doc("HTTPRoute", GW, {"rules": [{"backendRef": [{"name": "x"}]}]}), "backendRef",
                 id="a misspelled backendRefs is refused naming the field"),
    pytest.param(doc("HTTPRoute", GW, {"rules": [{"timeouts": {"request": "10 seconds"}}]}),
                 "$.spec.rules[0].timeouts.request", id="a duration that does not parse is refused with its path"),
    pytest.param(doc("HTTPRoute", GW, {"rules": [{"backendRefs": [{"name": "x", "weight": -1}]}]}),
                 "$.spec.rules[0].backendRefs[0].weight", id="a negative weight is refused"),
    pytest.param(doc("VirtualService", NET, {"hosts": ["a"], "http": [{"mirrorPercentag": {"value": 1}}]}),
                 "mirrorPercentag", id="a misspelled VirtualService field is refused"),
    pytest.param(doc("VirtualService", NET, {"hosts": ["a"], "http": [{"retries": {"perTryTimeout": "x"}}]}),
                 "$.spec.http[0].retries.perTryTimeout", id="a bad perTryTimeout is refused with its path"),
    pytest.param(doc("DestinationRule", NET, {"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}),
                 "$.spec.trafficPolicy.loadBalancer.simple", id="an unknown load balancer is refused"),
    pytest.param(doc("HTTPLocalRateLimitPolicy", RL, {"targetRef": {"kind": "Pod", "name": "a"}}),
                 "$.spec.targetRef.kind", id="a rate limit targeting something else than a Service or Gateway is refused"),
]


@pytest.mark.parametrize(("document", "names"), INVALID)
def test_invalid_traffic_documents_are_refused_naming_the_field(document: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidResource) as e:
        build_resource(document)
    assert names in str(e.value)


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("1.5s", 1.5), ("2m30s", 150.0),
                                               ("1h", 3600.0), ("0s", 0.0)])
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1d", "-1s", "1s "])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("typed", "kind"), [("vs", "VirtualService"), ("dr", "DestinationRule"),
                                             ("grpcroutes", "GRPCRoute"),
                                             ("httplocalratelimitpolicies", "HTTPLocalRateLimitPolicy")])
def test_users_can_name_the_traffic_kinds(typed: str, kind: str) -> None:
    assert resolve_kind(typed) == kind


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["h", "m", "s", "ms"])), min_size=1, max_size=4))
def test_any_sequence_of_duration_parts_parses_to_their_sum(parts: list[tuple[int, str]]) -> None:
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * unit[u] for n, u in parts))


@given(st.text(max_size=20))
def test_any_text_either_parses_or_is_refused_with_a_value_error(text: str) -> None:
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass

"""compile_l7_policy: AuthorizationPolicy with targetRefs -> L7Authorization, refusals and fail-closed repairs."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.registry.errors import Reason, Severity
from istiod_lite.registry.l7policies import L7Compiled, compile_l7_policy
from meshcore.model import L7Action, L7Rule, L7Target
from meshcore.policy import DenyReason, evaluate_l7
from meshcore.store.resource import Resource
from meshcore.testing.l7 import request
from meshcore.testing.resources import authz

WAYPOINT_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
SERVICE_REF = {"group": "", "kind": "Service", "name": "web"}


def compiled(**spec: Any) -> L7Compiled:
    spec.setdefault("targetRefs", [WAYPOINT_REF])
    return compile_l7_policy(authz("p", **spec))


def decide(result: L7Compiled, **req: Any) -> bool:
    assert result.authorization is not None
    return evaluate_l7([result.authorization], request(**req)).allowed


def test_a_policy_without_target_refs_is_not_for_waypoints() -> None:
    assert compile_l7_policy(authz("p", selector={"matchLabels": {"app": "x"}})) == L7Compiled(None, [])


TARGETS = [
    pytest.param(
        [WAYPOINT_REF],
        (L7Target("gateway", "demo/waypoint"),),
        id="a waypoint Gateway is namespace slash name",
    ),
    pytest.param(
        [SERVICE_REF],
        (L7Target("service", "web.demo.svc.cluster.local"),),
        id="a core Service is its hostname",
    ),
    pytest.param(
        [{"kind": "Service", "group": "core", "name": "web"}],
        (L7Target("service", "web.demo.svc.cluster.local"),),
        id="the core group may be spelled core",
    ),
    pytest.param(
        [WAYPOINT_REF, SERVICE_REF, WAYPOINT_REF],
        (L7Target("gateway", "demo/waypoint"), L7Target("service", "web.demo.svc.cluster.local")),
        id="duplicate targets are kept once",
    ),
]


@pytest.mark.parametrize(("refs", "expected"), TARGETS)
def test_targets(refs: list[dict[str, str]], expected: tuple[L7Target, ...]) -> None:
    result = compiled(targetRefs=refs)
    assert result.authorization is not None and result.authorization.targets == expected
    assert result.problems == []


def test_the_singular_target_ref_is_read_too() -> None:
    result = compile_l7_policy(authz("p", targetRef=WAYPOINT_REF))
    assert result.authorization is not None and result.authorization.targets == (
        L7Target("gateway", "demo/waypoint"),
    )


REFUSED_TARGETS = [
    pytest.param(
        {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "istio-waypoint"},
        "GatewayClass",
        id="a GatewayClass target is refused",
    ),
    pytest.param(
        {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "x"},
        "ServiceEntry",
        id="a ServiceEntry target is refused",
    ),
    pytest.param(
        {"group": "", "kind": "Gateway", "name": "w"},
        "'Gateway' of group ''",
        id="a Gateway of the wrong group is refused",
    ),
    pytest.param(
        {**WAYPOINT_REF, "namespace": "other"}, "cross-namespace", id="a cross-namespace target is refused"
    ),
    pytest.param({"kind": "Service"}, "non-empty name", id="a target without a name is refused"),
]


@pytest.mark.parametrize(("ref", "reason"), REFUSED_TARGETS)
def test_refused_targets(ref: dict[str, str], reason: str) -> None:
    alone = compiled(targetRefs=[ref])
    assert alone.authorization is None
    assert reason in alone.problems[0].message and "ignored" in alone.problems[0].message
    assert "not enforced by any waypoint" in alone.problems[-1].message
    with_good = compiled(targetRefs=[ref, SERVICE_REF])
    assert with_good.authorization is not None
    assert with_good.authorization.targets == (L7Target("service", "web.demo.svc.cluster.local"),)
    assert [p.severity for p in with_good.problems] == [Severity.ERROR]


def test_the_demo_policies_allow_get_and_deny_post() -> None:
    allow = compiled(rules=[{"to": [{"operation": {"methods": ["GET"], "paths": ["/"]}}]}])
    deny = compiled(action="DENY", rules=[{"to": [{"operation": {"methods": ["POST"]}}]}])
    assert allow.problems == deny.problems == []
    assert allow.authorization is not None and deny.authorization is not None
    both = [allow.authorization, deny.authorization]
    assert evaluate_l7(both, request("GET", "/")).allowed
    assert evaluate_l7(both, request("POST", "/")).reason is DenyReason.EXPLICITLY_DENIED


FIELDS = [
    pytest.param(
        {"to": [{"operation": {"hosts": ["Web.Demo"]}}]},
        {"authority": "web.demo"},
        True,
        id="hosts compile case-insensitive",
    ),
    pytest.param(
        {"to": [{"operation": {"ports": ["80"]}}]}, {"port": 80}, True, id="port strings compile to numbers"
    ),
    pytest.param(
        {"to": [{"operation": {"paths": ["/api/{*}"]}}]},
        {"path": "/api/v1"},
        True,
        id="a path template compiles",
    ),
    pytest.param(
        {"to": [{"operation": {"notPaths": ["/admin*"]}}]}, {"path": "/admin/x"}, False, id="notPaths compile"
    ),
    pytest.param(
        {"from": [{"source": {"serviceAccounts": ["client"]}}]},
        {"ns": "demo"},
        True,
        id="a bare service account is the policy namespace",
    ),
    pytest.param(
        {"from": [{"source": {"notIpBlocks": ["10.0.0.0/8"]}}]}, {}, False, id="ip blocks compile to CIDRs"
    ),
    pytest.param(
        {"when": [{"key": "request.headers[X-Version]", "values": ["v1"]}]},
        {"headers": {"x-version": ["v1"]}},
        True,
        id="header keys compile lower-case",
    ),
    pytest.param(
        {"when": [{"key": "destination.port", "notValues": ["80"]}]},
        {},
        False,
        id="destination port notValues compile",
    ),
    pytest.param(
        {"when": [{"key": "source.serviceAccount", "values": ["client-ns/client"]}]},
        {},
        True,
        id="source service account compiles",
    ),
]


@pytest.mark.parametrize(("rule", "req", "allowed"), FIELDS)
def test_fields(rule: dict[str, Any], req: dict[str, Any], allowed: bool) -> None:
    result = compiled(rules=[rule])
    assert result.problems == []
    assert decide(result, **req) is allowed


UNSUPPORTED = [
    pytest.param(
        {"from": [{"source": {"requestPrincipals": ["iss/sub"]}}]},
        "requestPrincipals",
        id="requestPrincipals",
    ),
    pytest.param(
        {"from": [{"source": {"notRequestPrincipals": ["*"]}}]},
        "notRequestPrincipals",
        id="notRequestPrincipals",
    ),
    pytest.param(
        {"when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]},
        "request.auth.claims",
        id="JWT claims",
    ),
    pytest.param(
        {"when": [{"key": "request.auth.principal", "values": ["a/b"]}]},
        "request.auth.principal",
        id="the JWT principal",
    ),
    pytest.param(
        {"when": [{"key": "connection.sni", "values": ["a"]}]}, "connection.sni", id="the connection SNI"
    ),
    pytest.param(
        {"when": [{"key": "experimental.envoy.filters.a[b]", "values": ["c"]}]},
        "experimental",
        id="experimental keys",
    ),
    pytest.param({"when": [{"key": "request.headers[Host]", "values": ["a"]}]}, "Host", id="the host header"),
    pytest.param(
        {"from": [{"source": {"namespaces": ["a*b"]}}]}, "inside a namespace", id="a star inside a namespace"
    ),
]


@pytest.mark.parametrize(("rule", "named"), UNSUPPORTED)
def test_unsupported_parts_drop_an_allow_rule(rule: dict[str, Any], named: str) -> None:
    result = compiled(rules=[rule])
    assert result.authorization is not None and result.authorization.rules == ()
    [problem] = result.problems
    assert (problem.severity, problem.reason) == (Severity.WARNING, Reason.UNSUPPORTED_VALUE)
    assert named in problem.message and "spec.rules[0]" in problem.message
    assert not decide(result)


@pytest.mark.parametrize(("rule", "named"), UNSUPPORTED)
def test_unsupported_parts_leave_a_deny_rule_broader(rule: dict[str, Any], named: str) -> None:
    result = compiled(action="DENY", rules=[{**rule, "to": [{"operation": {"methods": ["POST"]}}]}])
    assert named in result.problems[0].message
    assert not decide(result, method="POST")
    assert decide(result, method="GET")


MALFORMED = [
    pytest.param("not a rule", "spec.rules[0]: a rule must be a mapping", id="a rule that is not a mapping"),
    pytest.param({"from": []}, "'from' must not be empty", id="an empty from list"),
    pytest.param({"to": [{"operation": {}}]}, "must not be empty", id="an empty operation"),
    pytest.param(
        {"to": [{"operation": {"verbs": ["GET"]}}]},
        "unknown field(s) 'verbs'",
        id="an unknown operation field",
    ),
    pytest.param(
        {"to": [{"operation": {"ports": ["http"]}}]}, "'http' is not valid", id="a port that is not a number"
    ),
    pytest.param(
        {"to": [{"operation": {"paths": ["/{**}/a/{*}"]}}]},
        "last operator",
        id="a path template with an operator after the any operator",
    ),
    pytest.param(
        {"to": [{"operation": {"paths": ["/a/{id}"]}}]},
        "'{' or '}'",
        id="a brace outside a template operator",
    ),
    pytest.param({"to": [{"operation": {"methods": [""]}}]}, "empty values", id="an empty method"),
    pytest.param({"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}, "10.0.0.300", id="a bad IP block"),
    pytest.param(
        {"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]},
        "namespace/serviceAccount",
        id="a service account with two slashes",
    ),
    pytest.param(
        {"from": [{"source": {"serviceAccounts": ["sa"], "principals": ["x"]}}]},
        "cannot be set together",
        id="service accounts next to principals",
    ),
    pytest.param(
        {"when": [{"key": "source.ip"}]},
        "at least one of values or notValues",
        id="a condition without values",
    ),
    pytest.param(
        {"when": [{"key": "request.headers[]", "values": ["a"]}]},
        "request.headers[<name>]",
        id="a header key without a name",
    ),
    pytest.param(
        {"when": [{"key": "destination.namespace", "values": ["a"]}]},
        "metadata.namespace",
        id="a key Istio replaced",
    ),
    pytest.param(
        {"when": [{"key": "request.colour", "values": ["a"]}]}, "unknown attribute", id="an unknown key"
    ),
]


@pytest.mark.parametrize(("rule", "message"), MALFORMED)
def test_malformed_allow_rules_are_dropped(rule: Any, message: str) -> None:
    result = compiled(rules=[rule, {"to": [{"operation": {"methods": ["GET"]}}]}])
    [problem] = result.problems
    assert (problem.severity, problem.reason) == (Severity.ERROR, Reason.INVALID_VALUE)
    assert message in problem.message and "omitted" in problem.message
    assert result.authorization is not None and len(result.authorization.rules) == 1
    assert decide(result, method="GET") and not decide(result, method="POST")


@pytest.mark.parametrize(("rule", "message"), MALFORMED)
def test_malformed_deny_rules_match_everything(rule: Any, message: str) -> None:
    result = compiled(action="DENY", rules=[rule])
    assert message in result.problems[0].message and "denies every request" in result.problems[0].message
    assert result.authorization is not None and result.authorization.rules == (L7Rule(),)
    assert not decide(result)


def test_custom_is_refused_and_enforced_as_a_deny_of_its_rules() -> None:
    result = compiled(
        action="CUSTOM", provider={"name": "ext"}, rules=[{"to": [{"operation": {"paths": ["/admin*"]}}]}]
    )
    assert result.authorization is not None and result.authorization.action is L7Action.DENY
    assert "CUSTOM" in result.problems[0].message and "'ext'" in result.problems[0].message
    assert not decide(result, path="/admin/x") and decide(result, path="/")


def test_an_unknown_action_denies_everything() -> None:
    result = compiled(action="REJECT", rules=[{"to": [{"operation": {"methods": ["GET"]}}]}])
    assert result.problems[0].severity is Severity.ERROR
    assert not decide(result, method="POST")


def test_a_deny_without_rules_is_reported_and_never_matches() -> None:
    result = compiled(action="DENY")
    assert "never matches" in result.problems[0].message
    assert decide(result)


def test_audit_is_kept() -> None:
    result = compiled(action="AUDIT", rules=[{}])
    assert result.authorization is not None and result.authorization.action is L7Action.AUDIT


DRY_RUN = [
    pytest.param("true", True, [], id="the dry-run annotation true makes a dry run"),
    pytest.param("false", False, [], id="the dry-run annotation false enforces"),
    pytest.param(
        "maybe", False, [Severity.WARNING], id="an unreadable dry-run annotation enforces with a warning"
    ),
]


@pytest.mark.parametrize(("value", "dry_run", "severities"), DRY_RUN)
def test_dry_run(value: str, dry_run: bool, severities: list[Severity]) -> None:
    resource = Resource(
        kind="AuthorizationPolicy",
        name="p",
        namespace="demo",
        annotations={"istio.io/dry-run": value},
        spec={"targetRefs": [WAYPOINT_REF]},
    )
    result = compile_l7_policy(resource)
    assert result.authorization is not None and result.authorization.dry_run is dry_run
    assert [p.severity for p in result.problems] == severities


def test_a_selector_next_to_target_refs_is_ignored_with_an_error() -> None:
    result = compiled(selector={"matchLabels": {"app": "web"}})
    assert result.authorization is not None
    assert "selector" in result.problems[0].message and result.problems[0].severity is Severity.ERROR


def test_the_cluster_domain_is_a_setting() -> None:
    result = compile_l7_policy(authz("p", targetRefs=[SERVICE_REF]), cluster_domain="corp.example")
    assert result.authorization is not None
    assert result.authorization.targets == (L7Target("service", "web.demo.svc.corp.example"),)

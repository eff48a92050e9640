"""Table tests for evaluate_l7 and select_l7_policies, from Istio's documented AuthorizationPolicy
semantics and examples (authorization-policy reference, conditions, the HTTP traffic task)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.model import L7Action, L7Target, PathMatch
from meshcore.model.authorization import Action
from meshcore.model.l7 import L7Operation, L7Rule
from meshcore.policy import (
    Decision,
    DenyReason,
    DryRunHit,
    L7PolicyCache,
    compile_l7_policy,
    evaluate_l7,
    select_l7_policies,
)
from meshcore.policy.errors import InvalidPolicyError
from meshcore.testing.l7 import SERVICE, WAYPOINT, from_, l7_policy, request, rule, to, when

# --- one rule, as the only ALLOW policy: allowed == the rule matches ---------------------------------

RULE_CASES = [
    # to.operation: methods
    pytest.param(rule(to=[to(methods=["GET"])]), request("GET"), True, id="a GET matches methods GET"),
    pytest.param(
        rule(to=[to(methods=["GET"])]), request("POST"), False, id="a POST does not match methods GET"
    ),
    pytest.param(
        rule(to=[to(methods=["GET"])]),
        request("get"),
        False,
        id="methods are case-sensitive as Istio matches them",
    ),
    pytest.param(rule(to=[to(methods=["GET", "HEAD"])]), request("HEAD"), True, id="method values are ORed"),
    pytest.param(rule(to=[to(methods=["*"])]), request("PATCH"), True, id="methods star matches any method"),
    pytest.param(
        rule(to=[to(not_methods=["POST"])]), request("POST"), False, id="notMethods excludes that method"
    ),
    pytest.param(
        rule(to=[to(not_methods=["POST"])]), request("GET"), True, id="notMethods lets other methods in"
    ),
    # paths
    pytest.param(rule(to=[to(paths=["/info"])]), request(path="/info"), True, id="an exact path matches"),
    pytest.param(
        rule(to=[to(paths=["/info"])]),
        request(path="/info/x"),
        False,
        id="an exact path does not match a longer one",
    ),
    pytest.param(
        rule(to=[to(paths=["/info"])]),
        request(path="/info?user=1"),
        True,
        id="paths are matched without the query string",
    ),
    pytest.param(
        rule(to=[to(paths=["/info"])]),
        request(path="/info#frag"),
        True,
        id="paths are matched without the fragment",
    ),
    pytest.param(
        rule(to=[to(paths=["/api/*"])]),
        request(path="/api/v1/users"),
        True,
        id="a path prefix matches below it",
    ),
    pytest.param(
        rule(to=[to(paths=["/api/*"])]), request(path="/apiv1"), False, id="a path prefix is literal"
    ),
    pytest.param(
        rule(to=[to(paths=["*.png"])]), request(path="/img/a.png"), True, id="a path suffix matches"
    ),
    pytest.param(rule(to=[to(paths=["*"])]), request(path="/"), True, id="paths star matches any path"),
    pytest.param(
        rule(to=[to(paths=["*"])]),
        request("CONNECT", path=""),
        False,
        id="paths star needs a path to be present",
    ),
    pytest.param(rule(to=[to(paths=["/Info"])]), request(path="/info"), False, id="paths are case-sensitive"),
    pytest.param(
        rule(to=[to(not_paths=["/admin*"])]),
        request(path="/admin/users"),
        False,
        id="notPaths prefix excludes admin",
    ),
    pytest.param(
        rule(to=[to(not_paths=["/admin*"])]), request(path="/public"), True, id="notPaths lets other paths in"
    ),
    # path templates
    pytest.param(
        rule(to=[to(paths=["/foo/{*}"])]),
        request(path="/foo/bar"),
        True,
        id="a one-segment template matches a segment",
    ),
    pytest.param(
        rule(to=[to(paths=["/foo/{*}"])]),
        request(path="/foo/bar/baz"),
        False,
        id="a one-segment template does not cross a slash",
    ),
    pytest.param(
        rule(to=[to(paths=["/foo/{*}"])]),
        request(path="/foo/"),
        False,
        id="a one-segment template needs a character",
    ),
    pytest.param(
        rule(to=[to(paths=["/foo/{*}/bar/{**}"])]),
        request(path="/foo/buzz/bar/baz"),
        True,
        id="a template with a trailing any-segments operator matches deeper paths",
    ),
    pytest.param(
        rule(to=[to(paths=["/foo/{*}/bar/{**}"])]),
        request(path="/foo/buzz/bar/"),
        True,
        id="the any-segments operator matches nothing at all",
    ),
    pytest.param(
        rule(to=[to(paths=["/foo/{**}/"])]),
        request(path="/foo//"),
        True,
        id="the any-segments operator may be empty",
    ),
    pytest.param(
        rule(to=[to(paths=["/foo/{**}/"])]),
        request(path="/foo/bar"),
        False,
        id="a template ending in a slash needs the trailing slash",
    ),
    pytest.param(
        rule(to=[to(paths=["/foo/{*}"])]),
        request(path="/foo/bar?x=1"),
        True,
        id="templates ignore the query string",
    ),
    # hosts
    pytest.param(
        rule(to=[to(hosts=[SERVICE])]),
        request(authority=SERVICE),
        True,
        id="an exact host matches the authority",
    ),
    pytest.param(
        rule(to=[to(hosts=["Web.Demo.svc.cluster.local"])]),
        request(authority="WEB.demo.SVC.cluster.local"),
        True,
        id="hosts match case-insensitively",
    ),
    pytest.param(
        rule(to=[to(hosts=[SERVICE])]),
        request(authority=SERVICE + ":80"),
        False,
        id="an exact host does not match an authority with a port as Istio documents",
    ),
    pytest.param(
        rule(to=[to(hosts=[SERVICE, SERVICE + ":*"])]),
        request(authority=SERVICE + ":80"),
        True,
        id="the documented host and host-colon-star pair matches with a port",
    ),
    pytest.param(
        rule(to=[to(hosts=["*.example.com"])]),
        request(authority="api.example.com"),
        True,
        id="a host suffix matches",
    ),
    pytest.param(
        rule(to=[to(hosts=["*"])]), request(authority=""), False, id="hosts star needs an authority"
    ),
    pytest.param(
        rule(to=[to(not_hosts=["evil.com"])]),
        request(authority="EVIL.com"),
        False,
        id="notHosts are case-insensitive",
    ),
    # ports
    pytest.param(rule(to=[to(ports=["80"])]), request(port=80), True, id="ports match the destination port"),
    pytest.param(rule(to=[to(ports=["80"])]), request(port=8080), False, id="ports are compared as numbers"),
    pytest.param(
        rule(to=[to(not_ports=["9090"])]), request(port=9090), False, id="notPorts excludes that port"
    ),
    # operation structure
    pytest.param(
        rule(to=[to(methods=["GET"], paths=["/info*"])]),
        request("GET", "/info/a"),
        True,
        id="all fields of one operation must match and do",
    ),
    pytest.param(
        rule(to=[to(methods=["GET"], paths=["/info*"])]),
        request("POST", "/info/a"),
        False,
        id="one failing field fails the operation",
    ),
    pytest.param(
        rule(to=[to(methods=["GET"]), to(paths=["/data"])]),
        request("POST", "/data"),
        True,
        id="any operation in the to list may match",
    ),
    pytest.param(
        rule(to=[to(hosts=["*.example.com"], methods=["GET", "HEAD"], not_paths=["/admin*"])]),
        request("HEAD", "/x", authority="a.example.com"),
        True,
        id="the reference example operation matches a HEAD to a sub-domain",
    ),
    pytest.param(
        rule(to=[to(hosts=["*.example.com"], methods=["GET", "HEAD"], not_paths=["/admin*"])]),
        request("GET", "/admin/x", authority="a.example.com"),
        False,
        id="the reference example operation refuses the admin prefix",
    ),
    # from.source
    pytest.param(
        rule(from_=[from_(principals=["cluster.local/ns/client-ns/sa/client"])]),
        request(),
        True,
        id="a principal matches the peer identity without spiffe scheme",
    ),
    pytest.param(
        rule(from_=[from_(principals=["cluster.local/ns/client-ns/sa/other"])]),
        request(),
        False,
        id="another principal does not match",
    ),
    pytest.param(
        rule(from_=[from_(principals=["*"])]),
        request(mtls=False),
        False,
        id="principals star needs an identity",
    ),
    pytest.param(
        rule(from_=[from_(not_principals=["*"])]),
        request(mtls=False),
        True,
        id="notPrincipals star holds for a request without identity",
    ),
    pytest.param(
        rule(from_=[from_(namespaces=["client-ns"])]),
        request(),
        True,
        id="namespaces match the peer namespace",
    ),
    pytest.param(
        rule(from_=[from_(namespaces=["prod", "test"])]),
        request(ns="dev"),
        False,
        id="namespaces refuse a peer from another namespace",
    ),
    pytest.param(
        rule(from_=[from_(not_namespaces=["client-ns"])]),
        request(),
        False,
        id="notNamespaces refuse that namespace",
    ),
    pytest.param(
        rule(from_=[from_(service_accounts=["client-ns/client"])]),
        request(),
        True,
        id="a namespace-qualified service account matches",
    ),
    pytest.param(
        rule(from_=[from_(service_accounts=["client"])]),
        request(),
        False,
        id="a bare service account means the policy namespace",
    ),
    pytest.param(
        rule(from_=[from_(ip_blocks=["10.0.0.0/24"])]),
        request(source_ip="10.0.0.7"),
        True,
        id="ipBlocks match a CIDR",
    ),
    pytest.param(
        rule(from_=[from_(ip_blocks=["203.0.113.4"])]),
        request(source_ip="203.0.113.5"),
        False,
        id="a single IP block is one address",
    ),
    pytest.param(
        rule(from_=[from_(not_ip_blocks=["203.0.113.4"])]),
        request(source_ip="203.0.113.4"),
        False,
        id="notIpBlocks excludes that address",
    ),
    pytest.param(
        rule(from_=[from_(remote_ip_blocks=["10.0.0.1"])]),
        request(source_ip="10.0.0.1"),
        True,
        id="remote ip is the source ip when no proxy is trusted",
    ),
    pytest.param(
        rule(from_=[from_(remote_ip_blocks=["192.0.2.0/24"])]),
        request(source_ip="10.0.0.1", remote_ip="192.0.2.9"),
        True,
        id="remote ip is what the caller established from trusted proxies",
    ),
    pytest.param(
        rule(from_=[from_(principals=["cluster.local/ns/x/sa/y"]), from_(namespaces=["client-ns"])]),
        request(),
        True,
        id="any source in the from list may match",
    ),
    pytest.param(
        rule(from_=[from_(namespaces=["client-ns"], not_ip_blocks=["10.0.0.1"])]),
        request(source_ip="10.0.0.1"),
        False,
        id="all fields of one source must match",
    ),
    # when
    pytest.param(
        rule(when=[when("request.headers[version]", ["v1", "v2"])]),
        request(headers={"version": ["v2"]}),
        True,
        id="a header condition matches one of its values",
    ),
    pytest.param(
        rule(when=[when("request.headers[Version]", ["v1"])]),
        request(headers={"VERSION": ["v1"]}),
        True,
        id="header names are case-insensitive",
    ),
    pytest.param(
        rule(when=[when("request.headers[version]", ["v1"])]),
        request(headers={"version": ["V1"]}),
        False,
        id="header values are case-sensitive",
    ),
    pytest.param(
        rule(when=[when("request.headers[version]", ["v1"])]),
        request(),
        False,
        id="a header condition fails when the header is absent",
    ),
    pytest.param(
        rule(when=[when("request.headers[x-token]", ["*"])]),
        request(headers={"x-token": [""]}),
        True,
        id="a header star matches a present header even when empty",
    ),
    pytest.param(
        rule(when=[when("request.headers[x-token]", not_values=["*"])]),
        request(),
        True,
        id="a header notValues star holds when the header is absent",
    ),
    pytest.param(
        rule(when=[when("request.headers[user-agent]", ["Mozilla/*"])]),
        request(headers={"user-agent": ["curl/8", "Mozilla/5.0"]}),
        True,
        id="headers match per value so any repeated value may match",
    ),
    pytest.param(
        rule(when=[when("request.headers[x-env]", not_values=["prod"])]),
        request(headers={"x-env": ["dev", "prod"]}),
        False,
        id="a header notValues fails when any repeated value matches",
    ),
    pytest.param(
        rule(when=[when("request.headers[:authority]", ["web*"])]),
        request(authority="web:80"),
        True,
        id="the authority pseudo header reads the request authority",
    ),
    pytest.param(
        rule(when=[when("request.headers[host]", ["*"])]),
        request(headers={"Host": ["web"]}),
        False,
        id="a host header is folded into the authority and never matched as a header",
    ),
    pytest.param(
        rule(when=[when("source.ip", ["10.0.0.0/8"])]),
        request(source_ip="10.1.2.3"),
        True,
        id="source ip condition",
    ),
    pytest.param(
        rule(when=[when("destination.ip", not_values=["10.96.0.10"])]),
        request(destination_ip="10.96.0.10"),
        False,
        id="destination ip notValues excludes that address",
    ),
    pytest.param(
        rule(when=[when("destination.port", ["80", "443"])]),
        request(port=443),
        True,
        id="destination port condition",
    ),
    pytest.param(
        rule(when=[when("source.namespace", ["client-*"])]),
        request(),
        True,
        id="source namespace prefix condition",
    ),
    pytest.param(
        rule(when=[when("source.principal", ["*/sa/client"])]),
        request(),
        True,
        id="source principal suffix condition",
    ),
    pytest.param(
        rule(when=[when("source.serviceAccount", ["client-ns/client"])]),
        request(),
        True,
        id="source service account condition",
    ),
    pytest.param(
        rule(when=[when("source.ip", ["10.0.0.0/8"], ["10.0.0.1"])]),
        request(source_ip="10.0.0.1"),
        False,
        id="values and notValues of one condition both apply",
    ),
    pytest.param(
        rule(when=[when("destination.port", ["80"]), when("request.headers[x-a]", ["1"])]),
        request(port=80),
        False,
        id="every condition must hold",
    ),
    # rule structure
    pytest.param(rule(), request(), True, id="an empty rule matches every request"),
    pytest.param(
        rule(
            from_=[from_(namespaces=["client-ns"])],
            to=[to(methods=["GET"])],
            when=[when("destination.port", ["80"])],
        ),
        request("GET"),
        True,
        id="from to and when all matching make the rule match",
    ),
    pytest.param(
        rule(from_=[from_(namespaces=["client-ns"])], to=[to(methods=["GET"])]),
        request("GET", ns="other"),
        False,
        id="a matching to does not help when from fails",
    ),
]


@pytest.mark.parametrize(("rule_", "facts", "matches"), RULE_CASES)
def test_one_allow_rule(rule_: L7Rule, facts, matches: bool) -> None:
    decision = evaluate_l7([l7_policy("p", rule_)], facts)
    assert decision.allowed is matches
    if matches:
        assert decision == Decision.allow(policy="demo/p")
    else:
        assert decision.reason is DenyReason.NOT_ALLOWED


# --- actions, order, dry run, audit ---------------------------------------------------------------------

GET_ONLY = rule(to=[to(methods=["GET"])])
POST_ONLY = rule(to=[to(methods=["POST"])])

ORDER_CASES = [
    pytest.param([], request(), Decision.allow(), id="no policies allow everything"),
    pytest.param(
        [l7_policy("allow-nothing")],
        request(),
        Decision.deny(DenyReason.NOT_ALLOWED),
        id="an ALLOW without rules allows nothing",
    ),
    pytest.param(
        [l7_policy("deny-none", action=L7Action.DENY)],
        request(),
        Decision.allow(),
        id="a DENY without rules never matches",
    ),
    pytest.param(
        [l7_policy("deny-all", rule(), action=L7Action.DENY), l7_policy("allow-all", rule())],
        request(),
        Decision.deny(DenyReason.EXPLICITLY_DENIED, "demo/deny-all"),
        id="a matching DENY wins over a matching ALLOW",
    ),
    pytest.param(
        [l7_policy("allow-get", GET_ONLY), l7_policy("deny-post", POST_ONLY, action=L7Action.DENY)],
        request("GET"),
        Decision.allow("demo/allow-get"),
        id="the demo policy allows GET",
    ),
    pytest.param(
        [l7_policy("allow-get", GET_ONLY), l7_policy("deny-post", POST_ONLY, action=L7Action.DENY)],
        request("POST"),
        Decision.deny(DenyReason.EXPLICITLY_DENIED, "demo/deny-post"),
        id="the demo policy denies POST naming the DENY",
    ),
    pytest.param(
        [l7_policy("allow-get", GET_ONLY)],
        request("DELETE"),
        Decision.deny(DenyReason.NOT_ALLOWED),
        id="a request no ALLOW matches is denied once ALLOW policies exist",
    ),
    pytest.param(
        [l7_policy("a", POST_ONLY), l7_policy("b", GET_ONLY)],
        request("GET"),
        Decision.allow("demo/b"),
        id="the first matching ALLOW is named",
    ),
    pytest.param(
        [l7_policy("d1", GET_ONLY, action=L7Action.DENY), l7_policy("d2", rule(), action=L7Action.DENY)],
        request("GET"),
        Decision.deny(DenyReason.EXPLICITLY_DENIED, "demo/d1"),
        id="the first matching DENY is named",
    ),
    pytest.param(
        [l7_policy("dry", rule(), action=L7Action.DENY, dry_run=True)],
        request(),
        Decision.allow(dry_run_hits=(DryRunHit("demo/dry", Action.DENY),)),
        id="a dry-run DENY is recorded and not enforced",
    ),
    pytest.param(
        [l7_policy("dry", POST_ONLY, dry_run=True)],
        request("GET"),
        Decision.allow(),
        id="a dry-run ALLOW does not make ALLOW policies exist",
    ),
    pytest.param(
        [l7_policy("audit", GET_ONLY, action=L7Action.AUDIT)],
        request("GET"),
        Decision.allow(audited_by=("demo/audit",)),
        id="a matching AUDIT is reported and allows",
    ),
    pytest.param(
        [l7_policy("audit", rule(), action=L7Action.AUDIT), l7_policy("allow-post", POST_ONLY)],
        request("GET"),
        Decision.deny(DenyReason.NOT_ALLOWED, audited_by=("demo/audit",)),
        id="AUDIT never changes the outcome of a denial",
    ),
    pytest.param(
        [l7_policy("audit", POST_ONLY, action=L7Action.AUDIT)],
        request("GET"),
        Decision.allow(),
        id="an AUDIT that does not match is not reported",
    ),
]


@pytest.mark.parametrize(("policies", "facts", "expected"), ORDER_CASES)
def test_action_order(policies, facts, expected: Decision) -> None:
    assert evaluate_l7(policies, facts, cache=L7PolicyCache()) == expected


# --- compile errors fail closed -----------------------------------------------------------------------

BAD_TEMPLATE = L7Rule(operations=(L7Operation(paths=(PathMatch("template", "/a/{**}/{*}"),)),))


def test_compile_names_the_bad_field() -> None:
    with pytest.raises(InvalidPolicyError, match=r"rules\[0\]\.operations\[0\]\.paths\[0\]"):
        compile_l7_policy(l7_policy("bad", BAD_TEMPLATE))


def test_an_uncompilable_allow_never_matches() -> None:
    assert (
        evaluate_l7([l7_policy("bad", BAD_TEMPLATE)], request(path="/a/b")).reason is DenyReason.NOT_ALLOWED
    )


def test_an_uncompilable_deny_matches_everything() -> None:
    decision = evaluate_l7([l7_policy("bad", BAD_TEMPLATE, action=L7Action.DENY)], request(path="/other"))
    assert decision == Decision.deny(DenyReason.EXPLICITLY_DENIED, "demo/bad")


def test_the_cache_compiles_once_per_policy_object() -> None:
    cache = L7PolicyCache(maxsize=2)
    p = l7_policy("p", GET_ONLY)
    evaluate_l7([p], request(), cache=cache)
    evaluate_l7([p], request("POST"), cache=cache)
    assert len(cache) == 1
    for i in range(3):
        evaluate_l7([l7_policy(f"q{i}", GET_ONLY)], request(), cache=cache)
    assert len(cache) == 2


# --- select_l7_policies -------------------------------------------------------------------------------

ON_WAYPOINT = l7_policy("on-waypoint")
ON_WEB = l7_policy("on-web", targets=[L7Target("service", SERVICE)])
ON_OTHER_WAYPOINT = l7_policy("other-waypoint", targets=[L7Target("gateway", "demo/other")])
ON_BOTH = l7_policy(
    "both", targets=[L7Target("service", "api.demo.svc.cluster.local"), L7Target("gateway", WAYPOINT)]
)
ALL = [ON_WAYPOINT, ON_WEB, ON_OTHER_WAYPOINT, ON_BOTH]

SELECT_CASES = [
    pytest.param(
        WAYPOINT,
        SERVICE,
        [ON_WAYPOINT, ON_WEB, ON_BOTH],
        id="a service request gets waypoint and service policies",
    ),
    pytest.param(
        WAYPOINT,
        "api.demo.svc.cluster.local",
        [ON_WAYPOINT, ON_BOTH],
        id="another service's policy does not apply",
    ),
    pytest.param(
        WAYPOINT, None, [ON_WAYPOINT, ON_BOTH], id="a workload-addressed request gets only waypoint policies"
    ),
    pytest.param(
        "demo/other", SERVICE, [ON_WEB, ON_OTHER_WAYPOINT], id="a Gateway target applies only to its waypoint"
    ),
    pytest.param("prod/waypoint", None, [], id="a waypoint of another namespace gets nothing"),
]


@pytest.mark.parametrize(("waypoint", "service", "expected"), SELECT_CASES)
def test_select(waypoint: str, service: str | None, expected) -> None:
    assert select_l7_policies(ALL, waypoint, service) == tuple(expected)


# --- properties -----------------------------------------------------------------------------------------

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "get"])
PATHS = st.sampled_from(["/", "/a", "/a/b", "/admin", "/admin/x?y=1", "/x.png", ""])
REQUESTS = st.builds(
    lambda m, p, ns, port, mtls: request(m, p, ns=ns, port=port, mtls=mtls),
    METHODS,
    PATHS,
    st.sampled_from(["a", "b", "client-ns"]),
    st.sampled_from([80, 8080, 443]),
    st.booleans(),
)
OPERATIONS = st.builds(
    lambda methods, paths, ports: to(methods=methods, paths=paths, ports=ports),
    st.lists(st.sampled_from(["GET", "POST", "*", "P*"]), max_size=2),
    st.lists(st.sampled_from(["/a", "/a*", "*.png", "*", "/a/{*}", "/admin/{**}"]), max_size=2),
    st.lists(st.sampled_from(["80", "443"]), max_size=1),
)
RULES = st.builds(
    lambda ops, nss: rule(to=ops, from_=[from_(namespaces=nss)] if nss else []),
    st.lists(OPERATIONS, max_size=2),
    st.lists(st.sampled_from(["a", "b*", "*"]), max_size=2),
)
POLICIES = st.builds(
    lambda name, rules, action, dry: l7_policy(name, *rules, action=action, dry_run=dry),
    st.sampled_from(["p1", "p2", "p3"]),
    st.lists(RULES, max_size=2),
    st.sampled_from(list(L7Action)),
    st.booleans(),
)


@given(st.lists(POLICIES, max_size=4), REQUESTS)
def test_a_matching_deny_always_denies(policies, facts) -> None:
    deny = l7_policy("deny-all", rule(), action=L7Action.DENY)
    for position in (0, len(policies)):
        mixed = [*policies[:position], deny, *policies[position:]]
        assert not evaluate_l7(mixed, facts).allowed


@given(REQUESTS)
def test_no_policies_allow(facts) -> None:
    assert evaluate_l7([], facts) == Decision.allow()


@given(st.lists(POLICIES, max_size=4), REQUESTS)
def test_audit_and_dry_run_policies_never_change_the_outcome(policies, facts) -> None:
    enforced = [p for p in policies if not p.dry_run and p.action != L7Action.AUDIT]
    assert evaluate_l7(policies, facts).allowed == evaluate_l7(enforced, facts).allowed


@given(st.lists(POLICIES, max_size=4), REQUESTS)
def test_the_outcome_does_not_depend_on_policy_order(policies, facts) -> None:
    assert evaluate_l7(policies, facts).allowed == evaluate_l7(list(reversed(policies)), facts).allowed

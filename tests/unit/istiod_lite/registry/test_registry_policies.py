"""AuthorizationPolicy -> Authorization: scope, action, every field mapping, L7 and malformed input."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.registry.errors import Problem, Reason, Severity
from istiod_lite.registry.policies import (
    convert_policy,
    parse_ip_net,
    parse_port,
    service_account_match,
    string_match,
)
from meshcore.identity import SpiffeId
from meshcore.model import (
    Action,
    Authorization,
    Clause,
    IpNet,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
)
from meshcore.policy import ConnFacts, evaluate_l4
from meshcore.store.resource import Resource

ROOT = "istio-system"


def resource(
    spec: dict[str, Any], *, namespace: str = "demo", annotations: dict[str, str] | None = None
) -> Resource:
    return Resource(
        kind="AuthorizationPolicy", name="pol", namespace=namespace, annotations=annotations or {}, spec=spec
    )


def convert(spec: dict[str, Any], **kw: Any) -> tuple[Authorization | None, list[Problem]]:
    info, problems = convert_policy(resource(spec, **kw), root_namespace=ROOT)
    return (info.authorization if info else None), problems


def rules_of(spec: dict[str, Any]) -> tuple[Rule, ...]:
    auth, _ = convert(spec)
    assert auth is not None
    return auth.rules


def one_clause(*matches: Match) -> Clause:
    return Clause(tuple(matches))


# --- value syntax -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", StringMatch("presence")),
        ("*.local/ns/demo/sa/web", StringMatch("suffix", ".local/ns/demo/sa/web")),
        ("cluster.local/ns/demo/*", StringMatch("prefix", "cluster.local/ns/demo/")),
        ("cluster.local/ns/demo/sa/web", StringMatch("exact", "cluster.local/ns/demo/sa/web")),
        ("**", StringMatch("suffix", "*")),
    ],
    ids=[
        "a lone star means any value is present",
        "a leading star is a suffix match",
        "a trailing star is a prefix match",
        "no star is an exact match",
        "a double star is a suffix match on a star, as in Istio",
    ],
)
def test_string_syntax(text: str, expected: StringMatch) -> None:
    assert string_match(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", IpNet("10.0.0.0", 8)),
        ("10.1.2.3/8", IpNet("10.0.0.0", 8)),
        ("192.168.1.7", IpNet("192.168.1.7", 32)),
        ("2001:DB8::/32", IpNet("2001:db8::", 32)),
        ("fd00::1", IpNet("fd00::1", 128)),
    ],
    ids=[
        "a CIDR is kept",
        "host bits of a CIDR are cleared",
        "a single IPv4 address is a /32",
        "an IPv6 CIDR is canonicalised",
        "a single IPv6 address is a /128",
    ],
)
def test_ip_blocks(text: str, expected: IpNet) -> None:
    assert parse_ip_net(text) == expected


@pytest.mark.parametrize(
    "bad", ["10.0.0.0/33", "10.0.0", "host.example"], ids=["prefix too long", "short", "a name"]
)
def test_bad_ip_blocks_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_ip_net(bad)


@pytest.mark.parametrize(
    ("value", "expected"), [("8080", 8080), (443, 443), ("0", 0)], ids=["a string", "a number", "port zero"]
)
def test_ports(value: object, expected: int) -> None:
    assert parse_port(value) == expected


@pytest.mark.parametrize(
    "bad", ["http", "65536", "-1", True, "８０"], ids=["name", "too big", "negative", "bool", "non-ascii"]
)
def test_bad_ports_raise(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_port(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("other/api", ServiceAccountMatch("other", "api")), ("api", ServiceAccountMatch("demo", "api"))],
    ids=["ns/sa names both", "a bare service account is in the policy's namespace"],
)
def test_service_accounts(text: str, expected: ServiceAccountMatch) -> None:
    assert service_account_match(text, "demo") == expected


# --- attachment and action --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "namespace", "scope", "selector"),
    [
        ({}, "demo", Scope.NAMESPACE, None),
        ({}, ROOT, Scope.GLOBAL, None),
        ({"selector": {"matchLabels": {"app": "web"}}}, "demo", Scope.WORKLOAD_SELECTOR, {"app": "web"}),
        ({"selector": {"matchLabels": {"app": "web"}}}, ROOT, Scope.WORKLOAD_SELECTOR, {"app": "web"}),
        ({"selector": {}}, "demo", Scope.WORKLOAD_SELECTOR, {}),
    ],
    ids=[
        "no selector applies to the namespace",
        "no selector in the root namespace applies mesh-wide",
        "a selector applies to the pods it selects",
        "a selector in the root namespace stays a selector policy",
        "an empty selector selects every pod",
    ],
)
def test_scope(spec: dict[str, Any], namespace: str, scope: Scope, selector: dict[str, str] | None) -> None:
    info, problems = convert_policy(resource(spec, namespace=namespace), root_namespace=ROOT)
    assert problems == []
    assert info is not None
    assert info.authorization.scope == scope
    assert info.authorization.key == f"{namespace}/pol"
    assert info.selector == selector


@pytest.mark.parametrize(
    ("action", "expected"),
    [(None, Action.ALLOW), ("ALLOW", Action.ALLOW), ("DENY", Action.DENY)],
    ids=["no action means ALLOW", "ALLOW", "DENY"],
)
def test_actions(action: str | None, expected: Action) -> None:
    auth, _ = convert({"action": action} if action else {})
    assert auth is not None
    assert auth.action == expected


@pytest.mark.parametrize(
    ("spec", "severity", "reason", "message"),
    [
        (
            {"action": "CUSTOM", "provider": {"name": "ext"}},
            Severity.WARNING,
            Reason.UNSUPPORTED_VALUE,
            "ztunnel does not support the CUSTOM action",
        ),
        (
            {"action": "AUDIT"},
            Severity.WARNING,
            Reason.UNSUPPORTED_VALUE,
            "ztunnel does not support the AUDIT action",
        ),
        (
            {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}]},
            Severity.INFO,
            Reason.NOT_FOR_ZTUNNEL,
            "policy binds to Service/web through targetRefs: a waypoint enforces it, not ztunnel",
        ),
        (
            {"targetRef": {"kind": "Gateway", "name": "waypoint"}, "action": "DENY"},
            Severity.INFO,
            Reason.NOT_FOR_ZTUNNEL,
            "policy binds to Gateway/waypoint through targetRefs: a waypoint enforces it, not ztunnel",
        ),
        (
            {"action": "REJECT"},
            Severity.ERROR,
            Reason.INVALID_VALUE,
            "spec.action 'REJECT' is not one of ALLOW, DENY, AUDIT, CUSTOM; the policy is ignored",
        ),
    ],
    ids=[
        "a CUSTOM policy is not sent to ztunnel",
        "an AUDIT policy is not sent to ztunnel",
        "a policy bound to a service is for its waypoint",
        "a policy bound to a waypoint gateway is for that waypoint",
        "an unknown action is reported and ignored",
    ],
)
def test_policies_not_for_ztunnel(
    spec: dict[str, Any], severity: Severity, reason: Reason, message: str
) -> None:
    auth, problems = convert(spec)
    assert auth is None
    assert [(p.severity, p.reason, p.message) for p in problems] == [(severity, reason, message)]


@pytest.mark.parametrize(
    ("annotation", "dry_run", "problem_count"),
    [("true", True, 0), ("False", False, 0), ("maybe", False, 1)],
    ids=[
        "dry-run true is honoured",
        "dry-run false is enforced",
        "an unreadable dry-run value is enforced and reported",
    ],
)
def test_dry_run(annotation: str, dry_run: bool, problem_count: int) -> None:
    auth, problems = convert({"action": "DENY"}, annotations={"istio.io/dry-run": annotation})
    assert auth is not None
    assert auth.dry_run is dry_run
    assert len(problems) == problem_count


# --- rule mapping -----------------------------------------------------------------------------------------

PRINCIPAL = "cluster.local/ns/demo/sa/client"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([], ()),
        ([{}], (Rule(()),)),
        (
            [{"from": [{"source": {"principals": [PRINCIPAL], "notPrincipals": ["*/sa/bad"]}}]}],
            (
                Rule(
                    (
                        one_clause(
                            Match(
                                principals=(StringMatch("exact", PRINCIPAL),),
                                not_principals=(StringMatch("suffix", "/sa/bad"),),
                            )
                        ),
                    )
                ),
            ),
        ),
        (
            [{"from": [{"source": {"namespaces": ["demo"]}}, {"source": {"notNamespaces": ["kube-*"]}}]}],
            (
                Rule(
                    (
                        one_clause(
                            Match(namespaces=(StringMatch("exact", "demo"),)),
                            Match(not_namespaces=(StringMatch("prefix", "kube-"),)),
                        ),
                    )
                ),
            ),
        ),
        (
            [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.0.0.1"]}}]}],
            (
                Rule(
                    (
                        one_clause(
                            Match(source_ips=(IpNet("10.0.0.0", 8),), not_source_ips=(IpNet("10.0.0.1", 32),))
                        ),
                    )
                ),
            ),
        ),
        (
            [
                {
                    "from": [
                        {
                            "source": {
                                "serviceAccounts": ["client", "other/api"],
                                "notServiceAccounts": ["bad"],
                            }
                        }
                    ]
                }
            ],
            (
                Rule(
                    (
                        one_clause(
                            Match(
                                service_accounts=(
                                    ServiceAccountMatch("demo", "client"),
                                    ServiceAccountMatch("other", "api"),
                                ),
                                not_service_accounts=(ServiceAccountMatch("demo", "bad"),),
                            )
                        ),
                    )
                ),
            ),
        ),
        (
            [{"to": [{"operation": {"ports": ["8080"]}}, {"operation": {"notPorts": ["9090"]}}]}],
            (Rule((one_clause(Match(destination_ports=(8080,)), Match(not_destination_ports=(9090,))),)),),
        ),
        (
            [{"from": [{"source": {"principals": [PRINCIPAL]}}], "to": [{"operation": {"ports": ["8080"]}}]}],
            (
                Rule(
                    (
                        one_clause(Match(destination_ports=(8080,))),
                        one_clause(Match(principals=(StringMatch("exact", PRINCIPAL),))),
                    )
                ),
            ),
        ),
        (
            [
                {
                    "when": [
                        {"key": "source.ip", "values": ["10.1.0.0/16"], "notValues": ["10.1.0.1"]},
                        {"key": "source.namespace", "values": ["demo"]},
                        {"key": "source.principal", "notValues": ["*"]},
                        {"key": "destination.ip", "values": ["10.244.0.0/16"]},
                        {"key": "destination.port", "values": ["8080"], "notValues": ["8081"]},
                    ]
                }
            ],
            (
                Rule(
                    (
                        one_clause(
                            Match(
                                source_ips=(IpNet("10.1.0.0", 16),), not_source_ips=(IpNet("10.1.0.1", 32),)
                            )
                        ),
                        one_clause(Match(namespaces=(StringMatch("exact", "demo"),))),
                        one_clause(Match(not_principals=(StringMatch("presence"),))),
                        one_clause(Match(destination_ips=(IpNet("10.244.0.0", 16),))),
                        one_clause(Match(destination_ports=(8080,), not_destination_ports=(8081,))),
                    )
                ),
            ),
        ),
        (
            [{"from": [{"source": {"namespaces": ["a"]}}]}, {"from": [{"source": {"namespaces": ["b"]}}]}],
            (
                Rule((one_clause(Match(namespaces=(StringMatch("exact", "a"),))),)),
                Rule((one_clause(Match(namespaces=(StringMatch("exact", "b"),))),)),
            ),
        ),
    ],
    ids=[
        "no rules give a policy with no rules",
        "an empty rule has no clauses and so matches everything",
        "principals and notPrincipals use the string syntax",
        "each from entry is one match of the single from clause",
        "ipBlocks become source CIDRs and a single IP a /32",
        "service accounts resolve bare names to the policy namespace",
        "each to entry is one match of the single to clause",
        "to and from become two clauses, to first",
        "each when condition is its own clause, values and notValues",
        "each rule is its own rule",
    ],
)
def test_rule_mapping(rules: list[dict[str, Any]], expected: tuple[Rule, ...]) -> None:
    assert rules_of({"rules": rules}) == expected


def test_spec_without_rules_field_is_an_allow_with_no_rules() -> None:
    auth, problems = convert({})
    assert auth is not None
    assert (auth.action, auth.rules, problems) == (Action.ALLOW, (), [])


# --- HTTP-only attributes (fail closed) --------------------------------------------------------------------

L7_ALLOW_MESSAGE = (
    "ztunnel does not support HTTP attributes (found: {}). In ambient mode you must use a waypoint proxy to "
    "enforce HTTP rules. Within an ALLOW policy, rules matching HTTP attributes are omitted. "
    "This will be more restrictive than requested."
)


@pytest.mark.parametrize(
    ("rule", "found"),
    [
        ({"to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}]}, "methods"),
        ({"to": [{"operation": {"paths": ["/a"], "hosts": ["x"]}}]}, "hosts, paths"),
        (
            {"from": [{"source": {"requestPrincipals": ["*"], "principals": [PRINCIPAL]}}]},
            "requestPrincipals",
        ),
        ({"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}]}, "remoteIpBlocks"),
        ({"when": [{"key": "request.headers[x-user]", "values": ["a"]}]}, "request.headers[x-user]"),
    ],
    ids=[
        "an ALLOW rule with methods is dropped whole",
        "hosts and paths are reported sorted",
        "requestPrincipals drop the rule even with principals",
        "remoteIpBlocks are not L4 for ztunnel",
        "a when key that is not L4 drops the rule",
    ],
)
def test_allow_rules_with_http_attributes_are_dropped(rule: dict[str, Any], found: str) -> None:
    kept = {"from": [{"source": {"namespaces": ["demo"]}}]}
    auth, problems = convert({"rules": [rule, kept]})
    assert auth is not None
    assert auth.rules == (Rule((one_clause(Match(namespaces=(StringMatch("exact", "demo"),))),)),)
    assert [(p.severity, p.reason, p.message) for p in problems] == [
        (Severity.WARNING, Reason.UNSUPPORTED_VALUE, L7_ALLOW_MESSAGE.format(found))
    ]


def test_an_allow_policy_with_only_http_rules_allows_nothing() -> None:
    auth, problems = convert({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
    assert auth is not None
    assert auth.rules == ()
    assert len(problems) == 1


@pytest.mark.parametrize(
    ("rule", "expected", "consequence"),
    [
        (
            {"to": [{"operation": {"methods": ["DELETE"], "ports": ["8080"]}}]},
            Rule((one_clause(Match(destination_ports=(8080,))),)),
            "DENY policy with HTTP attributes is enforced without the HTTP rules. "
            "This will be more restrictive than requested.",
        ),
        (
            {"to": [{"operation": {"methods": ["DELETE"]}}]},
            Rule((one_clause(Match()),)),
            "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel "
            "and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy.",
        ),
        (
            {
                "from": [{"source": {"principals": [PRINCIPAL]}}],
                "when": [{"key": "request.auth.claims[iss]", "values": ["x"]}],
            },
            Rule((one_clause(Match(principals=(StringMatch("exact", PRINCIPAL),))), one_clause(Match()))),
            "After omitting unsupported HTTP attributes",
        ),
    ],
    ids=[
        "a DENY rule keeps its ports without the methods (more restrictive)",
        "a DENY rule with only methods keeps an empty match that never fires (no effect)",
        "a DENY rule with an HTTP when key can never fire",
    ],
)
def test_deny_rules_drop_only_http_parts(rule: dict[str, Any], expected: Rule, consequence: str) -> None:
    auth, problems = convert({"action": "DENY", "rules": [rule]})
    assert auth is not None
    assert auth.rules == (expected,)
    assert len(problems) == 1 and problems[0].reason == Reason.UNSUPPORTED_VALUE
    assert consequence in problems[0].message


# --- malformed input (fail closed) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("from everyone", "a rule must be a mapping"),
        (
            {"from": [{"source": {"principal": [PRINCIPAL]}}]},
            "from[0].source has unknown field(s) 'principal'",
        ),
        (
            {"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]},
            "from[0].source.ipBlocks: '10.0.0.0/33' is not valid",
        ),
        ({"to": [{"operation": {"ports": ["http"]}}]}, "to[0].operation.ports: 'http' is not valid"),
        ({"to": {"operation": {"ports": ["80"]}}}, "'to' must be a list"),
        ({"when": [{"values": ["x"]}]}, "when[0] must be a mapping with a string 'key'"),
        ({"from": [{"source": {"namespaces": "demo"}}]}, "from[0].source.namespaces must be a list"),
    ],
    ids=[
        "a rule that is not a mapping",
        "a misspelt source field",
        "an invalid CIDR",
        "a named port",
        "to that is not a list",
        "a when without a key",
        "a field that is not a list",
    ],
)
def test_unreadable_rules_fail_closed(rule: Any, fragment: str) -> None:
    allow, allow_problems = convert({"rules": [rule]})
    deny, deny_problems = convert({"action": "DENY", "rules": [rule]})
    assert allow is not None and deny is not None
    assert allow.rules == ()  # dropped: allows nothing
    assert deny.rules == (Rule(()),)  # match-all: denies everything selected
    for problems in (allow_problems, deny_problems):
        assert [(p.severity, p.reason) for p in problems] == [(Severity.ERROR, Reason.INVALID_VALUE)]
        assert fragment in problems[0].message and "spec.rules[0]" in problems[0].message


def test_rules_that_are_not_a_list_fail_closed() -> None:
    allow, _ = convert({"rules": {"from": []}})
    deny, problems = convert({"action": "DENY", "rules": {"from": []}})
    assert allow is not None and deny is not None
    assert (allow.rules, deny.rules) == ((), (Rule(()),))
    assert "spec.rules: must be a list of rules" in problems[0].message


def test_an_unreadable_selector_widens_the_policy_to_its_namespace() -> None:
    info, problems = convert_policy(resource({"selector": {"matchLabels": ["app=web"]}}), root_namespace=ROOT)
    assert info is not None
    assert (info.authorization.scope, info.selector) == (Scope.NAMESPACE, None)
    assert problems[0].severity == Severity.ERROR
    assert "matchLabels" in problems[0].message and "whole namespace" in problems[0].message


# --- end to end with the L4 evaluator ------------------------------------------------------------------------

CLIENT = SpiffeId("cluster.local", "demo", "client")
OTHER = SpiffeId("cluster.local", "other", "intruder")


def facts(identity: SpiffeId | None, port: int = 8080, src: str = "10.244.1.10") -> ConnFacts:
    return ConnFacts(src_ip=src, src_port=40000, dst_ip="10.244.2.10", dst_port=port, src_identity=identity)


@pytest.mark.parametrize(
    ("spec", "conn", "allowed"),
    [
        ({}, facts(CLIENT), False),
        ({"rules": [{}]}, facts(OTHER), True),
        ({"rules": [{"from": [{"source": {"principals": [PRINCIPAL]}}]}]}, facts(CLIENT), True),
        ({"rules": [{"from": [{"source": {"principals": [PRINCIPAL]}}]}]}, facts(OTHER), False),
        ({"rules": [{"from": [{"source": {"principals": [PRINCIPAL]}}]}]}, facts(None), False),
        ({"rules": [{"from": [{"source": {"serviceAccounts": ["client"]}}]}]}, facts(CLIENT), True),
        ({"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}, facts(OTHER, port=9090), False),
        ({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}, facts(CLIENT), False),
        ({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}, facts(CLIENT), True),
        (
            {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]}]},
            facts(CLIENT),
            False,
        ),
        (
            {"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["demo"]}}]}]},
            facts(OTHER),
            False,
        ),
        ({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["bad"]}}]}]}, facts(CLIENT), False),
        ({"rules": [{"from": [{"source": {"ipBlocks": ["10.244.1.0/24"]}}]}]}, facts(None), True),
    ],
    ids=[
        "an ALLOW policy with no rules denies everyone",
        "an ALLOW policy with an empty rule allows everyone",
        "the named principal is allowed",
        "another principal is denied",
        "a plaintext peer never matches a principal",
        "a bare service account names the policy namespace",
        "a port not listed is denied",
        "an ALLOW on HTTP methods allows nothing at ztunnel",
        "a DENY on HTTP methods alone has no effect at ztunnel",
        "a DENY on methods and a port denies the whole port",
        "a DENY on other namespaces denies a foreign caller",
        "an unreadable DENY rule denies everyone",
        "an ipBlock admits a plaintext peer by source address",
    ],
)
def test_converted_policies_enforce_as_istio_does(
    spec: dict[str, Any], conn: ConnFacts, allowed: bool
) -> None:
    auth, _ = convert(spec)
    assert auth is not None
    assert evaluate_l4([auth], conn).allowed is allowed

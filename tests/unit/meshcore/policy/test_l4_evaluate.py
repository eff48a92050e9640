"""Table tests for evaluate_l4: Istio's matching semantics field by field, policy structure, and order."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.identity import SpiffeId
from meshcore.model import Action, Authorization, Clause, IpNet, Match, Rule, ServiceAccountMatch, StringMatch
from meshcore.policy import (
    ConnFacts,
    Decision,
    DenyReason,
    DryRunHit,
    InvalidPolicyError,
    PolicyCache,
    compile_policy,
    evaluate_l4,
)
from meshcore.testing.builders import policy


def tls(
    ns: str = "default",
    sa: str = "client",
    *,
    td: str = "cluster.local",
    src: str = "10.0.0.1",
    dst: str = "10.0.1.1",
    port: int = 8080,
) -> ConnFacts:
    return ConnFacts(src, 40000, dst, port, SpiffeId(td, ns, sa))


def plaintext(*, src: str = "10.0.0.1", dst: str = "10.0.1.1", port: int = 8080) -> ConnFacts:
    return ConnFacts(src, 40000, dst, port, None)


def exact(v: str) -> StringMatch:
    return StringMatch("exact", v)


PRESENCE = StringMatch("presence")


def net(cidr: str) -> IpNet:
    address, length = cidr.split("/")
    return IpNet(address, int(length))


# --- one Match, evaluated as the only ALLOW policy: allowed == the Match holds -----------------------

MATCH_CASES = [
    pytest.param(
        Match(principals=(exact("cluster.local/ns/default/sa/client"),)),
        tls(),
        True,
        id="an exact principal matches the peer identity without spiffe://",
    ),
    pytest.param(
        Match(principals=(exact("spiffe://cluster.local/ns/default/sa/client"),)),
        tls(),
        False,
        id="a principal written with spiffe:// never matches",
    ),
    pytest.param(
        Match(principals=(StringMatch("prefix", "cluster.local/ns/default/"),)),
        tls(),
        True,
        id="a principal prefix matches",
    ),
    pytest.param(
        Match(principals=(StringMatch("suffix", "/sa/client"),)),
        tls(sa="other"),
        False,
        id="a principal suffix must match the service account",
    ),
    pytest.param(Match(principals=(PRESENCE,)), tls(), True, id="a presence principal matches any mTLS peer"),
    pytest.param(
        Match(principals=(PRESENCE,)),
        plaintext(),
        False,
        id="a presence principal never matches a plaintext peer",
    ),
    pytest.param(
        Match(principals=(exact("cluster.local/ns/default/sa/client"),)),
        tls(td="other.td"),
        False,
        id="principals compare the trust domain too",
    ),
    pytest.param(
        Match(
            principals=(exact("cluster.local/ns/default/sa/x"), exact("cluster.local/ns/default/sa/client"))
        ),
        tls(),
        True,
        id="principal values are ORed",
    ),
    pytest.param(
        Match(not_principals=(exact("cluster.local/ns/default/sa/client"),)),
        tls(),
        False,
        id="not_principals refuses the named peer",
    ),
    pytest.param(
        Match(not_principals=(exact("cluster.local/ns/default/sa/client"),)),
        tls(sa="other"),
        True,
        id="not_principals lets other peers through",
    ),
    pytest.param(
        Match(not_principals=(PRESENCE,)),
        plaintext(),
        True,
        id="not_principals presence holds for a plaintext peer",
    ),
    pytest.param(
        Match(not_principals=(PRESENCE,)), tls(), False, id="not_principals presence fails for an mTLS peer"
    ),
    pytest.param(
        Match(namespaces=(exact("default"),)),
        tls(),
        True,
        id="namespaces match the namespace of the peer SPIFFE id",
    ),
    pytest.param(
        Match(namespaces=(exact("default"),)),
        tls(ns="prod"),
        False,
        id="namespaces refuse a peer from another namespace",
    ),
    pytest.param(
        Match(namespaces=(PRESENCE,)), plaintext(), False, id="namespaces never match a plaintext peer"
    ),
    pytest.param(
        Match(namespaces=(StringMatch("prefix", ""),)),
        plaintext(),
        False,
        id="even an empty namespace prefix never matches a plaintext peer",
    ),
    pytest.param(
        Match(not_namespaces=(exact("default"),)),
        tls(),
        False,
        id="not_namespaces refuse a peer from that namespace",
    ),
    pytest.param(
        Match(not_namespaces=(exact("default"),)),
        plaintext(),
        True,
        id="not_namespaces hold for a plaintext peer",
    ),
    pytest.param(
        Match(service_accounts=(ServiceAccountMatch("default", "client"),)),
        tls(td="any.td"),
        True,
        id="service accounts match namespace and name whatever the trust domain",
    ),
    pytest.param(
        Match(service_accounts=(ServiceAccountMatch("prod", "client"),)),
        tls(),
        False,
        id="service accounts need the namespace to match",
    ),
    pytest.param(
        Match(service_accounts=(ServiceAccountMatch("default", "client"),)),
        plaintext(),
        False,
        id="service accounts never match a plaintext peer",
    ),
    pytest.param(
        Match(not_service_accounts=(ServiceAccountMatch("default", "client"),)),
        tls(),
        False,
        id="not_service_accounts refuse that service account",
    ),
    pytest.param(
        Match(not_service_accounts=(ServiceAccountMatch("default", "client"),)),
        plaintext(),
        True,
        id="not_service_accounts hold for a plaintext peer",
    ),
    pytest.param(
        Match(source_ips=(net("10.0.0.1/32"),)), tls(), True, id="a /32 source ip matches that address"
    ),
    pytest.param(
        Match(source_ips=(net("10.0.0.0/24"),)),
        tls(src="10.0.0.200"),
        True,
        id="a source CIDR contains the addresses in its range",
    ),
    pytest.param(
        Match(source_ips=(net("10.0.0.7/24"),)),
        tls(src="10.0.0.9"),
        True,
        id="host bits in a source CIDR are ignored",
    ),
    pytest.param(
        Match(source_ips=(net("10.0.0.0/24"),)),
        tls(src="10.0.1.1"),
        False,
        id="a source outside the CIDR does not match",
    ),
    pytest.param(
        Match(source_ips=(net("10.0.0.0/24"),)), plaintext(), True, id="source ips match plaintext peers too"
    ),
    pytest.param(
        Match(source_ips=(net("0.0.0.0/0"),)),
        tls(src="2001:db8::1"),
        False,
        id="an IPv4 /0 does not contain an IPv6 source",
    ),
    pytest.param(
        Match(source_ips=(net("2001:db8::/32"),)),
        tls(src="2001:db8:ff::5"),
        True,
        id="an IPv6 source CIDR contains addresses in its range",
    ),
    pytest.param(
        Match(source_ips=(net("2001:db8::/32"),)),
        tls(src="2001:db9::5"),
        False,
        id="an IPv6 source outside the CIDR does not match",
    ),
    pytest.param(
        Match(source_ips=(net("::/0"),)),
        tls(src="10.0.0.1"),
        False,
        id="an IPv6 /0 does not contain an IPv4 source",
    ),
    pytest.param(
        Match(source_ips=(net("10.0.0.0/8"),)),
        tls(src="::ffff:10.1.2.3"),
        True,
        id="an IPv4-mapped IPv6 source is matched as IPv4",
    ),
    pytest.param(
        Match(not_source_ips=(net("10.0.0.0/24"),)),
        tls(),
        False,
        id="not_source_ips refuse sources in the CIDR",
    ),
    pytest.param(
        Match(not_source_ips=(net("10.0.0.0/24"),)),
        tls(src="192.168.0.1"),
        True,
        id="not_source_ips let other sources through",
    ),
    pytest.param(
        Match(destination_ips=(net("10.0.1.1/32"),)),
        tls(),
        True,
        id="destination ips match the upstream pod address",
    ),
    pytest.param(
        Match(destination_ips=(net("10.0.1.1/32"),)),
        tls(dst="10.0.1.2"),
        False,
        id="destination ips refuse another pod address",
    ),
    pytest.param(
        Match(destination_ips=(net("fd00::/8"),)),
        tls(dst="fd00::1:2"),
        True,
        id="IPv6 destination CIDRs match",
    ),
    pytest.param(
        Match(not_destination_ips=(net("10.0.1.0/24"),)),
        tls(),
        False,
        id="not_destination_ips refuse destinations in the CIDR",
    ),
    pytest.param(
        Match(destination_ports=(8080,)), tls(), True, id="destination ports match the upstream port"
    ),
    pytest.param(
        Match(destination_ports=(80, 8080)), tls(port=80), True, id="destination port values are ORed"
    ),
    pytest.param(
        Match(destination_ports=(80,)), tls(), False, id="a different destination port does not match"
    ),
    pytest.param(
        Match(not_destination_ports=(8080,)), tls(), False, id="not_destination_ports refuse that port"
    ),
    pytest.param(
        Match(not_destination_ports=(8080,)),
        tls(port=9090),
        True,
        id="not_destination_ports let other ports through",
    ),
    pytest.param(
        Match(namespaces=(exact("default"),), destination_ports=(80,)),
        tls(),
        False,
        id="fields are ANDed: the right namespace on the wrong port fails",
    ),
    pytest.param(
        Match(namespaces=(exact("default"),), destination_ports=(8080,)),
        tls(),
        True,
        id="fields are ANDed: the right namespace on the right port holds",
    ),
    pytest.param(
        Match(namespaces=(exact("default"),), not_principals=(exact("cluster.local/ns/default/sa/client"),)),
        tls(),
        False,
        id="a not_ field fails the match even when the positive field holds",
    ),
    pytest.param(
        Match(source_ips=(net("10.0.0.0/8"),), not_source_ips=(net("10.0.0.0/24"),)),
        tls(),
        False,
        id="not_source_ips carve a hole out of source_ips",
    ),
    pytest.param(
        Match(not_principals=(PRESENCE,), destination_ports=(8080,)),
        plaintext(),
        True,
        id="a plaintext peer satisfies not_principals and ports",
    ),
]


@pytest.mark.parametrize(("match", "facts", "holds"), MATCH_CASES)
def test_match_fields(match: Match, facts: ConnFacts, holds: bool) -> None:
    decision = evaluate_l4([policy("allow-it", match)], facts, cache=PolicyCache())
    assert decision.allowed is holds
    assert decision.policy == ("default/allow-it" if holds else None)


# --- policy structure: rules OR, clauses AND, matches OR, empty Match skipped ----------------------

NS_DEFAULT = Match(namespaces=(exact("default"),))
NS_PROD = Match(namespaces=(exact("prod"),))
PORT_8080 = Match(destination_ports=(8080,))
PORT_80 = Match(destination_ports=(80,))


def allow_rules(*rules: Rule) -> Authorization:
    return Authorization(name="p", namespace="default", action=Action.ALLOW, rules=rules)


def rule(*clauses: tuple[Match, ...]) -> Rule:
    return Rule(clauses=tuple(Clause(matches=c) for c in clauses))


STRUCTURE_CASES = [
    pytest.param(allow_rules(), False, id="a policy with no rules never matches"),
    pytest.param(allow_rules(Rule()), True, id="a rule without clauses matches every connection"),
    pytest.param(allow_rules(rule(())), True, id="a clause without matches holds"),
    pytest.param(
        allow_rules(rule((Match(),))), False, id="a clause holding only an empty Match never matches"
    ),
    pytest.param(
        allow_rules(rule((Match(), NS_DEFAULT))),
        True,
        id="an empty Match is skipped and the next match in the clause can hold",
    ),
    pytest.param(allow_rules(rule((NS_PROD, NS_DEFAULT))), True, id="matches in a clause are ORed"),
    pytest.param(
        allow_rules(rule((NS_DEFAULT,), (PORT_8080,))), True, id="clauses in a rule are ANDed and all hold"
    ),
    pytest.param(
        allow_rules(rule((NS_DEFAULT,), (PORT_80,))), False, id="clauses in a rule are ANDed and one fails"
    ),
    pytest.param(
        allow_rules(rule((NS_DEFAULT,), ())),
        True,
        id="an empty clause beside a holding clause keeps the rule holding",
    ),
    pytest.param(
        allow_rules(rule((NS_DEFAULT,), (Match(),))),
        False,
        id="an empty-Match clause beside a holding clause fails the rule",
    ),
    pytest.param(
        allow_rules(rule((NS_PROD,)), rule((PORT_8080,))),
        True,
        id="rules are ORed: the second rule can match",
    ),
    pytest.param(
        allow_rules(rule((NS_PROD,)), rule((PORT_80,))), False, id="rules are ORed: no rule matches"
    ),
]


@pytest.mark.parametrize(("pol", "holds"), STRUCTURE_CASES)
def test_policy_structure(pol: Authorization, holds: bool) -> None:
    assert evaluate_l4([pol], tls(), cache=PolicyCache()).allowed is holds


# --- evaluation order ----------------------------------------------------------------------------

ALLOW_DEFAULT = policy("allow-default", NS_DEFAULT)
ALLOW_PROD = policy("allow-prod", NS_PROD)
DENY_DEFAULT = policy("deny-default", NS_DEFAULT, action=Action.DENY)
DENY_PORT = policy("deny-port", PORT_8080, namespace="other", action=Action.DENY)
DENY_PROD = policy("deny-prod", NS_PROD, action=Action.DENY)
STRICT = policy(
    "istio_converted_static_strict",
    Match(not_principals=(PRESENCE,)),
    namespace="istio-system",
    action=Action.DENY,
)
DRY_DENY = Authorization(
    name="dry-deny", namespace="default", action=Action.DENY, dry_run=True, rules=ALLOW_DEFAULT.rules
)
DRY_ALLOW = Authorization(
    name="dry-allow", namespace="default", action=Action.ALLOW, dry_run=True, rules=ALLOW_DEFAULT.rules
)
DRY_ALLOW_PROD = Authorization(
    name="dry-allow-prod", namespace="default", action=Action.ALLOW, dry_run=True, rules=ALLOW_PROD.rules
)
REJECTED = "connection closed due to policy rejection: "
EXPLICIT = DenyReason.EXPLICITLY_DENIED

ORDER_CASES = [
    pytest.param([], tls(), Decision.allow(), id="no policies allow the connection"),
    pytest.param([DENY_PROD], tls(), Decision.allow(), id="a DENY that does not match allows"),
    pytest.param(
        [DENY_DEFAULT],
        tls(),
        Decision(
            False,
            DenyReason.EXPLICITLY_DENIED,
            "default/deny-default",
            REJECTED + "explicitly denied by: default/deny-default",
        ),
        id="a matching DENY denies and names itself in ztunnel's words",
    ),
    pytest.param(
        [DENY_DEFAULT, ALLOW_DEFAULT],
        tls(),
        Decision.deny(EXPLICIT, "default/deny-default"),
        id="DENY beats ALLOW when listed first",
    ),
    pytest.param(
        [ALLOW_DEFAULT, DENY_DEFAULT],
        tls(),
        Decision.deny(EXPLICIT, "default/deny-default"),
        id="DENY beats ALLOW when listed last",
    ),
    pytest.param(
        [DENY_PORT, DENY_DEFAULT],
        tls(),
        Decision.deny(DenyReason.EXPLICITLY_DENIED, "other/deny-port"),
        id="the first matching DENY is the one named",
    ),
    pytest.param(
        [ALLOW_PROD],
        tls(),
        Decision(False, DenyReason.NOT_ALLOWED, None, REJECTED + "allow policies exist, but none allowed"),
        id="allow policies that all miss deny with ztunnel's not-allowed message",
    ),
    pytest.param(
        [ALLOW_PROD, ALLOW_DEFAULT],
        tls(),
        Decision.allow("default/allow-default"),
        id="any matching ALLOW allows and is named",
    ),
    pytest.param(
        [ALLOW_DEFAULT, DENY_PROD],
        tls(),
        Decision.allow("default/allow-default"),
        id="a non-matching DENY does not stop a matching ALLOW",
    ),
    pytest.param(
        [STRICT],
        plaintext(),
        Decision.deny(EXPLICIT, "istio-system/istio_converted_static_strict"),
        id="the converted STRICT PeerAuthentication denies a plaintext peer",
    ),
    pytest.param(
        [STRICT], tls(), Decision.allow(), id="the converted STRICT PeerAuthentication allows an mTLS peer"
    ),
    pytest.param(
        [STRICT, ALLOW_DEFAULT],
        plaintext(),
        Decision.deny(DenyReason.EXPLICITLY_DENIED, "istio-system/istio_converted_static_strict"),
        id="the converted STRICT PeerAuthentication denies plaintext even when an ALLOW exists",
    ),
    pytest.param(
        [ALLOW_DEFAULT],
        plaintext(),
        Decision.deny(DenyReason.NOT_ALLOWED),
        id="an identity-based ALLOW refuses a plaintext peer",
    ),
    pytest.param(
        [DRY_DENY],
        tls(),
        Decision.allow(dry_run_hits=(DryRunHit("default/dry-deny", Action.DENY),)),
        id="a matching dry-run DENY only records a hit",
    ),
    pytest.param(
        [DRY_DENY, ALLOW_PROD],
        tls(),
        Decision.deny(DenyReason.NOT_ALLOWED, dry_run_hits=(DryRunHit("default/dry-deny", Action.DENY),)),
        id="a dry-run DENY hit is reported on a denial by ALLOW policies",
    ),
    pytest.param(
        [DRY_ALLOW],
        tls(ns="prod"),
        Decision.allow(),
        id="a dry-run ALLOW alone does not make allow policies exist",
    ),
    pytest.param(
        [DRY_ALLOW],
        tls(),
        Decision.allow(dry_run_hits=(DryRunHit("default/dry-allow", Action.ALLOW),)),
        id="a matching dry-run ALLOW only records a hit",
    ),
    pytest.param(
        [DRY_ALLOW_PROD, ALLOW_PROD],
        tls(),
        Decision.deny(DenyReason.NOT_ALLOWED),
        id="a dry-run ALLOW cannot rescue a connection the real ALLOW refuses",
    ),
    pytest.param(
        [DENY_DEFAULT, DRY_ALLOW],
        tls(),
        Decision.deny(
            DenyReason.EXPLICITLY_DENIED,
            "default/deny-default",
            dry_run_hits=(DryRunHit("default/dry-allow", Action.ALLOW),),
        ),
        id="dry-run hits are reported even when a DENY decides",
    ),
]


@pytest.mark.parametrize(("policies", "facts", "expected"), ORDER_CASES)
def test_evaluation_order(policies: list[Authorization], facts: ConnFacts, expected: Decision) -> None:
    assert evaluate_l4(policies, facts, cache=PolicyCache()) == expected


def test_policies_may_be_any_iterable_and_default_cache_works() -> None:
    decision = evaluate_l4((p for p in [ALLOW_PROD, ALLOW_DEFAULT]), tls())
    assert decision == Decision.allow("default/allow-default")


# --- compilation, caching, fail-closed on bad policy data ----------------------------------------


def test_each_policy_object_is_compiled_once_and_reused() -> None:
    cache = PolicyCache()
    first = cache.get(ALLOW_DEFAULT)
    for _ in range(3):
        evaluate_l4([ALLOW_DEFAULT, DENY_PROD], tls(), cache=cache)
    assert cache.get(ALLOW_DEFAULT) is first
    assert len(cache) == 2


def test_cache_is_bounded_and_evicts_the_oldest_policy() -> None:
    cache = PolicyCache(maxsize=2)
    oldest = cache.get(ALLOW_DEFAULT)
    cache.get(ALLOW_PROD)
    cache.get(DENY_PROD)
    assert len(cache) == 2
    assert cache.get(ALLOW_DEFAULT) is not oldest


def test_cache_rejects_a_useless_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PolicyCache(maxsize=0)


BAD_CIDR = Match(source_ips=(IpNet("10.0.0.300", 8),))
BAD_LENGTH = Match(destination_ips=(IpNet("2001:db8::", 129),))


@pytest.mark.parametrize(
    ("match", "field"),
    [
        (BAD_CIDR, "rules[0].clauses[0].matches[0].source_ips[0]"),
        (BAD_LENGTH, "rules[0].clauses[0].matches[0].destination_ips[0]"),
    ],
    ids=["an address that is not an IP is refused", "a prefix longer than the address is refused"],
)
def test_compile_refuses_bad_networks_naming_the_field(match: Match, field: str) -> None:
    with pytest.raises(InvalidPolicyError) as info:
        compile_policy(policy("bad", match, namespace="team"))
    assert info.value.policy == "team/bad"
    assert info.value.field == field
    assert "team/bad" in str(info.value) and "fails closed" in str(info.value)


def test_a_broken_allow_policy_fails_closed_by_never_matching() -> None:
    broken = policy("broken", BAD_CIDR)
    cache = PolicyCache()
    assert evaluate_l4([broken], tls(), cache=cache) == Decision.deny(DenyReason.NOT_ALLOWED)
    assert cache.get(broken).error is not None
    # The other policies still apply.
    assert evaluate_l4([broken, ALLOW_DEFAULT], tls(), cache=cache).allowed


def test_a_broken_deny_policy_fails_closed_by_matching_everything() -> None:
    broken = policy("broken", BAD_LENGTH, action=Action.DENY)
    decision = evaluate_l4([broken, ALLOW_DEFAULT], plaintext(), cache=PolicyCache())
    assert decision == Decision.deny(DenyReason.EXPLICITLY_DENIED, "default/broken")


@given(
    addr=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    network=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    data=st.data(),
)
def test_cidr_containment_agrees_with_ipaddress(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    network: ipaddress.IPv4Address | ipaddress.IPv6Address,
    data: st.DataObject,
) -> None:
    length = data.draw(st.integers(0, network.max_prefixlen))
    expected = addr.version == network.version and addr in ipaddress.ip_network(
        f"{network}/{length}", strict=False
    )
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return  # canonicalised to IPv4 by ConnFacts; covered by the table above
    facts = ConnFacts(str(addr), 1, "10.0.0.1", 80, None)
    pol = policy("cidr", Match(source_ips=(IpNet(str(network), length),)))
    assert evaluate_l4([pol], facts, cache=PolicyCache()).allowed is expected

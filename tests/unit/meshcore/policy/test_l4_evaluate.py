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
    (Match(principals=(exact("cluster.local/ns/default/sa/client"),)), tls(), True),
    (Match(principals=(exact("spiffe://cluster.local/ns/default/sa/client"),)), tls(), False),
    (Match(principals=(StringMatch("prefix", "cluster.local/ns/default/"),)), tls(), True),
    (Match(principals=(StringMatch("suffix", "/sa/client"),)), tls(sa="other"), False),
    (Match(principals=(PRESENCE,)), tls(), True),
    (Match(principals=(PRESENCE,)), plaintext(), False),
    (Match(principals=(exact("cluster.local/ns/default/sa/client"),)), tls(td="other.td"), False),
    (Match(principals=(exact("cluster.local/ns/default/sa/x"), exact("cluster.local/ns/default/sa/client"))),
     tls(), True),
    (Match(not_principals=(exact("cluster.local/ns/default/sa/client"),)), tls(), False),
    (Match(not_principals=(exact("cluster.local/ns/default/sa/client"),)), tls(sa="other"), True),
    (Match(not_principals=(PRESENCE,)), plaintext(), True),
    (Match(not_principals=(PRESENCE,)), tls(), False),
    (Match(namespaces=(exact("default"),)), tls(), True),
    (Match(namespaces=(exact("default"),)), tls(ns="prod"), False),
    (Match(namespaces=(PRESENCE,)), plaintext(), False),
    (Match(namespaces=(StringMatch("prefix", ""),)), plaintext(), False),
    (Match(not_namespaces=(exact("default"),)), tls(), False),
    (Match(not_namespaces=(exact("default"),)), plaintext(), True),
    (Match(service_accounts=(ServiceAccountMatch("default", "client"),)), tls(td="any.td"), True),
    (Match(service_accounts=(ServiceAccountMatch("prod", "client"),)), tls(), False),
    (Match(service_accounts=(ServiceAccountMatch("default", "client"),)), plaintext(), False),
    (Match(not_service_accounts=(ServiceAccountMatch("default", "client"),)), tls(), False),
    (Match(not_service_accounts=(ServiceAccountMatch("default", "client"),)), plaintext(), True),
    (Match(source_ips=(net("10.0.0.1/32"),)), tls(), True),
    (Match(source_ips=(net("10.0.0.0/24"),)), tls(src="10.0.0.200"), True),
    (Match(source_ips=(net("10.0.0.7/24"),)), tls(src="10.0.0.9"), True),
    (Match(source_ips=(net("10.0.0.0/24"),)), tls(src="10.0.1.1"), False),
    (Match(source_ips=(net("10.0.0.0/24"),)), plaintext(), True),
    (Match(source_ips=(net("0.0.0.0/0"),)), tls(src="2001:db8::1"), False),
    (Match(source_ips=(net("2001:db8::/32"),)), tls(src="2001:db8:ff::5"), True),
    (Match(source_ips=(net("2001:db8::/32"),)), tls(src="2001:db9::5"), False),
    (Match(source_ips=(net("::/0"),)), tls(src="10.0.0.1"), False),
    (Match(source_ips=(net("10.0.0.0/8"),)), tls(src="::ffff:10.1.2.3"), True),
    (Match(not_source_ips=(net("10.0.0.0/24"),)), tls(), False),
    (Match(not_source_ips=(net("10.0.0.0/24"),)), tls(src="192.168.0.1"), True),
    (Match(destination_ips=(net("10.0.1.1/32"),)), tls(), True),
    (Match(destination_ips=(net("10.0.1.1/32"),)), tls(dst="10.0.1.2"), False),
    (Match(destination_ips=(net("fd00::/8"),)), tls(dst="fd00::1:2"), True),
    (Match(not_destination_ips=(net("10.0.1.0/24"),)), tls(), False),
    (Match(destination_ports=(8080,)), tls(), True),
    (Match(destination_ports=(80, 8080)), tls(port=80), True),
    (Match(destination_ports=(80,)), tls(), False),
    (Match(not_destination_ports=(8080,)), tls(), False),
    (Match(not_destination_ports=(8080,)), tls(port=9090), True),
    (Match(namespaces=(exact("default"),), destination_ports=(80,)), tls(), False),
    (Match(namespaces=(exact("default"),), destination_ports=(8080,)), tls(), True),
    (Match(namespaces=(exact("default"),), not_principals=(exact("cluster.local/ns/default/sa/client"),)),
     tls(), False),
    (Match(source_ips=(net("10.0.0.0/8"),), not_source_ips=(net("10.0.0.0/24"),)), tls(), False),
    (Match(not_principals=(PRESENCE,), destination_ports=(8080,)), plaintext(), True),
]
MATCH_IDS = [
    "an exact principal matches the peer identity without spiffe://",
    "a principal written with spiffe:// never matches",
    "a principal prefix matches",
    "a principal suffix must match the service account",
    "a presence principal matches any mTLS peer",
    "a presence principal never matches a plaintext peer",
    "principals compare the trust domain too",
    "principal values are ORed",
    "not_principals refuses the named peer",
    "not_principals lets other peers through",
    "not_principals presence holds for a plaintext peer",
    "not_principals presence fails for an mTLS peer",
    "namespaces match the namespace of the peer SPIFFE id",
    "namespaces refuse a peer from another namespace",
    "namespaces never match a plaintext peer",
    "even an empty namespace prefix never matches a plaintext peer",
    "not_namespaces refuse a peer from that namespace",
    "not_namespaces hold for a plaintext peer",
    "service accounts match namespace and name whatever the trust domain",
    "service accounts need the namespace to match",
    "service accounts never match a plaintext peer",
    "not_service_accounts refuse that service account",
    "not_service_accounts hold for a plaintext peer",
    "a /32 source ip matches that address",
    "a source CIDR contains the addresses in its range",
    "host bits in a source CIDR are ignored",
    "a source outside the CIDR does not match",
    "source ips match plaintext peers too",
    "an IPv4 /0 does not contain an IPv6 source",
    "an IPv6 source CIDR contains addresses in its range",
    "an IPv6 source outside the CIDR does not match",
    "an IPv6 /0 does not contain an IPv4 source",
    "an IPv4-mapped IPv6 source is matched as IPv4",
    "not_source_ips refuse sources in the CIDR",
    "not_source_ips let other sources through",
    "destination ips match the upstream pod address",
    "destination ips refuse another pod address",
    "IPv6 destination CIDRs match",
    "not_destination_ips refuse destinations in the CIDR",
    "destination ports match the upstream port",
    "destination port values are ORed",
    "a different destination port does not match",
    "not_destination_ports refuse that port",
    "not_destination_ports let other ports through",
    "fields are ANDed: the right namespace on the wrong port fails",
    "fields are ANDed: the right namespace on the right port holds",
    "a not_ field fails the match even when the positive field holds",
    "not_source_ips carve a hole out of source_ips",
    "a plaintext peer satisfies not_principals and ports",
]


@pytest.mark.parametrize(("match", "facts", "holds"), MATCH_CASES, ids=MATCH_IDS)
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
    (allow_rules(), False),
    (allow_rules(Rule()), True),
    (allow_rules(rule(())), True),
    (allow_rules(rule((Match(),))), False),
    (allow_rules(rule((Match(), NS_DEFAULT))), True),
    (allow_rules(rule((NS_PROD, NS_DEFAULT))), True),
    (allow_rules(rule((NS_DEFAULT,), (PORT_8080,))), True),
    (allow_rules(rule((NS_DEFAULT,), (PORT_80,))), False),
    (allow_rules(rule((NS_DEFAULT,), ())), True),
    (allow_rules(rule((NS_DEFAULT,), (Match(),))), False),
    (allow_rules(rule((NS_PROD,)), rule((PORT_8080,))), True),
    (allow_rules(rule((NS_PROD,)), rule((PORT_80,))), False),
]
STRUCTURE_IDS = [
    "a policy with no rules never matches",
    "a rule without clauses matches every connection",
    "a clause without matches holds",
    "a clause holding only an empty Match never matches",
    "an empty Match is skipped and the next match in the clause can hold",
    "matches in a clause are ORed",
    "clauses in a rule are ANDed and all hold",
    "clauses in a rule are ANDed and one fails",
    "an empty clause beside a holding clause keeps the rule holding",
    "an empty-Match clause beside a holding clause fails the rule",
    "rules are ORed: the second rule can match",
    "rules are ORed: no rule matches",
]


@pytest.mark.parametrize(("pol", "holds"), STRUCTURE_CASES, ids=STRUCTURE_IDS)
def test_policy_structure(pol: Authorization, holds: bool) -> None:
    assert evaluate_l4([pol], tls(), cache=PolicyCache()).allowed is holds


# --- evaluation order ----------------------------------------------------------------------------

ALLOW_DEFAULT = policy("allow-default", NS_DEFAULT)
ALLOW_PROD = policy("allow-prod", NS_PROD)
DENY_DEFAULT = policy("deny-default", NS_DEFAULT, action=Action.DENY)
DENY_PORT = policy("deny-port", PORT_8080, namespace="other", action=Action.DENY)
DENY_PROD = policy("deny-prod", NS_PROD, action=Action.DENY)
STRICT = policy("istio_converted_static_strict", Match(not_principals=(PRESENCE,)), namespace="istio-system",
                action=Action.DENY)
DRY_DENY = Authorization(name="dry-deny", namespace="default", action=Action.DENY, dry_run=True,
                         rules=ALLOW_DEFAULT.rules)
DRY_ALLOW = Authorization(name="dry-allow", namespace="default", action=Action.ALLOW, dry_run=True,
                          rules=ALLOW_DEFAULT.rules)
DRY_ALLOW_PROD = Authorization(name="dry-allow-prod", namespace="default", action=Action.ALLOW, dry_run=True,
                               rules=ALLOW_PROD.rules)
REJECTED = "connection closed due to policy rejection: "
EXPLICIT = DenyReason.EXPLICITLY_DENIED

ORDER_CASES = [
    ([], tls(), Decision.allow()),
    ([DENY_PROD], tls(), Decision.allow()),
    ([DENY_DEFAULT], tls(), Decision(False, DenyReason.EXPLICITLY_DENIED, "default/deny-default",
                                     REJECTED + "explicitly denied by: default/deny-default")),
    ([DENY_DEFAULT, ALLOW_DEFAULT], tls(), Decision.deny(EXPLICIT, "default/deny-default")),
    ([ALLOW_DEFAULT, DENY_DEFAULT], tls(), Decision.deny(EXPLICIT, "default/deny-default")),
    ([DENY_PORT, DENY_DEFAULT], tls(), Decision.deny(DenyReason.EXPLICITLY_DENIED, "other/deny-port")),
    ([ALLOW_PROD], tls(), Decision(False, DenyReason.NOT_ALLOWED, None,
                                   REJECTED + "allow policies exist, but none allowed")),
    ([ALLOW_PROD, ALLOW_DEFAULT], tls(), Decision.allow("default/allow-default")),
    ([ALLOW_DEFAULT, DENY_PROD], tls(), Decision.allow("default/allow-default")),
    ([STRICT], plaintext(), Decision.deny(EXPLICIT, "istio-system/istio_converted_static_strict")),
    ([STRICT], tls(), Decision.allow()),
    ([STRICT, ALLOW_DEFAULT], plaintext(),
     Decision.deny(DenyReason.EXPLICITLY_DENIED, "istio-system/istio_converted_static_strict")),
    ([ALLOW_DEFAULT], plaintext(), Decision.deny(DenyReason.NOT_ALLOWED)),
    ([DRY_DENY], tls(), Decision.allow(dry_run_hits=(DryRunHit("default/dry-deny", Action.DENY),))),
    ([DRY_DENY, ALLOW_PROD], tls(),
     Decision.deny(DenyReason.NOT_ALLOWED, dry_run_hits=(DryRunHit("default/dry-deny", Action.DENY),))),
    ([DRY_ALLOW], tls(ns="prod"), Decision.allow()),
    ([DRY_ALLOW], tls(), Decision.allow(dry_run_hits=(DryRunHit("default/dry-allow", Action.ALLOW),))),
    ([DRY_ALLOW_PROD, ALLOW_PROD], tls(), Decision.deny(DenyReason.NOT_ALLOWED)),
    ([DENY_DEFAULT, DRY_ALLOW], tls(),
     Decision.deny(DenyReason.EXPLICITLY_DENIED, "default/deny-default",
                   dry_run_hits=(DryRunHit("default/dry-allow", Action.ALLOW),))),
]
ORDER_IDS = [
    "no policies allow the connection",
    "a DENY that does not match allows",
    "a matching DENY denies and names itself in ztunnel's words",
    "DENY beats ALLOW when listed first",
    "DENY beats ALLOW when listed last",
    "the first matching DENY is the one named",
    "allow policies that all miss deny with ztunnel's not-allowed message",
    "any matching ALLOW allows and is named",
    "a non-matching DENY does not stop a matching ALLOW",
    "the converted STRICT PeerAuthentication denies a plaintext peer",
    "the converted STRICT PeerAuthentication allows an mTLS peer",
    "the converted STRICT PeerAuthentication denies plaintext even when an ALLOW exists",
    "an identity-based ALLOW refuses a plaintext peer",
    "a matching dry-run DENY only records a hit",
    "a dry-run DENY hit is reported on a denial by ALLOW policies",
    "a dry-run ALLOW alone does not make allow policies exist",
    "a matching dry-run ALLOW only records a hit",
    "a dry-run ALLOW cannot rescue a connection the real ALLOW refuses",
    "dry-run hits are reported even when a DENY decides",
]


@pytest.mark.parametrize(("policies", "facts", "expected"), ORDER_CASES, ids=ORDER_IDS)
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

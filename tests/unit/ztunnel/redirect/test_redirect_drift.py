"""ztunnel.redirect.drift.find_drift: each way a pod netns can differ from the rendered rules is reported.

The listings are built the way ``nft -j list ruleset`` prints them (table, its chains, then its rules in
order, counters with numbers); the netns tier checks that real nft prints exactly this.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from ztunnel.redirect.drift import Drift, DriftKind, find_drift
from ztunnel.redirect.errors import ListingInvalid
from ztunnel.redirect.rules import IpRoute, IpRule, RedirectOptions, RuleSet, render

RULESET = render(RedirectOptions(dns_capture=True))
NAT, MANGLE, RAW = "istio-ambient-nat", "istio-ambient-mangle", "istio-ambient-raw"


def listing_of(ruleset: RuleSet) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    handle = 1
    for table in ruleset.tables:
        items.append({"table": {"family": "inet", "name": table.name, "handle": handle}})
        for chain in table.chains:
            body: dict[str, Any] = {
                "family": "inet",
                "table": table.name,
                "name": chain.name,
                "handle": handle,
            }
            if chain.base is not None:
                b = chain.base
                body.update(type=b.type, hook=b.hook, prio=b.priority, policy=b.policy)
            items.append({"chain": body})
        for chain in table.chains:
            for rule in chain.rules:
                handle += 1
                expr = [
                    {"counter": {"packets": 3, "bytes": 180}} if "counter" in e else e
                    for e in rule.listed_expr()
                ]
                items.append(
                    {
                        "rule": {
                            "family": "inet",
                            "table": table.name,
                            "chain": chain.name,
                            "handle": handle,
                            "expr": expr,
                        }
                    }
                )
    return {"nftables": items}


def _items(listing: dict[str, Any], kind: str, table: str, chain: str | None = None) -> list[dict[str, Any]]:
    return [
        i
        for i in listing["nftables"]
        if kind in i
        and (i[kind].get("table") or i[kind].get("name")) == table
        and (chain is None or i[kind].get("chain", i[kind].get("name")) == chain)
    ]


def drop_table(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(listing: dict[str, Any]) -> None:
        listing["nftables"] = [
            i
            for i in listing["nftables"]
            if not any(
                k in i and (i[k].get("table") or i[k].get("name")) == name for k in ("table", "chain", "rule")
            )
        ]

    return edit


def drop_rule(table: str, chain: str, index: int) -> Callable[[dict[str, Any]], None]:
    def edit(listing: dict[str, Any]) -> None:
        listing["nftables"].remove(_items(listing, "rule", table, chain)[index])

    return edit


def swap_first_rules(table: str, chain: str) -> Callable[[dict[str, Any]], None]:
    def edit(listing: dict[str, Any]) -> None:
        a, b = _items(listing, "rule", table, chain)[:2]
        a["rule"]["expr"], b["rule"]["expr"] = b["rule"]["expr"], a["rule"]["expr"]

    return edit


def add_rule(table: str, chain: str) -> Callable[[dict[str, Any]], None]:
    def edit(listing: dict[str, Any]) -> None:
        listing["nftables"].append(
            {
                "rule": {
                    "family": "inet",
                    "table": table,
                    "chain": chain,
                    "handle": 99,
                    "expr": [{"accept": None}],
                }
            }
        )

    return edit


def change_prio(table: str, chain: str, prio: int) -> Callable[[dict[str, Any]], None]:
    def edit(listing: dict[str, Any]) -> None:
        _items(listing, "chain", table, chain)[0]["chain"]["prio"] = prio

    return edit


def add_chain(table: str, chain: str) -> Callable[[dict[str, Any]], None]:
    def edit(listing: dict[str, Any]) -> None:
        listing["nftables"].append({"chain": {"family": "inet", "table": table, "name": chain, "handle": 50}})

    return edit


def add_foreign_table(listing: dict[str, Any]) -> None:
    listing["nftables"] += [
        {"table": {"family": "ip", "name": "kube-proxy", "handle": 70}},
        {"chain": {"family": "ip", "table": "kube-proxy", "name": "x", "handle": 71}},
        {"table": {"family": "inet", "name": "firewalld", "handle": 72}},
    ]


def nothing(listing: dict[str, Any]) -> None:
    return None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (nothing, []),
        (add_foreign_table, []),
        (drop_table(NAT), [(DriftKind.TABLE_MISSING, "inet istio-ambient-nat")]),
        (
            drop_rule(NAT, "istio-output", -1),
            [(DriftKind.RULE_MISSING, "inet istio-ambient-nat/istio-output")],
        ),
        (
            add_rule(MANGLE, "istio-output"),
            [(DriftKind.RULE_UNEXPECTED, "inet istio-ambient-mangle/istio-output")],
        ),
        (
            swap_first_rules(NAT, "istio-output"),
            [(DriftKind.RULES_REORDERED, "inet istio-ambient-nat/istio-output")],
        ),
        (
            change_prio(NAT, "prerouting", 0),
            [(DriftKind.CHAIN_HOOK_CHANGED, "inet istio-ambient-nat/prerouting")],
        ),
        (add_chain(RAW, "extra"), [(DriftKind.CHAIN_UNEXPECTED, "inet istio-ambient-raw/extra")]),
    ],
    ids=[
        "an exact listing has no drift",
        "tables of other software are ignored",
        "a deleted nat table is reported missing",
        "a deleted redirect rule is reported missing with its text",
        "a rule someone added is reported unexpected",
        "two swapped rules are reported as reordered",
        "a base chain at another priority is reported",
        "a chain someone added is reported",
    ],
)
def test_nft_drift(edit: Callable[[dict[str, Any]], None], expected: list[tuple[DriftKind, str]]) -> None:
    listing = copy.deepcopy(listing_of(RULESET))
    edit(listing)
    drift = find_drift(RULESET, listing, RULESET.ip_rules, RULESET.ip_routes)
    assert [(d.kind, d.subject) for d in drift] == expected


def test_a_missing_rule_names_the_rule_text() -> None:
    listing = listing_of(RULESET)
    drop_rule(NAT, "istio-output", -1)(listing)
    [drift] = find_drift(RULESET, listing, RULESET.ip_rules, RULESET.ip_routes)
    assert "redirect to :15001" in drift.detail
    assert str(drift).startswith("rule-missing: inet istio-ambient-nat/istio-output: ")


def test_a_table_left_from_wider_options_is_unexpected() -> None:
    narrower = render(RedirectOptions(dns_capture=False))
    drift = find_drift(narrower, listing_of(RULESET), narrower.ip_rules, narrower.ip_routes)
    kinds = {(d.kind, d.subject) for d in drift}
    assert (DriftKind.TABLE_UNEXPECTED, "inet istio-ambient-raw") in kinds
    # the nat table has DNS redirects the narrower ruleset does not want
    assert any(d.kind is DriftKind.RULE_UNEXPECTED and d.subject.endswith("nat/istio-output") for d in drift)


@pytest.mark.parametrize(
    ("rules", "routes", "expected"),
    [
        ((), (IpRoute(4, "0.0.0.0/0"),), [DriftKind.IP_RULE_MISSING]),
        ((IpRule(4),), (), [DriftKind.IP_ROUTE_MISSING]),
        (
            (IpRule(4, priority=100),),
            (IpRoute(4, "0.0.0.0/0", table=101),),
            [DriftKind.IP_RULE_MISSING, DriftKind.IP_ROUTE_MISSING],
        ),
        ((IpRule(4), IpRule(4, fwmark=0x9)), (IpRoute(4, "0.0.0.0/0"), IpRoute(4, "10.0.0.0/8")), []),
    ],
    ids=[
        "a missing fwmark rule is reported",
        "a missing table-100 route is reported",
        "a rule and route with other numbers do not count",
        "unrelated extra rules and routes are ignored",
    ],
)
def test_ip_drift(rules: tuple[IpRule, ...], routes: tuple[IpRoute, ...], expected: list[DriftKind]) -> None:
    drift = find_drift(RULESET, listing_of(RULESET), rules, routes)
    assert [d.kind for d in drift] == expected


@pytest.mark.parametrize(
    "listing",
    [
        {},
        {"nftables": "x"},
        {"nftables": [1]},
        {"nftables": [{"rule": {"family": "inet", "table": NAT, "chain": "c"}}]},
    ],
    ids=["no nftables key", "nftables not a list", "an entry not an object", "a rule without expr"],
)
def test_a_listing_that_is_not_nft_json_is_refused(listing: dict[str, Any]) -> None:
    with pytest.raises(ListingInvalid):
        find_drift(RULESET, listing, (), ())


@pytest.mark.parametrize(
    ("edit", "rules", "words"),
    [
        (drop_table(NAT), RULESET.ip_rules, "nftables table inet istio-ambient-nat is missing"),
        (drop_rule(NAT, "istio-output", -1), RULESET.ip_rules,
         "rule missing from inet istio-ambient-nat/istio-output: `"),
        (add_rule(MANGLE, "istio-output"), RULESET.ip_rules,
         'rule in inet istio-ambient-mangle/istio-output that was not installed: [{"accept":null}]'),
        (swap_first_rules(NAT, "istio-output"), RULESET.ip_rules,
         "the rules of inet istio-ambient-nat/istio-output are in another order than installed"),
        (change_prio(NAT, "prerouting", 0), RULESET.ip_rules, "chain inet istio-ambient-nat/prerouting is hooked differently"),
        (nothing, (), "`ip -4 rule fwmark 0x111/0xfff pref 32764 lookup 100` is missing"),
    ],
    ids=["a missing table is worded with its name", "a missing rule is worded with its nft text",
         "an added rule is worded with what nft lists", "reordered rules are worded with their chain",
         "a re-hooked chain is worded with the hooks", "a missing ip rule is worded as the ip command"],
)  # fmt: skip
def test_each_drift_is_described_for_an_operator(
    edit: Callable[[dict[str, Any]], None], rules: tuple[IpRule, ...], words: str
) -> None:
    listing = copy.deepcopy(listing_of(RULESET))
    edit(listing)
    [drift] = find_drift(RULESET, listing, rules, RULESET.ip_routes)
    assert drift.describe().startswith(words), drift.describe()
    assert drift.to_json() == {"kind": drift.kind.value, "subject": drift.subject, "detail": drift.detail,
                               "text": drift.describe()}  # fmt: skip


def test_every_kind_of_drift_has_words() -> None:
    for kind in DriftKind:
        assert Drift(kind, "inet t/c", "x").describe()

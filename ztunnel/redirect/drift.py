"""Drift between a rendered ``RuleSet`` and what a pod netns actually holds. PURE.

``find_drift(ruleset, listing, ip_rules, ip_routes)`` takes the parsed ``nft -j list ruleset`` output and
the ip rules/routes read from the netns (as ``IpRule``/``IpRoute`` values) and returns one ``Drift`` per
difference; an empty list means the pod is exactly as ``apply`` leaves it. Only managed tables are
looked at (other software's tables are none of our business), counters are ignored, and rule order
matters (nft evaluates in order). Missing ip rules/routes are drift; other rules are ignored.
``Drift.describe()`` words one difference for an operator and ``Drift.to_json()`` is its form on the node
agent's ``/debug/pods`` (kind, subject, detail and that wording).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ztunnel.redirect.errors import ListingInvalid
from ztunnel.redirect.rules import FAMILY, IpRoute, IpRule, NftTable, RuleSet


class DriftKind(StrEnum):
    TABLE_MISSING = "table-missing"
    TABLE_UNEXPECTED = "table-unexpected"
    CHAIN_MISSING = "chain-missing"
    CHAIN_UNEXPECTED = "chain-unexpected"
    CHAIN_HOOK_CHANGED = "chain-hook-changed"
    RULE_MISSING = "rule-missing"
    RULE_UNEXPECTED = "rule-unexpected"
    RULES_REORDERED = "rules-reordered"
    IP_RULE_MISSING = "ip-rule-missing"
    IP_ROUTE_MISSING = "ip-route-missing"


@dataclass(frozen=True, slots=True)
class Drift:
    kind: DriftKind
    subject: str  # "inet istio-ambient-nat/istio-output", "ip -4 rule ...", ...
    detail: str = ""  # the expected rule text, or the unexpected rule as nft JSON

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}" + (f": {self.detail}" if self.detail else "")

    def describe(self) -> str:
        """One sentence naming what differs (the rule's own text for a missing rule)."""
        return _WORDS[self.kind].format(subject=self.subject, detail=self.detail)

    def to_json(self) -> dict[str, str]:
        return {
            "kind": self.kind.value,
            "subject": self.subject,
            "detail": self.detail,
            "text": self.describe(),
        }


_WORDS: dict[DriftKind, str] = {
    DriftKind.TABLE_MISSING: "nftables table {subject} is missing",
    DriftKind.TABLE_UNEXPECTED: "nftables table {subject} is there but was not installed",
    DriftKind.CHAIN_MISSING: "chain {subject} is missing",
    DriftKind.CHAIN_UNEXPECTED: "chain {subject} is there but was not installed",
    DriftKind.CHAIN_HOOK_CHANGED: "chain {subject} is hooked differently ({detail})",
    DriftKind.RULE_MISSING: "rule missing from {subject}: `{detail}`",
    DriftKind.RULE_UNEXPECTED: "rule in {subject} that was not installed: {detail}",
    DriftKind.RULES_REORDERED: "the rules of {subject} are in another order than installed",
    DriftKind.IP_RULE_MISSING: "`{subject}` is missing",
    DriftKind.IP_ROUTE_MISSING: "`{subject}` is missing",
}


@dataclass(slots=True)
class _ListedChain:
    hook: tuple[Any, ...] | None  # (type, hook, prio, policy) of a base chain
    rules: list[list[Any]]


def parse_listing(listing: Mapping[str, Any], managed: Iterable[str]) -> dict[str, dict[str, _ListedChain]]:
    """Managed tables of an ``nft -j list ruleset`` document: table -> chain -> hook and rule exprs."""
    wanted = set(managed)
    items = listing.get("nftables")
    if not isinstance(items, list):
        raise ListingInvalid("no 'nftables' list at the top level")
    tables: dict[str, dict[str, _ListedChain]] = {}
    for item in items:
        if not isinstance(item, dict):
            raise ListingInvalid(f"listing entry is not an object: {item!r}")
        for kind in ("table", "chain", "rule"):
            body = item.get(kind)
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ListingInvalid(f"{kind} entry is not an object")
            if body.get("family") != FAMILY:
                continue
            table = body.get("table") if kind != "table" else body.get("name")
            if table not in wanted:
                continue
            chains = tables.setdefault(str(table), {})
            if kind == "chain":
                chain = chains.setdefault(_name(body, "name"), _ListedChain(None, []))
                if "hook" in body:
                    chain.hook = (body.get("type"), body.get("hook"), body.get("prio"), body.get("policy"))
            elif kind == "rule":
                chain = chains.setdefault(_name(body, "chain"), _ListedChain(None, []))
                expr = body.get("expr")
                if not isinstance(expr, list):
                    raise ListingInvalid(f"rule in {table}/{body.get('chain')} has no expr list")
                chain.rules.append([_blank_counter(e) for e in expr])
    return tables


def _name(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ListingInvalid(f"entry without a string {key!r}: {body!r}")
    return value


def _blank_counter(expr: Any) -> Any:
    if isinstance(expr, dict) and "counter" in expr:
        return {"counter": None}
    return expr


def _compact(expr: list[Any]) -> str:
    return json.dumps(expr, separators=(",", ":"), sort_keys=True)


def _chain_drift(table: NftTable, listed: dict[str, _ListedChain]) -> list[Drift]:
    out: list[Drift] = []
    for chain in table.chains:
        subject = f"{table.family} {table.name}/{chain.name}"
        got = listed.get(chain.name)
        if got is None:
            out.append(Drift(DriftKind.CHAIN_MISSING, subject))
            continue
        want_hook = None
        if chain.base is not None:
            b = chain.base
            want_hook = (b.type, b.hook, b.priority, b.policy)
        if got.hook != want_hook:
            out.append(
                Drift(DriftKind.CHAIN_HOOK_CHANGED, subject, f"expected {want_hook}, found {got.hook}")
            )
        want = [r.listed_expr() for r in chain.rules]
        if want == got.rules:
            continue
        want_count = Counter(_compact(e) for e in want)
        got_count = Counter(_compact(e) for e in got.rules)
        if want_count == got_count:
            out.append(Drift(DriftKind.RULES_REORDERED, subject))
            continue
        for rule, expr in zip(chain.rules, want, strict=True):
            key = _compact(expr)
            if got_count[key] > 0:
                got_count[key] -= 1
            else:
                out.append(Drift(DriftKind.RULE_MISSING, subject, rule.nft()))
        for key, n in got_count.items():
            out.extend(Drift(DriftKind.RULE_UNEXPECTED, subject, key) for _ in range(n))
    known = {c.name for c in table.chains}
    out.extend(
        Drift(DriftKind.CHAIN_UNEXPECTED, f"{table.family} {table.name}/{name}")
        for name in listed
        if name not in known
    )
    return out


def find_drift(
    ruleset: RuleSet,
    listing: Mapping[str, Any],
    ip_rules: Iterable[IpRule],
    ip_routes: Iterable[IpRoute],
) -> list[Drift]:
    """Every way the observed state differs from ``ruleset`` (empty: no drift). Raises
    ``ListingInvalid`` when ``listing`` is not nft's JSON."""
    listed = parse_listing(listing, ruleset.managed_tables)
    out: list[Drift] = []
    for name in ruleset.managed_tables:
        table = ruleset.find_table(name)
        subject = f"{FAMILY} {name}"
        if table is None:
            if name in listed:
                out.append(Drift(DriftKind.TABLE_UNEXPECTED, subject))
        elif name not in listed:
            out.append(Drift(DriftKind.TABLE_MISSING, subject))
        else:
            out.extend(_chain_drift(table, listed[name]))
    have_rules = set(ip_rules)
    out.extend(Drift(DriftKind.IP_RULE_MISSING, str(r)) for r in ruleset.ip_rules if r not in have_rules)
    have_routes = set(ip_routes)
    out.extend(Drift(DriftKind.IP_ROUTE_MISSING, str(r)) for r in ruleset.ip_routes if r not in have_routes)
    return out

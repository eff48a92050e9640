"""ztunnel.redirect.rules: golden nft text per option set, and the ip rule/route data.

Golden files live in testdata/; after an intended change regenerate them with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/ztunnel/redirect/test_redirect_rules.py`` and review the diff
against Istio's cni/pkg/nftables/testdata goldens (same rules, same order).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ztunnel.redirect.rules import (
    MANAGED_TABLES,
    IpRoute,
    IpRule,
    NftTable,
    RedirectOptions,
    render,
    render_nft,
    render_removal,
)

TESTDATA = Path(__file__).parent / "testdata"

GOLDEN_CASES = [
    ("default", RedirectOptions()),
    ("ipv6", RedirectOptions(ipv6=True)),
    ("dns_capture", RedirectOptions(dns_capture=True)),
    ("ipv6_dns_capture", RedirectOptions(ipv6=True, dns_capture=True)),
    ("no_inbound_capture", RedirectOptions(inbound_capture=False)),
]


def _golden(name: str, text: str) -> str:
    path = TESTDATA / f"{name}.nft"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    return path.read_text()


@pytest.mark.parametrize(
    ("name", "opts"),
    GOLDEN_CASES,
    ids=[
        "defaults render Istio's default ruleset without DNS",
        "ipv6 adds an ip6 twin after each address rule",
        "dns capture adds the 53 redirects and the raw table",
        "ipv6 with dns capture renders both",
        "inbound capture off drops the 15006 redirect, probe accept and connmark",
    ],
)
def test_rendered_nft_text_matches_golden(name: str, opts: RedirectOptions) -> None:
    text = render(opts).nft_text
    assert text == _golden(name, text)


def test_removal_text_matches_golden() -> None:
    text = render_removal()
    assert text == _golden("removal", text)


@pytest.mark.parametrize("opts", [c[1] for c in GOLDEN_CASES], ids=[c[0] for c in GOLDEN_CASES])
def test_every_managed_table_is_created_then_deleted_before_it_is_defined(opts: RedirectOptions) -> None:
    lines = render(opts).nft_text.splitlines()
    for table in MANAGED_TABLES:
        add = lines.index(f"add table inet {table}")
        assert lines[add + 1] == f"delete table inet {table}"
        definition = f"table inet {table} {{"
        if definition in lines:
            assert lines.index(definition) == add + 2


@pytest.mark.parametrize(
    ("opts", "tables"),
    [
        (RedirectOptions(), ("istio-ambient-nat", "istio-ambient-mangle")),
        (
            RedirectOptions(dns_capture=True),
            ("istio-ambient-nat", "istio-ambient-mangle", "istio-ambient-raw"),
        ),
    ],
    ids=["without dns capture the raw table is only deleted", "with dns capture the raw table is defined"],
)
def test_defined_tables(opts: RedirectOptions, tables: tuple[str, ...]) -> None:
    ruleset = render(opts)
    assert tuple(t.name for t in ruleset.tables) == tables
    text = ruleset.nft_text
    assert ("table inet istio-ambient-raw {" in text) == opts.dns_capture


@pytest.mark.parametrize(
    ("opts", "rules", "routes"),
    [
        (RedirectOptions(), (IpRule(4),), (IpRoute(4, "0.0.0.0/0"),)),
        (
            RedirectOptions(ipv6=True),
            (IpRule(4), IpRule(6)),
            (IpRoute(4, "0.0.0.0/0"), IpRoute(6, "::/0")),
        ),
    ],
    ids=["ipv4 gets one fwmark rule and one local default route", "ipv6 adds the same for ::/0"],
)
def test_ip_rules_and_routes(
    opts: RedirectOptions, rules: tuple[IpRule, ...], routes: tuple[IpRoute, ...]
) -> None:
    ruleset = render(opts)
    assert ruleset.ip_rules == rules
    assert ruleset.ip_routes == routes


def test_ip_rule_and_route_read_like_the_ip_commands_istio_runs() -> None:
    assert str(IpRule(4)) == "ip -4 rule fwmark 0x111/0xfff pref 32764 lookup 100"
    assert str(IpRoute(6, "::/0")) == "ip -6 route local ::/0 dev lo table 100"


def test_probe_address_option_changes_both_probe_rules() -> None:
    text = render(RedirectOptions(probe_snat_ipv4="169.254.9.9")).nft_text
    assert "meta l4proto tcp ip saddr 169.254.9.9 counter accept" in text
    assert "meta l4proto tcp ip daddr 169.254.9.9 counter accept" in text
    assert "169.254.7.127" not in text


@pytest.mark.parametrize(
    "opts",
    [RedirectOptions(probe_snat_ipv4="not-an-ip"), RedirectOptions(ipv6=True, probe_snat_ipv6="1.2.3.400")],
    ids=["a malformed ipv4 probe address is refused", "a malformed ipv6 probe address is refused"],
)
def test_malformed_options_are_refused_at_render_time(opts: RedirectOptions) -> None:
    with pytest.raises(ValueError):
        render(opts)


def test_render_nft_refuses_a_table_it_would_never_remove() -> None:
    with pytest.raises(ValueError, match="not managed"):
        render_nft((NftTable("someone-elses", ()),))


def test_listed_expr_blanks_counters_and_keeps_rule_order() -> None:
    ruleset = render(RedirectOptions())
    chain = ruleset.tables[0].find_chain("istio-output")
    assert chain is not None
    exprs = [r.listed_expr() for r in chain.rules]
    assert exprs[-1][-1] == {"redirect": {"port": 15001}}
    assert all({"counter": None} in e for e in exprs)

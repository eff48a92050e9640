"""``ambientctl check``: each check's verdict, what it says it saw, and the remediation it prints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambientctl.commands.troubleshoot import format_results
from ambientctl.troubleshoot.checks import (
    Category,
    CheckResult,
    PodRedirection,
    agent_check,
    certificate_check,
    clock_check,
    cluster_check,
    host_checks,
    process_check,
    redirection_check,
    registry_check,
    root_check,
    ruleset_rules,
    sync_checks,
)
from ambientctl.troubleshoot.syncstatus import proxy_rows
from meshcore.model.convert import ADDRESS_TYPE_URL
from meshcore.tls import certs

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def everything(_: str) -> str | None:
    return "/usr/sbin/x"


def failures(results: list[CheckResult]) -> list[tuple[str, str]]:
    return [(r.description, r.remediation) for r in results if not r.ok]


# --- host ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("euid", "netns", "which", "nft_error", "expected"),
    [
        (0, True, everything, None, []),
        (1000, True, everything, None, [("running as root", "sudo")]),
        (0, False, everything, None, [("kernel supports network namespaces", "CONFIG_NET_NS")]),
        (0, True, lambda t: None if t == "nft" else "/x", None, [("`nft` is installed (nftables)", "apt-get install nftables")]),
        (0, True, lambda t: None if t == "ip" else "/x", None, [("`ip` is installed (iproute2)", "apt-get install iproute2")]),
        (0, True, everything, "Operation not supported", [("nftables works in this kernel", "modprobe nf_tables")]),
    ],
    ids=[
        "a ready root machine passes every host check",
        "a normal user is told to use sudo",
        "a kernel without netns is named",
        "missing nft names its Debian package",
        "missing ip names its Debian package",
        "nft that the kernel refuses points at the module",
    ],
)
def test_host_checks(euid: int, netns: bool, which: Any, nft_error: str | None, expected: list[tuple[str, str]]) -> None:
    got = failures(host_checks(euid, netns, which, nft_error))
    assert [d for d, _ in got] == [d for d, _ in expected]
    for (_, fix), (_, wanted) in zip(got, expected, strict=True):
        assert wanted in fix


# --- cluster and processes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "problems", "ok", "fix"),
    [
        ("up", [], True, ""),
        (None, [], False, "ambientctl cluster up"),
        ("degraded", ["node netns am-node-2 is missing"], False, "ambientctl cluster down && ambientctl cluster up"),
    ],
    ids=["an up cluster passes", "no cluster says how to make one", "a degraded cluster quotes its problems"],
)
def test_cluster_check(phase: str | None, problems: list[str], ok: bool, fix: str) -> None:
    r = cluster_check(phase, problems)
    assert r.ok is ok and fix in r.remediation and (ok or fix)
    assert all(p in r.detail for p in problems)


@pytest.mark.parametrize(("running", "seen"), [(False, "its process exited"), (None, "it was never started")],
                         ids=["an exited ztunnel", "a ztunnel never started"])
def test_a_stopped_process_points_at_its_log_and_the_restart(running: bool | None, seen: str) -> None:
    r = process_check(Category.data_plane, "ztunnel-node-2", running)
    assert not r.ok and r.detail == seen
    assert "ambientctl cluster logs ztunnel-node-2" in r.remediation and "ambientctl cluster up" in r.remediation


def test_a_running_process_passes() -> None:
    assert process_check(Category.data_plane, "ztunnel-node-1", True).ok


# --- control plane ------------------------------------------------------------------------------------


def test_istiod_unreachable_quotes_the_error() -> None:
    r = registry_check("istiod :15014/debug/registryz: ConnectionRefusedError")
    assert not r.ok and "ConnectionRefusedError" in r.detail and "ambientctl cluster logs istiod" in r.remediation


def test_refused_resources_are_a_warning_naming_the_first() -> None:
    r = registry_check({"workloads": [1, 2], "services": [], "policies": [],
                        "problems": [{"resource": "AuthorizationPolicy/shop/x", "message": "bad CIDR"}]})
    assert r.ok and r.warning
    assert "AuthorizationPolicy/shop/x: bad CIDR" in r.detail and "2 workloads" in r.detail


def test_a_serving_registry_passes_with_counts() -> None:
    r = registry_check({"workloads": [1], "services": [1, 2], "policies": [], "problems": []})
    assert r.ok and not r.warning and r.detail == "1 workloads, 2 services, 0 policies"


# --- CA root -----------------------------------------------------------------------------------------


def root_pem(not_before: datetime, not_after: datetime) -> bytes:
    key = certs.generate_key()
    cert = certs.build_ca_certificate(key, common_name="test root", organization="cluster.local",
                                      not_before=not_before, not_after=not_after)
    return certs.cert_to_pem(cert).encode()


@pytest.mark.parametrize(
    ("start", "end", "ok", "warning", "seen"),
    [
        (NOW - timedelta(days=1), NOW + timedelta(days=3650), True, False, "3650 days left"),
        (NOW - timedelta(days=1), NOW + timedelta(days=10, hours=1), True, True, "10 days left"),
        (NOW - timedelta(days=400), NOW - timedelta(days=1), False, False, "expired on"),
        (NOW + timedelta(days=1), NOW + timedelta(days=30), False, False, "check this machine's clock"),
    ],
    ids=["a ten-year root passes with its days left", "a root near expiry warns",
         "an expired root fails", "a root not yet valid blames the clock"],
)
def test_root_check(start: datetime, end: datetime, ok: bool, warning: bool, seen: str) -> None:
    r = root_check(root_pem(start, end), NOW)
    assert (r.ok, r.warning) == (ok, warning)
    assert seen in r.detail
    if not ok or warning:
        assert "rotate the root" in r.remediation


def test_a_missing_or_unreadable_root_fails() -> None:
    assert not root_check(None, NOW).ok
    bad = root_check(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", NOW)
    assert not bad.ok and "cannot be read" in bad.detail


# --- node agent and redirection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pods", "ok", "seen", "fix"),
    [
        ({"ztunnel_connected": True, "captured": {"u": {"pod": "a/b", "handed_over": True}}, "failing": {}},
         True, "1 pod(s) captured", ""),
        ({"ztunnel_connected": False, "captured": {}, "failing": {}}, False, "ztunnel is not connected",
         "ambientctl cluster logs ztunnel-node-1"),
        ({"ztunnel_connected": True, "captured": {}, "failing": {"u1": "nft: no such file"}}, False,
         "1 pod(s) not captured: u1: nft: no such file", "ambientctl cluster logs node-agent-node-1"),
        ({"ztunnel_connected": True, "captured": {"u": {"pod": "a/b", "handed_over": False}}, "failing": {}},
         False, "not handed over to ztunnel: a/b", "ambientctl cluster logs ztunnel-node-1"),
        ("node/node-1 :15014/debug/pods: ConnectionRefusedError", False, "ConnectionRefusedError",
         "ambientctl cluster logs node-agent-node-1"),
    ],
    ids=["an agent with every pod handed over passes", "an agent without its ztunnel fails",
         "a pod the agent could not capture is named with the error", "a pod not handed over is named",
         "an unreachable agent quotes the error"],
)
def test_agent_check(pods: Any, ok: bool, seen: str, fix: str) -> None:
    r = agent_check("node-1", pods)
    assert r.ok is ok and seen in r.detail and fix in r.remediation


TABLES = ("istio-ambient-nat", "istio-ambient-mangle")


@pytest.mark.parametrize(
    ("pod", "ok", "seen"),
    [
        (PodRedirection("shop", "a", "node-1", "enabled", TABLES), True, "1 pod(s)"),
        (PodRedirection("shop", "a", "node-1", "enabled", ("istio-ambient-nat",)), False,
         "shop/a: nftables table istio-ambient-mangle missing"),
        (PodRedirection("shop", "a", "node-1", "enabled", ()), False,
         "nftables table istio-ambient-nat missing, nftables table istio-ambient-mangle missing"),
        (PodRedirection("shop", "a", "node-1", "enabled", TABLES, rules={"istio-ambient-nat": 9,
                        "istio-ambient-mangle": 0}, ip_rule=True, ip_route=True), False,
         "shop/a: nftables table istio-ambient-mangle has no rules"),
        (PodRedirection("shop", "a", "node-1", "enabled", TABLES, rules=dict.fromkeys(TABLES, 3),
                        ip_rule=False, ip_route=True), False,
         "shop/a: `ip rule fwmark 0x111/0xfff lookup 100` missing"),
        (PodRedirection("shop", "a", "node-1", "enabled", TABLES, rules=dict.fromkeys(TABLES, 3),
                        ip_rule=True, ip_route=False), False,
         "shop/a: `ip route local 0.0.0.0/0 dev lo table 100` missing"),
        (PodRedirection("shop", "a", "node-1", "enabled", TABLES, rules=dict.fromkeys(TABLES, 3),
                        ip_rule=True, ip_route=True), True, "1 pod(s)"),
        (PodRedirection("shop", "a", "node-1", "pending", TABLES), False,
         "shop/a: ambient.istio.io/redirection is pending"),
        (PodRedirection("shop", "a", "node-1", None, TABLES), False, "redirection is not set"),
        (PodRedirection("shop", "a", "node-1", "enabled", None, "netns gone"), False,
         "cannot read its nftables (netns gone)"),
    ],
    ids=["a pod with both tables and the annotation passes", "a removed table is named",
         "a pod whose tables were deleted names both tables",
         "a table flushed of its rules is named", "a removed connmark ip rule is named",
         "a removed table-100 route is named", "a pod with rules, ip rule and route as installed passes",
         "a pending annotation is named",
         "a missing annotation is named", "an unreadable netns is named"],
)
def test_redirection_check(pod: PodRedirection, ok: bool, seen: str) -> None:
    r = redirection_check([pod])
    assert r.ok is ok and seen in r.detail
    if not ok:
        assert "ambientctl cluster logs node-agent-node-1" in r.remediation


# --- sync -----------------------------------------------------------------------------------------------


def zt(node: str, status: str, *nacks: str) -> dict[str, Any]:
    return {
        "node_id": f"ztunnel~0.0.0.0~ztunnel-{node}.istio-system~istio-system.svc.cluster.local",
        "metadata": {"NODE_NAME": node},
        "types": {ADDRESS_TYPE_URL: {"status": status, "nacks": [{"time": "t", "message": m} for m in nacks]}},
    }


@pytest.mark.parametrize(
    ("syncz", "failed"),
    [
        ([zt("node-1", "SYNCED"), zt("node-2", "SYNCED")], []),
        ([zt("node-1", "SYNCED")], [("every node's ztunnel is connected to istiod-lite", "not connected: node-2")]),
        ([zt("node-1", "SYNCED"), zt("node-2", "NACKED", "policy shop/x: bad CIDR")],
         [("every proxy's configuration is in sync (no NACK, nothing stale)", "policy shop/x: bad CIDR")]),
        ([zt("node-1", "STALE"), zt("node-2", "SYNCED")],
         [("every proxy's configuration is in sync (no NACK, nothing stale)", "WDS STALE")]),
    ],
    ids=["two synced ztunnels pass", "a ztunnel not connected is named", "a NACK is quoted", "a stale type is named"],
)
def test_sync_checks(syncz: list[dict[str, Any]], failed: list[tuple[str, str]]) -> None:
    results = sync_checks(proxy_rows(syncz, "istiod-lite"), ["node-1", "node-2"])
    got = [(r.description, r.detail) for r in results if not r.ok]
    assert [d for d, _ in got] == [d for d, _ in failed]
    for (_, detail), (_, seen) in zip(got, failed, strict=True):
        assert seen in detail


# --- certificates ---------------------------------------------------------------------------------------

ID = "spiffe://cluster.local/ns/shop/sa/client"


def held(start: datetime, hours: float, state: str = "Available") -> dict[str, Any]:
    return {
        "identity": ID,
        "state": state,
        "certChain": [{"validFrom": f"{start:%Y-%m-%dT%H:%M:%SZ}",
                       "expirationTime": f"{start + timedelta(hours=hours):%Y-%m-%dT%H:%M:%SZ}"}],
    }


@pytest.mark.parametrize(
    ("certificates", "ok", "seen"),
    [
        ([held(NOW - timedelta(hours=1), 24)], True, "1 identity(ies), first expiry in 23h00m"),
        ([], False, f"{ID}: none held"),
        ([held(NOW - timedelta(hours=1), 24, "Unavailable: CA refused")], False, "Unavailable: CA refused"),
        ([held(NOW - timedelta(hours=25), 24)], False, "expired"),
        ([held(NOW - timedelta(hours=20), 24)], False, "near expiry (4h00m left, renewal overdue)"),
        ("node/node-1 :15000/config_dump: timed out", False, "timed out"),
    ],
    ids=["a fresh certificate passes", "an identity without a certificate fails", "an unavailable certificate quotes why",
         "an expired certificate fails", "a certificate past 3/4 of its life fails", "an unreachable ztunnel fails"],
)
def test_certificate_check(certificates: Any, ok: bool, seen: str) -> None:
    r = certificate_check("node-1", certificates, [ID], NOW)
    assert r.ok is ok and seen in r.detail
    if not ok:
        assert "ambientctl cluster logs ztunnel-node-1" in r.remediation


# --- output ---------------------------------------------------------------------------------------------


def test_output_marks_each_check_and_prints_fix_under_failures() -> None:
    results = [
        CheckResult(Category.host, "running as root", True),
        CheckResult(Category.data_plane, "ztunnel-node-2 is running", False, "its process exited", "restart it"),
    ]
    lines = format_results(results)
    assert lines[:3] == ["host", "----", "✔ running as root"]
    i = lines.index("✖ ztunnel-node-2 is running")
    assert lines[i + 1 : i + 3] == ["    its process exited", "    fix: restart it"]
    assert lines[-1] == "Status check results are ✖ (1 failed)"
    assert format_results(results[:1])[-1] == "Status check results are ✔"


# --- redirection drift: the nft listing ------------------------------------------------------------------


def nft_listing(*items: dict[str, Any]) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]}


@pytest.mark.parametrize(
    ("listing", "counts"),
    [
        (nft_listing({"table": {"family": "inet", "name": "istio-ambient-nat"}},
                     {"rule": {"family": "inet", "table": "istio-ambient-nat", "chain": "c", "expr": []}},
                     {"rule": {"family": "inet", "table": "istio-ambient-nat", "chain": "c", "expr": []}},
                     {"table": {"family": "inet", "name": "istio-ambient-mangle"}}),
         {"istio-ambient-nat": 2, "istio-ambient-mangle": 0}),
        (nft_listing({"table": {"family": "ip", "name": "filter"}},
                     {"rule": {"family": "ip", "table": "filter", "chain": "in", "expr": []}}), {}),
        (nft_listing(), {}),
        (nft_listing("not an item", {"rule": "nor this"}), {}),  # type: ignore[arg-type]
    ],
    ids=["rules are counted per inet table and an empty table counts 0", "other families are not ours",
         "an empty ruleset has no tables", "malformed items are skipped"],
)
def test_ruleset_rules(listing: dict[str, Any], counts: dict[str, int]) -> None:
    assert ruleset_rules(listing) == counts


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))  # fmt: skip
def test_ruleset_rules_never_fails_on_other_json(doc: Any) -> None:
    try:
        counts = ruleset_rules(doc)
    except ValueError as e:
        assert "nftables" in str(e)
    else:
        assert all(isinstance(v, int) and v >= 0 for v in counts.values())


# --- clock skew -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamps", "ok", "seen"),
    [
        ([("stream", NOW - timedelta(minutes=3)), ("cert", NOW - timedelta(minutes=2))], True, "2 stamp(s) compared"),
        ([("stream", NOW + timedelta(seconds=4))], True, "1 stamp(s)"),
        ([("the start of ztunnel-node-1's stream", NOW + timedelta(minutes=2)), ("cert", NOW)], False,
         "the start of ztunnel-node-1's stream is 120s ahead of this machine's clock"),
        ([("a", NOW + timedelta(seconds=30)), ("b", NOW + timedelta(seconds=90))], False,
         "b is 90s ahead of this machine's clock (12:00:00Z), and 1 more stamp(s)"),
        ([("unreadable", None)], True, "0 stamp(s)"),
    ],
    ids=["stamps in the past pass", "a stamp within the tolerance passes", "a stream started in the future is named",
         "the worst of several stamps ahead is named with the count", "unreadable stamps are not compared"],
)
def test_clock_check(stamps: list[tuple[str, datetime | None]], ok: bool, seen: str) -> None:
    r = clock_check(NOW, stamps)
    assert r.ok is ok and seen in r.detail
    if not ok:
        assert "timedatectl set-ntp true" in r.remediation

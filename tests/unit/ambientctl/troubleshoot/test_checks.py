"""``ambientctl check``: each check's verdict, what it says it saw, and the remediation it prints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

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
    redirection_checks,
    registry_check,
    restart_agent_fix,
    root_check,
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
        ("node/node-1 :15015/debug/pods: ConnectionRefusedError", False, "ConnectionRefusedError",
         "ambientctl cluster logs node-agent-node-1"),
    ],
    ids=["an agent with every pod handed over passes", "an agent without its ztunnel fails",
         "a pod the agent could not capture is named with the error", "a pod not handed over is named",
         "an unreachable agent quotes the error"],
)
def test_agent_check(pods: Any, ok: bool, seen: str, fix: str) -> None:
    r = agent_check("node-1", pods)
    assert r.ok is ok and seen in r.detail and fix in r.remediation


POD = PodRedirection("shop", "a", "node-1", "enabled", "uid-a")
MISSING_RULE = {"kind": "rule-missing", "subject": "inet istio-ambient-nat/istio-output",
                "detail": "tcp dport != 15008 redirect to :15001",
                "text": "rule missing from inet istio-ambient-nat/istio-output: `tcp dport != 15008 redirect to :15001`"}
NO_IP_RULE = {"kind": "ip-rule-missing", "subject": "ip -4 rule fwmark 0x111/0xfff pref 32764 lookup 100",
              "detail": "", "text": "`ip -4 rule fwmark 0x111/0xfff pref 32764 lookup 100` is missing"}


def agent(**entry: Any) -> dict[str, Any]:
    """A node agent's /debug/pods with pod ``uid-a`` captured as ``entry`` says (no entry: not captured)."""
    captured = {"uid-a": {"pod": "shop/a", "netns": "/run/netns/p", "handed_over": True, **entry}} if entry else {}
    return {"node": "node-1", "ztunnel_connected": True, "captured": captured, "failing": {}}


RESTART = "restart the node agent on node-1"
LOGS = "read why: ambientctl cluster logs node-agent-node-1"


@pytest.mark.parametrize(
    ("pod", "view", "ok", "seen", "fix"),
    [
        (POD, agent(redirected=True, drift=[]), True, "1 pod(s), checked rule by rule by the node agents", ""),
        (POD, agent(redirected=False, drift=[MISSING_RULE]), False,
         "rule missing from inet istio-ambient-nat/istio-output: `tcp dport != 15008 redirect to :15001`", RESTART),
        (POD, agent(redirected=False, drift=[MISSING_RULE, NO_IP_RULE]), False,
         "`tcp dport != 15008 redirect to :15001`; `ip -4 rule fwmark 0x111/0xfff pref 32764 lookup 100` is missing",
         RESTART),
        (POD, agent(redirected=False, check_error="pod shop/a: netns gone"), False,
         "the node agent cannot read its netns: pod shop/a: netns gone", LOGS),
        (POD, agent(), False, "not captured by the node agent on node-1 (yet)", LOGS),
        (POD, {**agent(), "failing": {"uid-a": "nft: Operation not permitted"}}, False,
         "not captured by the node agent on node-1: nft: Operation not permitted", LOGS),
        (PodRedirection("shop", "a", "node-1", "pending", "uid-a"), agent(redirected=True, drift=[]), False,
         "ambient.istio.io/redirection is pending", LOGS),
        (PodRedirection("shop", "a", "node-1", None, "uid-a"), agent(redirected=True, drift=[]), False,
         "redirection is not set", LOGS),
        (POD, agent(), False, "not captured", LOGS),
        (POD, agent(handed_over=True), False, "does not report its rules", RESTART),
        (POD, "node/node-1 :15015/debug/pods: ConnectionRefusedError", False,
         "ConnectionRefusedError (1 pod(s) not verified: shop/a)", LOGS),
    ],
    ids=["a pod whose agent finds every rule in place passes", "a removed rule is named with its nft text and the restart",
         "every drift of a pod is listed", "a netns the agent cannot read is named with the reason",
         "a pod the agent has not captured is named", "a pod the agent fails to capture is named with the error",
         "a pending annotation is named", "a missing annotation is named", "an agent without the pod fails it",
         "an agent that does not verify rules fails closed", "an unreachable agent fails its pods with the error"],
)  # fmt: skip
def test_redirection_checks(pod: PodRedirection, view: Any, ok: bool, seen: str, fix: str) -> None:
    (r,) = redirection_checks([pod], {"node-1": view})
    assert r.ok is ok and seen in r.detail, r
    assert fix in r.remediation
    if not ok:
        assert r.category is Category.redirection and ("shop/a" in r.description or "node-1" in r.description)


def test_only_the_drifted_pod_is_named_and_the_rest_pass_silently() -> None:
    other = PodRedirection("shop", "b", "node-2", "enabled", "uid-b")
    fine = {"node": "node-2", "ztunnel_connected": True, "failing": {},
            "captured": {"uid-b": {"pod": "shop/b", "handed_over": True, "redirected": True, "drift": []}}}  # fmt: skip
    results = redirection_checks([POD, other], {"node-1": agent(redirected=False, drift=[MISSING_RULE]), "node-2": fine},
                                 {"node-1": 4242})  # fmt: skip
    (r,) = results
    assert not r.ok and r.description == "shop/a is redirected to ztunnel as the node agent on node-1 installed it"
    assert "kill 4242, then once it has exited: ambientctl cluster up" in r.remediation


def test_many_drifted_pods_are_capped_with_a_count() -> None:
    pods = [PodRedirection("shop", f"p{i}", "node-1", "enabled", f"u{i}") for i in range(5)]
    view = {"captured": {f"u{i}": {"redirected": False, "drift": [MISSING_RULE]} for i in range(5)}}
    results = redirection_checks(pods, {"node-1": view}, max_pods=2)
    assert [r.ok for r in results] == [False, False, False]
    assert results[-1].detail == "3 more pod(s) with a problem"


def test_the_restart_fix_without_a_pid_says_where_to_find_it() -> None:
    assert "stop node-agent-node-3 (its pid: ambientctl cluster status)" in restart_agent_fix("node-3")


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

"""ztunnel.redirect.apply against the real kernel: rules land in the pod netns only, re-applying is a
no-op, a failed apply leaves nothing, remove leaves nothing, check sees drift, and the installed rules
redirect traffic the way istio-cni's do (outbound -> 15001, inbound -> 15006 except 15008, mark 0x539
passes)."""

from __future__ import annotations

import socket
import struct
import subprocess

import pytest

from meshcore.aio.netns import NetnsHandle, socket_in_netns
from ztunnel.redirect import (
    ApplyFailed,
    DriftKind,
    NetnsGone,
    NftablesMissing,
    RedirectOptions,
    apply,
    check,
    remove,
    render,
)
from ztunnel.redirect.rules import MANAGED_TABLES

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def _nft(handle: NetnsHandle, *args: str) -> str:
    done = handle.run(subprocess.run, ["nft", *args], capture_output=True, text=True, check=True)
    return done.stdout


def _ip(handle: NetnsHandle, *args: str) -> str:
    done = handle.run(subprocess.run, ["ip", *args], capture_output=True, text=True, check=True)
    return done.stdout


def _our_tables(listing: str) -> set[str]:
    return {t for t in MANAGED_TABLES if f"table inet {t}" in listing}


OPTION_CASES = [
    RedirectOptions(),
    RedirectOptions(ipv6=True),
    RedirectOptions(dns_capture=True),
    RedirectOptions(ipv6=True, dns_capture=True),
    RedirectOptions(inbound_capture=False),
]
OPTION_IDS = ["defaults", "ipv6", "dns capture", "ipv6 and dns capture", "inbound capture off"]


@pytest.mark.parametrize("opts", OPTION_CASES, ids=OPTION_IDS)
def test_applied_rules_show_no_drift_and_stay_inside_the_pod(make_netns, opts) -> None:
    ns = make_netns("h9ra")
    host_before = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    ruleset = render(opts)
    apply(ns.path, ruleset)
    assert check(ns.path, ruleset) == []
    host_after = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert _our_tables(host_after) == _our_tables(host_before)


def test_applying_twice_equals_applying_once(make_netns) -> None:
    ns = make_netns("h9ra")
    ruleset = render(RedirectOptions(ipv6=True, dns_capture=True))
    with NetnsHandle.open(ns.path) as handle:
        apply(handle, ruleset)
        once = (
            _nft(handle, "list", "ruleset"),
            _ip(handle, "rule"),
            _ip(handle, "-6", "rule"),
            _ip(handle, "route", "show", "table", "100"),
        )
        apply(handle, ruleset)
        twice = (
            _nft(handle, "list", "ruleset"),
            _ip(handle, "rule"),
            _ip(handle, "-6", "rule"),
            _ip(handle, "route", "show", "table", "100"),
        )
    assert twice == once
    assert once[1].count("fwmark 0x111/0xfff lookup 100") == 1
    assert check(ns.path, ruleset) == []


def test_reapplying_narrower_options_converges(make_netns) -> None:
    ns = make_netns("h9ra")
    apply(ns.path, render(RedirectOptions(dns_capture=True)))
    narrower = render(RedirectOptions())
    apply(ns.path, narrower)
    assert check(ns.path, narrower) == []
    with NetnsHandle.open(ns.path) as handle:
        assert "istio-ambient-raw" not in _nft(handle, "list", "tables")


def test_remove_takes_away_every_table_rule_and_route_and_is_idempotent(make_netns) -> None:
    ns = make_netns("h9ra")
    ruleset = render(RedirectOptions(ipv6=True, dns_capture=True))
    apply(ns.path, ruleset)
    remove(ns.path)
    remove(ns.path)
    with NetnsHandle.open(ns.path) as handle:
        assert _our_tables(_nft(handle, "list", "tables")) == set()
        assert "lookup 100" not in _ip(handle, "rule") + _ip(handle, "-6", "rule")
        assert _ip(handle, "route", "show", "table", "100").strip() == ""
        assert _ip(handle, "-6", "route", "show", "table", "100").strip() == ""
    kinds = {d.kind for d in check(ns.path, ruleset)}
    assert kinds == {DriftKind.TABLE_MISSING, DriftKind.IP_RULE_MISSING, DriftKind.IP_ROUTE_MISSING}


@pytest.mark.parametrize(
    ("nft", "error"),
    [("/bin/false", ApplyFailed), ("/nonexistent/nft", NftablesMissing)],
    ids=[
        "nft failing rolls back the ip rules and routes",
        "nft missing says how to install it and rolls back",
    ],
)
def test_a_failed_apply_leaves_nothing_behind(make_netns, nft, error) -> None:
    ns = make_netns("h9ra")
    with pytest.raises(error) as info:
        apply(ns.path, render(RedirectOptions(ipv6=True)), nft=nft)
    if error is NftablesMissing:
        assert "apt-get install nftables" in str(info.value)
    with NetnsHandle.open(ns.path) as handle:
        assert "lookup 100" not in _ip(handle, "rule") + _ip(handle, "-6", "rule")
        assert _ip(handle, "route", "show", "table", "100").strip() == ""
        assert _our_tables(_nft(handle, "list", "tables")) == set()


def test_a_rejected_ruleset_changes_nothing_already_applied(make_netns) -> None:
    ns = make_netns("h9ra")
    good = render(RedirectOptions())
    apply(ns.path, good)
    with NetnsHandle.open(ns.path) as handle:
        before = _nft(handle, "list", "ruleset")
        # IPv6 ruleset with a route the kernel refuses once lo has IPv6 disabled: rolled back as a whole.
        handle.run(subprocess.run, ["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"], check=True)
        with pytest.raises(ApplyFailed):
            apply(handle, render(RedirectOptions(ipv6=True)))
        assert _nft(handle, "list", "ruleset") == before
        assert _ip(handle, "-6", "rule").count("lookup 100") == 0
    assert check(ns.path, good) == []


def test_a_vanished_netns_is_reported_as_gone(make_netns) -> None:
    with pytest.raises(NetnsGone):
        apply("/var/run/netns/h9-no-such-pod", render(RedirectOptions()))
    with pytest.raises(NetnsGone):
        remove("/proc/999999999/ns/net")


def test_check_reports_a_rule_and_an_ip_rule_someone_removed(make_netns) -> None:
    ns = make_netns("h9ra")
    ruleset = render(RedirectOptions())
    apply(ns.path, ruleset)
    with NetnsHandle.open(ns.path) as handle:
        _nft(handle, "flush", "chain", "inet", "istio-ambient-nat", "istio-output")
        _ip(handle, "rule", "del", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
        drift = check(handle, ruleset)
    kinds = [d.kind for d in drift]
    assert kinds.count(DriftKind.RULE_MISSING) == len(ruleset.tables[0].find_chain("istio-output").rules)
    assert DriftKind.IP_RULE_MISSING in kinds
    apply(ns.path, ruleset)
    assert check(ns.path, ruleset) == []


def _original_dst(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(addr), port


def _listen(handle: NetnsHandle, addr: str, port: int) -> socket.socket:
    sock = socket_in_netns(handle, mark=0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(8)
    sock.settimeout(5)
    return sock


def _connect(handle: NetnsHandle, addr: str, port: int, mark: int) -> socket.socket:
    sock = socket_in_netns(handle, mark=mark)
    sock.settimeout(5)
    sock.connect((addr, port))
    return sock


def test_installed_rules_redirect_traffic_like_istio_cni(make_netns, make_veth) -> None:
    pod, peer = make_netns("h9pod"), make_netns("h9peer")
    make_veth(pod, peer, "10.239.1.1/24", "10.239.1.2/24")
    apply(pod.path, render(RedirectOptions()))
    sockets: list[socket.socket] = []
    with NetnsHandle.open(pod.path) as ph, NetnsHandle.open(peer.path) as qh:
        try:
            outbound = _listen(ph, "0.0.0.0", 15001)
            inbound = _listen(ph, "0.0.0.0", 15006)
            hbone = _listen(ph, "0.0.0.0", 15008)
            app_port = _listen(ph, "0.0.0.0", 8080)
            server = _listen(qh, "10.239.1.2", 80)
            sockets += [outbound, inbound, hbone, app_port, server]

            # The app's outbound TCP is captured by 15001, which can read where it was going.
            sockets.append(_connect(ph, "10.239.1.2", 80, mark=0))
            captured, _ = outbound.accept()
            sockets.append(captured)
            assert _original_dst(captured) == ("10.239.1.2", 80)

            # ztunnel's own (marked 0x539) connection goes out untouched.
            sockets.append(_connect(ph, "10.239.1.2", 80, mark=0x539))
            direct, peer_addr = server.accept()
            sockets.append(direct)
            assert peer_addr[0] == "10.239.1.1"

            # Plaintext inbound to any port is captured by 15006 ...
            sockets.append(_connect(qh, "10.239.1.1", 8080, mark=0))
            captured_in, _ = inbound.accept()
            sockets.append(captured_in)
            assert _original_dst(captured_in) == ("10.239.1.1", 8080)

            # ... but HBONE on 15008 reaches ztunnel's listener directly.
            sockets.append(_connect(qh, "10.239.1.1", 15008, mark=0))
            tunneled, _ = hbone.accept()
            sockets.append(tunneled)
            assert _original_dst(tunneled) == ("10.239.1.1", 15008)

            # Loopback inside the pod is never captured.
            sockets.append(_connect(ph, "127.0.0.1", 8080, mark=0))
            local, _ = app_port.accept()
            sockets.append(local)
        finally:
            for s in sockets:
                s.close()

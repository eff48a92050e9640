"""The libnftables backend of ztunnel.redirect against the real kernel: a context made on a pod's netns
worker changes that pod and never the host, pods applied at once from several threads each get exactly
their own rules, re-applying is a no-op, a table someone else left is replaced, a refused ruleset leaves
nothing, and without the library the nft binary gives the same result."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshcore.aio.netns import NetnsHandle
from ztunnel.redirect import (
    ApplyFailed,
    Libnftables,
    LibnftablesUnavailable,
    NftBinary,
    RedirectOptions,
    apply,
    check,
    nft_runner,
    remove,
    render,
)
from ztunnel.redirect.rules import MANAGED_TABLES, TABLE_NAT, BaseChain, NftChain, NftTable, RuleSet

RULESET = render(RedirectOptions())


@pytest.fixture
def lib() -> Libnftables:
    try:
        return Libnftables.load()
    except LibnftablesUnavailable as e:
        pytest.skip(str(e))


def _run(handle: NetnsHandle | None, *argv: str) -> str:
    if handle is None:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return handle.run(subprocess.run, argv, capture_output=True, text=True, check=True).stdout


def _our_tables(listing: str) -> set[str]:
    return {t for t in MANAGED_TABLES if f"table inet {t}" in listing}


def test_a_context_made_on_the_pod_worker_changes_the_pod_and_not_the_host(make_netns, lib) -> None:
    ns = make_netns("h18lib")
    host_before = _run(None, "nft", "list", "tables")
    with NetnsHandle.open(ns.path) as handle:
        handle.run(lib.run, "add table inet h18-probe")
        assert "table inet h18-probe" in _run(handle, "nft", "list", "tables")
        listed = handle.run(lib.run, "list tables", json=True)
    assert '"name": "h18-probe"' in listed  # the JSON listing comes from the pod's netns too
    assert _run(None, "nft", "list", "tables") == host_before


def test_pods_changed_at_once_from_several_threads_each_get_their_own_rules(make_netns, lib) -> None:
    pods = [make_netns("h18par") for _ in range(6)]
    host_before = _run(None, "nft", "list", "tables")
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda ns: apply(ns.path, RULESET, nft=lib), pods))
        for ns in pods:
            assert check(ns.path, RULESET, nft=lib) == []
            with NetnsHandle.open(ns.path) as handle:
                assert _run(handle, "ip", "rule").count("lookup 100") == 1
        # removals (each waits in the kernel for its deleted tables) and applies, all at once
        jobs = [pool.submit(remove, ns.path, nft=lib) for ns in pods[:3]]
        jobs += [pool.submit(apply, ns.path, RULESET, nft=lib) for ns in pods[3:]]
        for job in jobs:
            job.result()
    for ns in pods[:3]:
        with NetnsHandle.open(ns.path) as handle:
            assert _our_tables(_run(handle, "nft", "list", "tables")) == set()
    for ns in pods[3:]:
        assert check(ns.path, RULESET, nft=lib) == []
    assert _our_tables(_run(None, "nft", "list", "tables")) == _our_tables(host_before)


def test_applying_twice_through_the_library_equals_once(make_netns, lib) -> None:
    ns = make_netns("h18idem")
    with NetnsHandle.open(ns.path) as handle:
        apply(handle, RULESET, nft=lib)
        once = (_run(handle, "nft", "list", "ruleset"), _run(handle, "ip", "rule"))
        apply(handle, RULESET, nft=lib)  # tables exist now: the replacing text, not the first-install one
        twice = (_run(handle, "nft", "list", "ruleset"), _run(handle, "ip", "rule"))
    assert twice == once
    assert check(ns.path, RULESET, nft=lib) == []


def test_a_managed_table_left_by_someone_else_is_replaced_not_added_to(make_netns, lib) -> None:
    ns = make_netns("h18left")
    with NetnsHandle.open(ns.path) as handle:
        _run(handle, "nft", "add table inet istio-ambient-nat; add chain inet istio-ambient-nat stray")
        _run(handle, "nft", "add table inet istio-ambient-raw")  # not wanted without DNS capture
        apply(handle, RULESET, nft=lib)
        listing = _run(handle, "nft", "list", "ruleset")
    assert "stray" not in listing and "istio-ambient-raw" not in listing
    assert check(ns.path, RULESET, nft=lib) == []


def test_a_ruleset_the_kernel_refuses_leaves_nothing_behind(make_netns, lib) -> None:
    ns = make_netns("h18bad")
    bad_chain = NftChain("bad", base=BaseChain("route", "prerouting", 0))  # route chains hook output only
    bad = RuleSet(
        tables=(NftTable(TABLE_NAT, (bad_chain,)),), ip_rules=RULESET.ip_rules, ip_routes=RULESET.ip_routes
    )
    with pytest.raises(ApplyFailed) as info:
        apply(ns.path, bad, nft=lib)
    assert "nft failed" in str(info.value) and "rolled back" in str(info.value)
    with NetnsHandle.open(ns.path) as handle:
        assert _our_tables(_run(handle, "nft", "list", "tables")) == set()
        assert "lookup 100" not in _run(handle, "ip", "rule")
        assert _run(handle, "ip", "route", "show", "table", "100").strip() == ""


def test_without_the_library_the_binary_installs_the_same_rules(make_netns, lib) -> None:
    by_library, by_binary = make_netns("h18lib"), make_netns("h18bin")
    fallback = nft_runner(None, library="libnftables-not-here.so.1")
    assert isinstance(fallback, NftBinary)
    apply(by_library.path, RULESET, nft=lib)
    apply(by_binary.path, RULESET, nft=fallback)
    assert check(by_binary.path, RULESET, nft=fallback) == []
    with NetnsHandle.open(by_library.path) as a, NetnsHandle.open(by_binary.path) as b:
        assert _run(a, "nft", "list", "ruleset") == _run(b, "nft", "list", "ruleset")
        assert _run(a, "ip", "rule") == _run(b, "ip", "rule")
        assert _run(a, "ip", "route", "show", "table", "100") == _run(
            b, "ip", "route", "show", "table", "100"
        )

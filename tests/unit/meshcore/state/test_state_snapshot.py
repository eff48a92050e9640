"""ProxyState: lookups, the policy set of a workload, immutability and copy-on-write updates."""

from __future__ import annotations

import ipaddress

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.identity import SpiffeId
from meshcore.model import Authorization, NetworkAddress, Port, Scope, Workload
from meshcore.state import ProxyState
from meshcore.testing import builders

WEB = "default/web.default.svc.cluster.local"
DB = "default/db.default.svc.cluster.local"


def _state() -> ProxyState:
    return ProxyState.of(
        builders.workload("web-1", "10.0.0.1", services={WEB: (Port(80, 8080),)}, service_account="web"),
        builders.workload("web-2", "10.0.0.2", services={WEB: (Port(80, 8081),)}, service_account="web"),
        builders.workload("db-1", "10.0.0.3", services={DB: (Port(5432),)}),
        builders.service("web", "10.96.0.1"),
        builders.service("db", "10.96.0.2"),
    )


def test_empty_state_knows_nothing_and_is_version_zero() -> None:
    s = ProxyState.empty()
    assert (s.version, len(s.workloads), len(s.services), len(s.policies)) == (0, 0, 0, 0)
    assert s.find_workload_by_addr("10.0.0.1") is None
    assert s.endpoints(WEB) == ()


def test_workload_is_found_by_uid_and_by_address() -> None:
    s = _state()
    w = s.find_workload("Kubernetes//Pod/default/web-1")
    assert w is not None and w.name == "web-1"
    assert s.find_workload_by_addr("10.0.0.1") is w
    assert s.find_workload_by_addr(ipaddress.ip_address("10.0.0.1")) is w


@pytest.mark.parametrize(
    "ip",
    ["10.0.0.1", ipaddress.ip_address("10.0.0.1"), "::ffff:10.0.0.1", ipaddress.ip_address("::ffff:10.0.0.1")],
    ids=["a canonical string finds it", "an address object finds it", "an IPv4-mapped string finds it",
         "an IPv4-mapped address object finds it"],
)
def test_ipv4_workload_lookup_forms(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    found = _state().find_workload_by_addr(ip)
    assert found is not None and found.name == "web-1"


def test_address_lookup_is_per_network() -> None:
    s = ProxyState.of(builders.workload("a", "10.0.0.1", network="east"))
    assert s.find_workload_by_addr("10.0.0.1") is None
    found = s.find_workload_by_addr("10.0.0.1", network="east")
    assert found is not None and found.name == "a"


def test_service_is_found_by_key_and_by_vip() -> None:
    s = _state()
    svc = s.find_service(WEB)
    assert svc is not None and s.find_service_by_vip("10.96.0.1") is svc
    assert s.find_service_by_vip("10.96.0.1", network="other") is None


def test_destination_prefers_a_service_vip_over_a_workload() -> None:
    both = ProxyState.of(builders.workload("a", "10.0.0.9"), builders.service("s", "10.0.0.9"))
    assert both.find_destination("10.0.0.9") == builders.service("s", "10.0.0.9")
    assert _state().find_destination("10.0.0.3") == _state().find_workload("Kubernetes//Pod/default/db-1")


def test_endpoints_list_backing_workloads_with_their_ports() -> None:
    eps = _state().endpoints(WEB)
    assert [(w.name, ports) for w, ports in eps] == [("web-1", (Port(80, 8080),)), ("web-2", (Port(80, 8081),))]


def test_workloads_are_found_by_identity() -> None:
    web = SpiffeId("cluster.local", "default", "web")
    assert [w.name for w in _state().find_workloads_by_identity(web)] == ["web-1", "web-2"]
    assert _state().find_workloads_by_identity(SpiffeId("cluster.local", "x", "y")) == ()


def test_update_leaves_the_old_snapshot_untouched() -> None:
    old = _state()
    moved = msgspec.structs.replace(old.workloads["Kubernetes//Pod/default/web-1"], addresses=("10.0.9.9",), services={})
    new = old.updated(put=[moved])
    assert new.version == old.version + 1
    assert new.find_workload_by_addr("10.0.0.1") is None and new.find_workload_by_addr("10.0.9.9") == moved
    assert [w.name for w, _ in new.endpoints(WEB)] == ["web-2"]
    # the old snapshot is exactly as it was
    assert old.find_workload_by_addr("10.0.0.1") is not None
    assert [w.name for w, _ in old.endpoints(WEB)] == ["web-1", "web-2"]


def test_removal_drops_every_index_entry() -> None:
    new = _state().updated(remove_addresses=["Kubernetes//Pod/default/web-1", "default/db.default.svc.cluster.local"])
    assert new.find_workload("Kubernetes//Pod/default/web-1") is None
    assert new.find_workload_by_addr("10.0.0.1") is None
    assert [w.name for w in new.find_workloads_by_identity(SpiffeId("cluster.local", "default", "web"))] == ["web-2"]
    assert new.find_service_by_vip("10.96.0.2") is None and new.find_service(DB) is None


def test_no_change_returns_the_same_snapshot() -> None:
    s = _state()
    assert s.updated(put=[builders.service("web", "10.96.0.1")], remove_addresses=["nope"]) is s


def test_two_workloads_sharing_an_ip_the_newest_wins_and_removal_reveals_the_other() -> None:
    s = ProxyState.of(builders.workload("a", "10.0.0.1"), builders.workload("b", "10.0.0.1"))
    found = s.find_workload_by_addr("10.0.0.1")
    assert found is not None and found.name == "b"
    after = s.updated(remove_addresses=["Kubernetes//Pod/default/b"])
    found = after.find_workload_by_addr("10.0.0.1")
    assert found is not None and found.name == "a"


def test_a_workload_replaces_a_service_of_the_same_resource_name() -> None:
    svc = builders.service("s", "10.96.0.5")
    w = msgspec.structs.replace(builders.workload("s", "10.0.0.5"), uid=svc.key)
    s = ProxyState.of(svc).updated(put=[w])
    assert s.find_service(svc.key) is None and s.find_service_by_vip("10.96.0.5") is None
    assert s.find_workload(svc.key) == w


def test_state_cannot_be_mutated() -> None:
    s = _state()
    with pytest.raises(AttributeError):
        s.version = 7  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.workloads["x"] = s.workloads["Kubernetes//Pod/default/web-1"]  # type: ignore[index]
    with pytest.raises(TypeError):
        ProxyState()


# ------------------------------------------------------------------------------------------ policy set


def _p(name: str, namespace: str, scope: Scope) -> Authorization:
    return builders.policy(name, namespace=namespace, scope=scope)


POLICIES = ProxyState.of(
    _p("global", "istio-system", Scope.GLOBAL),
    _p("ns-default", "default", Scope.NAMESPACE),
    _p("ns-other", "other", Scope.NAMESPACE),
    _p("selector", "default", Scope.WORKLOAD_SELECTOR),
    _p("selector-unused", "default", Scope.WORKLOAD_SELECTOR),
)


@pytest.mark.parametrize(
    ("namespace", "named", "expected"),
    [
        ("default", (), ["istio-system/global", "default/ns-default"]),
        ("other", (), ["istio-system/global", "other/ns-other"]),
        ("empty", (), ["istio-system/global"]),
        ("default", ("default/selector",), ["istio-system/global", "default/ns-default", "default/selector"]),
        ("default", ("default/missing", "default/selector"), ["istio-system/global", "default/ns-default", "default/selector"]),
        ("default", ("default/ns-default",), ["istio-system/global", "default/ns-default"]),
    ],
    ids=[
        "a workload gets global and its own namespace's policies",
        "another namespace's policies do not apply",
        "a namespace without policies gets only the global ones",
        "selector policies apply only when the workload names them",
        "an unknown named policy is skipped",
        "a policy named twice appears once",
    ],
)
def test_policies_for_a_workload(namespace: str, named: tuple[str, ...], expected: list[str]) -> None:
    w = builders.workload("w", "10.0.0.1", namespace=namespace, authorization_policies=named)
    assert [p.key for p in POLICIES.policies_for(w)] == expected


def test_missing_policies_lists_unknown_names() -> None:
    w = builders.workload("w", "10.0.0.1", authorization_policies=("default/missing", "default/selector"))
    assert POLICIES.missing_policies(w) == ("default/missing",)


def test_changing_a_policy_scope_moves_it_between_sets() -> None:
    w = builders.workload("w", "10.0.0.1")
    s = POLICIES.updated(put=[_p("ns-default", "default", Scope.WORKLOAD_SELECTOR)])
    assert "default/ns-default" not in [p.key for p in s.policies_for(w)]
    s = s.updated(remove_policies=["istio-system/global"])
    assert s.policies_for(w) == ()


# ------------------------------------------------------------------------------------------ performance


def _many(n: int) -> list[Workload]:
    return [
        Workload(
            uid=f"Kubernetes//Pod/ns{i % 20}/w{i}",
            name=f"w{i}",
            namespace=f"ns{i % 20}",
            service_account=f"sa{i % 50}",
            addresses=(str(ipaddress.IPv4Address(0x0A000000 + i)),),
            services={f"ns{i % 20}/s{i % 100}": (Port(80, 8080),)},
        )
        for i in range(n)
    ]


def test_one_workload_delta_on_ten_thousand_workloads_adds_it_and_its_endpoint() -> None:
    # How much such a delta copies is asserted in test_state_editor.py; its time is measured by
    # bench/xds_apply.py, not here.
    big = ProxyState.empty().updated(put=_many(10_000))
    extra = builders.workload("extra", "10.200.0.1", services={"ns1/s1": (Port(80, 8080),)})
    new = big.updated(put=[extra])
    assert len(new.workloads) == 10_001 and len(new.endpoints("ns1/s1")) == 101
    assert len(big.workloads) == 10_000 and len(big.endpoints("ns1/s1")) == 100


def test_vip_index_covers_every_service_address() -> None:
    svc = builders.service("dual", "10.96.0.9")
    svc = msgspec.structs.replace(svc, addresses=(*svc.addresses, NetworkAddress("fd00::9")))
    s = ProxyState.of(svc)
    assert s.find_service_by_vip("fd00::9") is s.find_service_by_vip("10.96.0.9") is not None


# ------------------------------------------------------------------------------ copy-on-write consistency

_IPS = [f"10.0.0.{i}" for i in range(1, 5)]
_SVCS = ["default/a", "default/b", "other/c"]
_SAS = ["sa1", "sa2"]

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.builds(
                lambda n, ip, sa, svcs: builders.workload(
                    f"w{n}", ip, service_account=sa, services={k: (Port(80),) for k in svcs}
                ),
                st.integers(0, 5),
                st.sampled_from(_IPS),
                st.sampled_from(_SAS),
                st.lists(st.sampled_from(_SVCS), unique=True, max_size=2),
            ),
        ),
        st.tuples(st.just("remove"), st.integers(0, 6).map(lambda n: f"Kubernetes//Pod/default/w{n}")),
    ),
    max_size=12,
)


def _expected_views(workloads: dict[str, Workload]) -> tuple[object, ...]:
    """What every index must say, computed naively from the workloads alone."""
    by_addr = {ip: {u for u, w in workloads.items() if ip in w.addresses} for ip in _IPS}
    eps = {k: {u for u, w in workloads.items() if k in w.services} for k in _SVCS}
    by_sa = {sa: {u for u, w in workloads.items() if w.service_account == sa} for sa in _SAS}
    return by_addr, eps, by_sa


def _actual_views(s: ProxyState) -> tuple[object, ...]:
    by_addr = {}
    for ip in _IPS:
        found = s.find_workload_by_addr(ip)
        holders = {u for u, w in s.workloads.items() if ip in w.addresses}
        assert (found is None) == (not holders) and (found is None or found.uid in holders)
        by_addr[ip] = holders
    eps = {k: {w.uid for w, _ in s.endpoints(k)} for k in _SVCS}
    by_sa = {sa: {w.uid for w in s.find_workloads_by_identity(SpiffeId("cluster.local", "default", sa))} for sa in _SAS}
    return by_addr, eps, by_sa


@given(batches=st.lists(_ops, min_size=1, max_size=5))
def test_indexes_stay_consistent_and_old_snapshots_never_change(batches: list[list[tuple[str, object]]]) -> None:
    state = ProxyState.empty()
    history: list[tuple[ProxyState, dict[str, Workload], tuple[object, ...]]] = []
    model: dict[str, Workload] = {}
    for batch in batches:
        puts = [w for op, w in batch if op == "put"]
        removes = [n for op, n in batch if op == "remove"]
        state = state.updated(put=puts, remove_addresses=removes)  # type: ignore[arg-type]
        for w in puts:
            model[w.uid] = w  # type: ignore[union-attr]
        for n in removes:
            model.pop(n, None)  # type: ignore[arg-type]
        assert dict(state.workloads) == model
        assert _actual_views(state) == _expected_views(model)
        history.append((state, dict(model), _expected_views(model)))
    for snapshot, workloads, views in history:
        assert dict(snapshot.workloads) == workloads
        assert _actual_views(snapshot) == views

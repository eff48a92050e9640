"""StateEditor and DeltaApplier: a change applied in steps equals the same change applied at once, and a
one-workload delta shares everything but the entries it touches with the state before it."""

from __future__ import annotations

import ipaddress

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.identity import SpiffeId
from meshcore.model import Port, Workload
from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, address_to_proto, resource_name
from meshcore.proto import workload_pb2
from meshcore.state import DeltaApplier, ProxyState, UnsupportedTypeUrl, apply_delta
from meshcore.testing import builders

BAD = workload_pb2.Address(workload=workload_pb2.Workload(uid="bad", name="bad", namespace="Not_A_Name")).SerializeToString()


def _wire(models: list[Workload]) -> dict[str, bytes]:
    return {resource_name(m): address_to_proto(m).SerializeToString() for m in models}


_workloads = st.builds(
    lambda n, ip, svcs: builders.workload(f"w{n}", f"10.0.0.{ip}", services={k: (Port(80),) for k in svcs}),
    st.integers(0, 30),
    st.integers(1, 5),
    st.lists(st.sampled_from(["default/a", "default/b"]), unique=True, max_size=2),
)


@settings(deadline=None, max_examples=60)
@given(
    before=st.lists(_workloads, max_size=10),
    updates=st.lists(_workloads, max_size=40),
    with_bad=st.booleans(),
    removals=st.lists(st.integers(0, 30).map(lambda n: f"Kubernetes//Pod/default/w{n}"), max_size=5),
    budget=st.integers(1, 7),
)
def test_applying_in_steps_equals_applying_at_once(
    before: list[Workload], updates: list[Workload], with_bad: bool, removals: list[str], budget: int
) -> None:
    state = ProxyState.of(*before)
    bodies = _wire(updates) | ({"bad": BAD} if with_bad else {})
    at_once, rejected_at_once = apply_delta(state, ADDRESS_TYPE_URL, bodies, removals)
    applier = DeltaApplier(state, ADDRESS_TYPE_URL, bodies, removals)
    steps = 0
    while True:
        steps += 1
        done = applier.step(budget)
        assert applier.remaining == max(0, len(bodies) - steps * budget)
        if done:
            break
    stepped, rejected_stepped = applier.finish()
    assert steps == max(1, -(-len(bodies) // budget))
    assert rejected_stepped == rejected_at_once and [r.name for r in rejected_at_once] == (["bad"] if with_bad else [])
    assert dict(stepped.workloads) == dict(at_once.workloads)
    for ip in (f"10.0.0.{i}" for i in range(1, 6)):
        assert stepped.find_workload_by_addr(ip) == at_once.find_workload_by_addr(ip)
    for key in ("default/a", "default/b"):
        assert stepped.endpoints(key) == at_once.endpoints(key)
    assert (stepped is state) == (at_once is state)


def test_an_applier_rejects_a_type_it_cannot_hold() -> None:
    with pytest.raises(UnsupportedTypeUrl):
        DeltaApplier(ProxyState.empty(), "type.googleapis.com/envoy.config.cluster.v3.Cluster", {}, ())


def test_authorization_removals_go_through_the_applier_too() -> None:
    policy = builders.policy("p")
    state = ProxyState.of(policy)
    after, rejected = DeltaApplier(state, AUTHORIZATION_TYPE_URL, {}, [policy.key]).finish()
    assert rejected == [] and after.policies == {} and after.version == state.version + 1


@pytest.mark.parametrize(
    "base",
    [ProxyState.empty(), ProxyState.of(builders.workload("b", "10.0.0.2"))],
    ids=["an editor of the empty state", "an editor of a populated state"],
)
def test_an_editor_is_done_once_finished(base: ProxyState) -> None:
    editor = base.edit()
    editor.put(builders.workload("a", "10.0.0.1"))
    state = editor.finish()
    assert state.version == base.version + 1 and state.find_workload_by_addr("10.0.0.1") is not None
    for late_use in (
        editor.finish,
        lambda: editor.put(builders.workload("c", "10.0.0.3")),
        lambda: editor.remove_address("Kubernetes//Pod/default/a"),
        lambda: editor.remove_policy("default/p"),
    ):
        with pytest.raises(RuntimeError, match="already called"):
            late_use()
    assert state.find_workload_by_addr("10.0.0.1") is not None and state.find_workload_by_addr("10.0.0.3") is None


def test_an_editor_that_changed_nothing_returns_the_state_it_started_from() -> None:
    state = ProxyState.of(builders.workload("a", "10.0.0.1"))
    editor = state.edit()
    editor.put(builders.workload("a", "10.0.0.1"))
    editor.remove_address("never-heard-of-it")
    assert editor.finish() is state


def _many(n: int) -> list[Workload]:
    return [
        builders.workload(
            f"w{i}",
            str(ipaddress.IPv4Address(0x0A000000 + i)),
            namespace=f"ns{i % 20}",
            service_account=f"sa{i % 50}",
            services={f"ns{i % 20}/s{i % 100}": (Port(80, 8080),)},
        )
        for i in range(n)
    ]


def test_a_one_workload_change_copies_one_shard_per_touched_index() -> None:
    workloads = _many(10_000)
    big = ProxyState.of(*workloads)
    changed = msgspec.structs.replace(workloads[42], canonical_revision="v2")
    new = big.updated(put=[changed])
    assert new.find_workload(changed.uid) == changed and big.find_workload(changed.uid) == workloads[42]
    for index in ("_workloads", "_wl_by_addr", "_endpoints", "_by_identity", "_services", "_svc_by_vip"):
        old_shards, new_shards = getattr(big, index)._shards, getattr(new, index)._shards
        copied = sum(a is not b for a, b in zip(old_shards, new_shards, strict=True))
        assert copied <= 1, f"{index}: {copied} of {len(old_shards)} shards copied"


_IPS = [f"10.0.0.{i}" for i in range(1, 4)]
_SVC_KEYS = ["default/a", "default/b"]
_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("workload"),
            st.builds(
                lambda n, ip, sa, svcs: builders.workload(
                    f"w{n}", ip, service_account=sa, services={k: (Port(80),) for k in svcs}
                ),
                st.integers(0, 6),
                st.sampled_from(_IPS),
                st.sampled_from(["sa1", "sa2"]),
                st.lists(st.sampled_from(_SVC_KEYS), unique=True, max_size=2),
            ),
        ),
        # a service named like a workload uid, or a VIP shared by several services
        st.tuples(
            st.just("service"),
            st.builds(
                lambda n, ip: builders.service(f"s{n}", ip),
                st.integers(0, 3),
                st.sampled_from(["10.96.0.1", "10.96.0.2"]),
            ),
        ),
        st.tuples(st.just("remove"), st.integers(0, 6).map(lambda n: f"Kubernetes//Pod/default/w{n}")),
        st.tuples(st.just("remove"), st.integers(0, 3).map(lambda n: f"default/s{n}.default.svc.cluster.local")),
    ),
    max_size=25,
)


def _views(s: ProxyState) -> tuple[object, ...]:
    """Everything a reader can see, in the order it sees it (the newest holder of an address wins)."""
    return (
        dict(s.workloads),
        dict(s.services),
        [s.find_workload_by_addr(ip) for ip in _IPS],
        [s.find_service_by_vip(ip) for ip in ("10.96.0.1", "10.96.0.2")],
        [s.endpoints(k) for k in _SVC_KEYS],
        [s.find_workloads_by_identity(SpiffeId("cluster.local", "default", sa)) for sa in ("sa1", "sa2")],
    )


@settings(deadline=None, max_examples=150)
@given(ops=_ops)
def test_a_fresh_state_indexes_in_one_pass_exactly_as_edit_by_edit(ops: list[tuple[str, object]]) -> None:
    unrelated = builders.policy("unrelated")  # makes the second base non-empty, so it edits index by index

    def run(base: ProxyState) -> ProxyState:
        editor = base.edit()
        for op, arg in ops:
            if op == "remove":
                editor.remove_address(arg)  # type: ignore[arg-type]
            else:
                editor.put(arg)  # type: ignore[arg-type]
        return editor.finish()

    fresh, incremental = run(ProxyState.empty()), run(ProxyState.of(unrelated))
    assert _views(fresh) == _views(incremental)

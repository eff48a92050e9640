"""Pod reservation (``cluster.reserve_pod``): the address and names a pod gets before its sandbox is
built outside the state lock. No address is ever handed out twice, also to starts running at once, nor
while the pod that held it is terminating (``Cluster.remove_pod`` keeps its record until it is gone)."""

from __future__ import annotations

import threading
from pathlib import Path

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given, settings

from ambientctl.cluster.cluster import _ThreadedStateFile, reserve_pod
from ambientctl.cluster.errors import AddressExhausted, NameCollision, PodTerminating
from ambientctl.cluster.plan import build_layout
from ambientctl.cluster.spec import ClusterSpec, PodSpec
from ambientctl.cluster.state import ClusterState, object_key

SPEC = ClusterSpec(nodes=2, prefix="am-")
LAYOUT = build_layout(SPEC)
NODE1, NODE2 = LAYOUT.nodes
EMPTY = ClusterState(phase="up", spec=SPEC)


def pod(name: str, node: str = "node-1", namespace: str = "default") -> PodSpec:
    return PodSpec(name, namespace, node)


def reserve(state: ClusterState, name: str, node: str = "node-1") -> tuple[ClusterState, str]:
    layout_node = LAYOUT.find_node(node)
    assert layout_node is not None
    state, record = reserve_pod(state, LAYOUT, layout_node, pod(name, node))
    return state, record.ip


def without(state: ClusterState, name: str) -> ClusterState:
    key = object_key("default", name)
    return ClusterState(
        phase=state.phase, spec=state.spec, pods={k: p for k, p in state.pods.items() if k != key}
    )


def test_a_reservation_is_recorded_without_a_process_at_the_lowest_free_address() -> None:
    state, record = reserve_pod(EMPTY, LAYOUT, NODE1, pod("web"))
    assert state.pods == {"default/web": record}
    assert (record.ip, record.process, record.node_ip) == ("10.244.1.2", None, NODE1.ip)


def test_pods_reserved_one_after_another_get_different_addresses_before_any_has_started() -> None:
    state = EMPTY
    ips = []
    for i in range(5):
        state, ip = reserve(state, f"p{i}")
        ips.append(ip)
    assert ips == ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"]


def test_an_address_comes_free_when_its_pods_record_goes() -> None:
    state, _ = reserve(EMPTY, "a")
    state, _ = reserve(state, "b")
    state, _ = reserve(without(state, "a"), "c")
    assert state.pods["default/c"].ip == "10.244.1.2"


def terminating(state: ClusterState, name: str) -> ClusterState:
    """``state`` with the pod marked as ``Cluster.remove_pod`` marks it before it stops."""
    key = object_key("default", name)
    marked = msgspec.structs.replace(state.pods[key], terminating=True)
    return msgspec.structs.replace(state, pods={**state.pods, key: marked})


@pytest.mark.parametrize(
    ("steps", "reserved", "expected_ip"),
    [
        pytest.param(
            ["+a", "+b", "~a"], "c", "10.244.1.4", id="a terminating pod keeps its address from a new pod"
        ),
        pytest.param(
            ["+a", "~a", "-a"],
            "c",
            "10.244.1.2",
            id="the address comes free once the terminating pod is gone",
        ),
        pytest.param(
            ["+a", "+b", "~a", "~b"],
            "c",
            "10.244.1.4",
            id="several terminating pods keep all their addresses",
        ),
        pytest.param(
            ["+a", "~a", "+b", "-a"],
            "c",
            "10.244.1.2",
            id="a pod reserved after another is gone reuses its address",
        ),
    ],
)
def test_terminating_pods_hold_their_address_until_their_record_goes(
    steps: list[str], reserved: str, expected_ip: str
) -> None:
    state = EMPTY
    for step in steps:
        op, name = step[0], step[1:]
        if op == "+":
            state, _ = reserve(state, name)
        elif op == "~":
            state = terminating(state, name)
        else:
            state = without(state, name)
    state, ip = reserve(state, reserved)
    assert ip == expected_ip
    ips = [p.ip for p in state.pods.values()]
    assert len(ips) == len(set(ips))


def test_a_pod_cannot_be_made_again_under_its_name_while_it_is_terminating() -> None:
    state, _ = reserve(EMPTY, "web")
    with pytest.raises(PodTerminating, match="default/web is still terminating"):
        reserve(terminating(state, "web"), "web")


def test_each_node_hands_out_addresses_of_its_own_range() -> None:
    state, one = reserve(EMPTY, "a", "node-1")
    state, two = reserve(state, "b", "node-2")
    assert (one, two) == ("10.244.1.2", "10.244.2.2")


def test_a_pod_made_afresh_under_its_own_name_does_not_count_its_old_record_as_taken() -> None:
    state, first = reserve(EMPTY, "a")
    state, again = reserve(state, "a")
    assert first == again and list(state.pods) == ["default/a"]


def test_a_full_node_refuses_the_next_pod_naming_its_range() -> None:
    small = ClusterSpec(nodes=1, prefix="am-")
    layout = build_layout(small)
    (node,) = layout.nodes
    state = ClusterState(phase="up", spec=small)
    for i in range(253):  # .2 to .254: .1 is the gateway
        state, _ = reserve_pod(state, layout, node, pod(f"p{i}"))
    with pytest.raises(AddressExhausted, match=node.pod_cidr):
        reserve_pod(state, layout, node, pod("one-too-many"))


def test_a_pod_whose_netns_name_another_pod_holds_is_refused() -> None:
    state, record = reserve_pod(EMPTY, LAYOUT, NODE1, pod("web"))
    # Another key whose record took the same names (as a hand-edited or older state could have).
    clash = ClusterState(phase="up", spec=SPEC, pods={"other/x": record})
    with pytest.raises(NameCollision, match="pod other/x"):
        reserve_pod(clash, LAYOUT, NODE1, pod("web"))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "terminate", "remove"]),
            st.integers(0, 9),
            st.sampled_from(["node-1", "node-2"]),
        ),
        max_size=60,
    )
)
def test_no_two_recorded_pods_ever_hold_one_address(ops: list[tuple[str, int, str]]) -> None:
    state = EMPTY
    for op, n, node in ops:
        name = f"p{n}"
        present = object_key("default", name) in state.pods
        if op == "add" and not present:
            state, _ = reserve(state, name, node)
        elif op == "terminate" and present:
            state = terminating(state, name)
        elif op == "remove":
            state = without(state, name)
        ips = [p.ip for p in state.pods.values()]
        assert len(ips) == len(set(ips))


def test_threads_reserving_at_once_under_the_state_lock_never_share_an_address(tmp_path: Path) -> None:
    state_file = _ThreadedStateFile(tmp_path)
    state_file.save(EMPTY)
    got: list[str] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            with state_file.lock():
                state = state_file.load()
                assert state is not None
                state, ip = reserve(state, f"p{i}", "node-1" if i % 2 else "node-2")
                state_file.save(state)
            got.append(ip)
        except BaseException as e:  # handed to the test's thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    final = state_file.load()
    assert final is not None
    assert len(final.pods) == 24
    assert sorted(got) == sorted(p.ip for p in final.pods.values())
    assert len(set(got)) == 24

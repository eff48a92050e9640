"""Pure decisions of in-pod mode: which xDS workload a handed-over pod is, which pods a snapshot drops,
reconnect delays, where a captured connection was going (and when it is a self-call), SO_ORIGINAL_DST
decoding, which wildcard addresses a pod listens on, and the INPOD_UDS setting."""

from __future__ import annotations

import socket
import struct

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.state import ProxyState
from meshcore.testing.builders import workload
from ztunnel.config import DEFAULT_INPOD_UDS, ConfigError, ProxyMode, parse_config
from ztunnel.inpod.manager import Backoff, find_pod_workload, pods_left_out
from ztunnel.inpod.outbound_capture import capture_destination
from ztunnel.inpod.pod import WAITING_FOR_XDS, listen_hosts
from ztunnel.inpod.protocol import WorkloadInfo
from ztunnel.inpod.sockets import parse_original_dst
from ztunnel.proxy.errors import SelfCall
from ztunnel.proxy.routing import SockAddr

WEB = workload("web", "10.1.0.5", namespace="shop", service_account="web", node="node-1")
INFO = WorkloadInfo("web", "shop", "web")


def _other_node_twin():
    return msgspec.structs.replace(WEB, uid="other-cluster//Pod/shop/web", node="node-2", addresses=("10.2.0.5",))


MATCH_CASES = [
    (ProxyState.of(WEB), "Kubernetes//Pod/shop/web", WorkloadInfo("x", "y", "z"), WEB, None),
    (ProxyState.of(WEB), "0c1d-k8s-uid", INFO, WEB, None),
    (ProxyState.of(WEB), "0c1d-k8s-uid", WorkloadInfo("web", "shop", "other-sa"), None, WAITING_FOR_XDS),
    (ProxyState.empty(), "0c1d-k8s-uid", INFO, None, WAITING_FOR_XDS),
    (ProxyState.of(WEB, _other_node_twin()), "0c1d-k8s-uid", INFO, WEB, None),
]
MATCH_IDS = [
    "an xDS uid equal to the pod uid wins whatever the names",
    "otherwise equal name, namespace and service account match (Istio's rule)",
    "a different service account is not the same pod",
    "a pod xDS does not know yet has no workload and waits",
    "two workloads with the pod's names: the one on this node",
]


@pytest.mark.parametrize(("state", "uid", "info", "expected", "problem"), MATCH_CASES, ids=MATCH_IDS)
def test_find_pod_workload(state, uid, info, expected, problem) -> None:
    match = find_pod_workload(state, uid, info, node="node-1")
    assert match.workload == expected
    assert match.problem == problem


def test_two_matching_workloads_on_other_nodes_are_ambiguous_and_named() -> None:
    twin = _other_node_twin()
    match = find_pod_workload(ProxyState.of(WEB, twin), "k8s-uid", INFO, node="node-9")
    assert match.workload is None
    assert match.problem is not None and "2 workloads" in match.problem and twin.uid in match.problem


@pytest.mark.parametrize(
    ("served", "snapshot", "removed"),
    [
        ({"a", "b"}, frozenset({"a", "b"}), []),
        ({"a", "b"}, frozenset({"a"}), ["b"]),
        ({"a"}, frozenset({"a", "c"}), []),
        ({"b", "a"}, frozenset(), ["a", "b"]),
    ],
    ids=[
        "every served pod in the snapshot stays",
        "a served pod missing from the snapshot is removed",
        "a snapshot pod not served yet removes nothing",
        "an empty snapshot removes every pod",
    ],
)
def test_pods_left_out_of_a_snapshot(served, snapshot, removed) -> None:
    assert pods_left_out(served, snapshot) == removed


def test_reconnect_backoff_doubles_from_10ms_to_15s_and_resets() -> None:
    backoff = Backoff()
    delays = [backoff.next() for _ in range(13)]
    assert delays[:3] == [0.01, 0.02, 0.04]
    assert delays[-1] == 15.0 and max(delays) == 15.0
    backoff.reset()
    assert backoff.next() == 0.01


LISTENER = SockAddr("127.0.0.1", 15001)
POD_IPS = ("10.1.0.5",)

CAPTURE_CASES = [
    (SockAddr("10.1.0.9", 8080), SockAddr("10.1.0.9", 8080)),
    (SockAddr("10.96.0.10", 80), SockAddr("10.96.0.10", 80)),
    (SockAddr("10.1.0.9", 15008), SockAddr("10.1.0.9", 15008)),
    (SockAddr("10.1.0.5", 8080), SockAddr("10.1.0.5", 8080)),
    (None, SelfCall),
    (LISTENER, SelfCall),
    (SockAddr("10.1.0.5", 15008), SelfCall),
    (SockAddr("10.1.0.5", 15006), SelfCall),
    (SockAddr("127.0.0.1", 15006), SelfCall),
    (SockAddr("127.0.0.6", 15080), SelfCall),
]
CAPTURE_IDS = [
    "another pod's port is where the connection goes",
    "a service VIP is where the connection goes",
    "another pod's 15008 is passed on (its ztunnel refuses it)",
    "this pod's own app port is passed on",
    "a connection that was not redirected dialled 15001 itself: self-call",
    "an original destination equal to the listener is a self-call",
    "this pod's 15008 is a self-call",
    "this pod's 15006 is a self-call",
    "loopback 15006 is a self-call",
    "loopback 15080 is a self-call",
]


@pytest.mark.parametrize(("original", "expected"), CAPTURE_CASES, ids=CAPTURE_IDS)
def test_capture_destination(original, expected) -> None:
    if expected is SelfCall:
        with pytest.raises(SelfCall) as info:
            capture_destination(original, LISTENER, POD_IPS)
        assert info.value.reason == "SelfCall"
    else:
        assert capture_destination(original, LISTENER, POD_IPS) == expected


def _sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", port, socket.inet_aton(ip)) + b"\0" * 8


def _sockaddr_in6(ip: str, port: int) -> bytes:
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI16sI", port, 0, socket.inet_pton(socket.AF_INET6, ip), 0)
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_sockaddr_in("10.96.0.10", 80), SockAddr("10.96.0.10", 80)),
        (_sockaddr_in6("fd00::5", 8443), SockAddr("fd00::5", 8443)),
        (_sockaddr_in6("::ffff:10.1.0.9", 8080), SockAddr("10.1.0.9", 8080)),
    ],
    ids=["an IPv4 sockaddr_in", "an IPv6 sockaddr_in6", "a v4-mapped IPv6 address reads as IPv4"],
)
def test_parse_original_dst(raw, expected) -> None:
    assert parse_original_dst(raw) == expected


@given(st.binary(max_size=40))
def test_parse_original_dst_never_raises_anything_but_value_error(raw: bytes) -> None:
    try:
        addr = parse_original_dst(raw)
    except ValueError:
        return
    assert 0 <= addr.port <= 65535


@pytest.mark.parametrize(
    ("addresses", "hosts"),
    [(("10.1.0.5",), ("0.0.0.0",)), (("10.1.0.5", "fd00::5"), ("0.0.0.0", "::"))],
    ids=["an IPv4 pod listens on 0.0.0.0", "a dual-stack pod listens on 0.0.0.0 and ::"],
)
def test_listen_hosts(addresses, hosts) -> None:
    assert listen_hosts(msgspec.structs.replace(WEB, addresses=addresses)) == hosts


BASE_ENV = {"NODE_NAME": "node-1", "LOCAL_XDS_PATH": "/dev/null", "FAKE_CA": "true", "PROXY_MODE": "shared"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, DEFAULT_INPOD_UDS),
        ({"INPOD_UDS": "/run/cni/zds.sock"}, "/run/cni/zds.sock"),
    ],
    ids=["the node agent's socket defaults to Istio's path", "INPOD_UDS names another socket"],
)
def test_inpod_uds_setting(extra, expected) -> None:
    config = parse_config({**BASE_ENV, **extra})
    assert config.proxy_mode is ProxyMode.SHARED and config.inpod_uds == expected


@pytest.mark.parametrize(
    "value",
    ["", "/tmp/" + "x" * 120],
    ids=["an empty socket path is refused", "a path longer than a unix socket allows is refused"],
)
def test_bad_inpod_uds_names_the_variable(value) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE_ENV, "INPOD_UDS": value})
    assert info.value.variable == "INPOD_UDS"

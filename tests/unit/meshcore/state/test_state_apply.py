"""apply_delta: decode, validate and apply one delta; a bad resource is rejected alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from meshcore.model import Authorization, Service, Workload
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    address_to_proto,
    authorization_to_proto,
    resource_name,
)
from meshcore.proto import workload_pb2
from meshcore.state import ProxyState, Rejection, UnsupportedTypeUrl, apply_delta
from meshcore.testing import builders

A = builders.workload("a", "10.0.0.1")
A2 = builders.workload("a", "10.0.0.11")
B = builders.workload("b", "10.0.0.2")
SVC = builders.service("s", "10.96.0.1")
POL = builders.policy("p")


def wire(model: Workload | Service | Authorization) -> bytes:
    if isinstance(model, Authorization):
        return authorization_to_proto(model).SerializeToString()
    return address_to_proto(model).SerializeToString()


def named(*models: Workload | Service | Authorization) -> dict[str, bytes]:
    return {resource_name(m): wire(m) for m in models}


LEGACY = workload_pb2.Address(
    workload=workload_pb2.Workload(uid="u-legacy", name="l", namespace="ns", tunnel_protocol=2)
).SerializeToString()


@dataclass
class Case:
    before: tuple[Workload | Service | Authorization, ...]
    type_url: str
    updates: dict[str, bytes]
    removals: list[str] = field(default_factory=list)
    # expected outcome
    workloads: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)  # name -> substring of the reason


CASES = [
    Case((), ADDRESS_TYPE_URL, named(A, SVC), workloads={A.uid}, services={SVC.key}),
    Case((A,), ADDRESS_TYPE_URL, named(A2), workloads={A.uid}),
    Case((A, SVC), ADDRESS_TYPE_URL, {}, [A.uid, SVC.key], workloads=set(), services=set()),
    Case((A,), ADDRESS_TYPE_URL, {}, ["never-heard-of-it"], workloads={A.uid}),
    Case(
        (),
        ADDRESS_TYPE_URL,
        {**named(A), "u-legacy": LEGACY},
        workloads={A.uid},
        rejected={"u-legacy": "unsupported tunnel protocol"},
    ),
    Case((A,), ADDRESS_TYPE_URL, {A.uid: b"\xff\xff\xff"}, workloads={A.uid}, rejected={A.uid: "cannot decode"}),
    Case((), ADDRESS_TYPE_URL, {"wrong-name": wire(B)}, rejected={"wrong-name": "does not match"}),
    Case(
        (),
        ADDRESS_TYPE_URL,
        {"x": workload_pb2.Address().SerializeToString()},
        rejected={"x": "neither a workload nor a service"},
    ),
    Case((A,), ADDRESS_TYPE_URL, named(B), [A.uid], workloads={B.uid}),
    Case((A,), ADDRESS_TYPE_URL, named(A2), [A.uid], workloads=set()),
    Case((), AUTHORIZATION_TYPE_URL, named(POL), policies={POL.key}),
    Case((POL, A), AUTHORIZATION_TYPE_URL, {}, [POL.key], workloads={A.uid}, policies=set()),
    Case((POL,), AUTHORIZATION_TYPE_URL, {"default/other": wire(POL)}, policies={POL.key}, rejected={"default/other": "does not match"}),
]
IDS = [
    "new workload and service are added",
    "a changed workload replaces the old one",
    "removed names disappear",
    "removing an unknown name is a no-op",
    "a legacy-mTLS workload is rejected while its neighbour applies",
    "undecodable bytes are rejected and the old value stays",
    "a resource whose name differs from its uid is rejected",
    "an empty Address is rejected",
    "updates and removals in one delta both apply",
    "a name both updated and removed ends removed, as in ztunnel",
    "a policy is added",
    "a removed policy disappears and leaves addresses alone",
    "a policy filed under another name is rejected",
]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_apply_delta(case: Case) -> None:
    before = ProxyState.of(*case.before)
    after, rejections = apply_delta(before, case.type_url, case.updates, case.removals)
    assert set(after.workloads) == case.workloads
    assert set(after.services) == case.services
    assert set(after.policies) == case.policies
    assert {r.name for r in rejections} == set(case.rejected)
    for r in rejections:
        assert case.rejected[r.name] in r.reason


def test_rejected_update_keeps_the_previous_value_unchanged() -> None:
    before = ProxyState.of(A)
    after, rejections = apply_delta(before, ADDRESS_TYPE_URL, {A.uid: b"\x0a\x01"}, [])
    assert after is before and after.find_workload(A.uid) == A
    assert [r.name for r in rejections] == [A.uid]


def test_applied_change_bumps_the_version_and_no_change_keeps_the_same_object() -> None:
    before = ProxyState.of(A)
    after, _ = apply_delta(before, ADDRESS_TYPE_URL, named(B), [])
    assert after.version == before.version + 1
    same, rejections = apply_delta(after, ADDRESS_TYPE_URL, named(B), [])
    assert same is after and rejections == []


def test_rejection_is_a_name_and_a_reason() -> None:
    _, rejections = apply_delta(ProxyState.empty(), ADDRESS_TYPE_URL, {"u-legacy": LEGACY}, [])
    assert rejections == [Rejection("u-legacy", "workload.tunnel_protocol: unsupported tunnel protocol LEGACY_ISTIO_MTLS")]


def test_unknown_type_url_is_a_caller_bug() -> None:
    with pytest.raises(UnsupportedTypeUrl, match="istio.workload.Workload"):
        apply_delta(ProxyState.empty(), "type.googleapis.com/istio.workload.Workload", {}, [])

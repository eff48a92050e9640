"""The kinds registry: a map kind applies alone, rejects bad resources alone, and focuses into bigger snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from meshcore.model import Authorization
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    address_to_proto,
    authorization_from_proto,
    authorization_to_proto,
)
from meshcore.proto import authorization_pb2
from meshcore.state import ProxyState
from meshcore.state.kinds import EMPTY, PROXY_STATE_KINDS, focus, map_kind
from meshcore.testing import builders

POLICIES = map_kind(
    "type.googleapis.com/test.Policy",
    lambda raw: authorization_from_proto(authorization_pb2.Authorization.FromString(raw)),
    lambda a: a.key,
)
P = builders.policy("p")
Q = builders.policy("q")


def wire(a: Authorization) -> bytes:
    return authorization_to_proto(a).SerializeToString()


def apply(state, kind, updates: Mapping[str, bytes], removals=()):
    applier = kind.start(state, updates, removals)
    while not applier.step(1):
        pass
    return applier.finish()


def test_a_map_kind_applies_updates_then_removals():
    state, rejected = apply(EMPTY, POLICIES, {"default/p": wire(P), "default/q": wire(Q)})
    assert rejected == [] and dict(state) == {"default/p": P, "default/q": Q}
    state2, _ = apply(state, POLICIES, {}, ["default/q", "default/unknown"])
    assert dict(state2) == {"default/p": P}
    assert dict(state) == {"default/p": P, "default/q": Q}  # the old snapshot is untouched


def test_a_bad_resource_is_rejected_alone_and_the_previous_value_stays():
    state, _ = apply(EMPTY, POLICIES, {"default/p": wire(P)})
    state2, rejected = apply(state, POLICIES, {"default/p": b"\xff\xff garbage", "default/q": wire(Q)})
    assert [r.name for r in rejected] == ["default/p"] and "decode" in rejected[0].reason
    assert dict(state2) == {"default/p": P, "default/q": Q}
    state3, rejected = apply(state2, POLICIES, {"default/x": wire(P)})
    assert [r.name for r in rejected] == ["default/x"] and "does not match" in rejected[0].reason


def test_nothing_changed_returns_the_same_snapshot():
    state, _ = apply(EMPTY, POLICIES, {"default/p": wire(P)})
    again, rejected = apply(state, POLICIES, {"default/p": wire(P)}, ["default/missing"])
    assert again is state and rejected == []


@dataclass(frozen=True)
class Both:
    proxy: ProxyState
    policies: Mapping[str, Authorization]


def test_focused_kinds_update_their_part_of_a_bigger_snapshot():
    address = next(k for k in PROXY_STATE_KINDS if k.type_url == ADDRESS_TYPE_URL)
    kinds = {
        ADDRESS_TYPE_URL: focus(address, lambda s: s.proxy, lambda s, p: replace(s, proxy=p)),
        "policies": focus(POLICIES, lambda s: s.policies, lambda s, p: replace(s, policies=p)),
    }
    start = Both(ProxyState.empty(), EMPTY)
    wl = builders.workload("a", "10.0.0.1")
    one, _ = apply(start, kinds[ADDRESS_TYPE_URL], {wl.uid: address_to_proto(wl).SerializeToString()})
    assert one.proxy.find_workload(wl.uid) == wl and one.policies is start.policies
    two, _ = apply(one, kinds["policies"], {"default/p": wire(P)})
    assert two.proxy is one.proxy and dict(two.policies) == {"default/p": P}
    same, _ = apply(two, kinds["policies"], {"default/p": wire(P)})
    assert same is two
    assert AUTHORIZATION_TYPE_URL in {k.type_url for k in PROXY_STATE_KINDS}

"""Endpoint choice: round robin, least request (two choices), random, consistent hash, retry avoidance."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypoint.resilience.lb import Balancer, HashOn, LbKind, LbPolicy

EPS = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
RR = LbPolicy()
HASH_HEADER = LbPolicy(LbKind.CONSISTENT_HASH, HashOn(header="x-user"))


def test_round_robin_cycles_through_every_endpoint_per_key():
    lb = Balancer(random.Random(0))
    assert [lb.choose("svc", EPS, RR) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert lb.choose("other", EPS, RR) == 0  # each key has its own cursor


@pytest.mark.parametrize("policy", [
    pytest.param(RR, id="round robin"),
    pytest.param(LbPolicy(LbKind.RANDOM), id="random"),
    pytest.param(LbPolicy(LbKind.LEAST_REQUEST), id="least request"),
    pytest.param(HASH_HEADER, id="consistent hash"),
])
def test_a_retry_avoids_the_endpoint_it_already_tried_when_another_is_usable(policy):
    lb = Balancer(random.Random(3))
    for _ in range(50):
        first = lb.choose("svc", EPS, policy, hash_key="alice")
        second = lb.choose("svc", EPS, policy, hash_key="alice", avoid={EPS[first]})
        assert second != first


def test_when_every_endpoint_was_tried_they_are_used_again():
    lb = Balancer(random.Random(0))
    assert lb.choose("svc", EPS[:1], RR, avoid={EPS[0]}) == 0


def test_least_request_prefers_the_endpoint_with_fewer_requests_in_flight():
    lb = Balancer(random.Random(5))
    for _ in range(10):
        lb.started(EPS[0])
    lb.started(EPS[1])
    picks = Counter(lb.choose("svc", EPS, LbPolicy(LbKind.LEAST_REQUEST)) for _ in range(300))
    assert picks[0] == 0  # the busiest never wins a pair draw
    assert picks[2] > picks[1]  # the idle one wins every pair it is in
    for _ in range(10):
        lb.finished(EPS[0])
    assert lb.in_flight(EPS[0]) == 0


def test_random_spreads_evenly_with_a_fixed_seed():
    lb = Balancer(random.Random(11))
    picks = Counter(lb.choose("svc", EPS, LbPolicy(LbKind.RANDOM)) for _ in range(3000))
    assert all(900 < picks[i] < 1100 for i in range(3))


@given(key=st.text(min_size=1, max_size=40))
def test_consistent_hash_sends_a_key_to_the_same_endpoint_in_any_order(key):
    lb = Balancer(random.Random(0))
    a = EPS[lb.choose("svc", EPS, HASH_HEADER, hash_key=key)]
    b = tuple(reversed(EPS))[lb.choose("svc", tuple(reversed(EPS)), HASH_HEADER, hash_key=key)]
    assert a == b


def test_consistent_hash_moves_only_the_keys_of_an_endpoint_that_left():
    lb = Balancer(random.Random(0))
    keys = [f"user-{i}" for i in range(500)]
    before = {k: EPS[lb.choose("svc", EPS, HASH_HEADER, hash_key=k)] for k in keys}
    rest = EPS[:2]
    after = {k: rest[lb.choose("svc", rest, HASH_HEADER, hash_key=k)] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == EPS[2] for k in moved)
    assert len(set(before.values())) == 3  # every endpoint owned some keys


def test_consistent_hash_without_a_key_falls_back_to_round_robin():
    lb = Balancer(random.Random(0))
    assert [lb.choose("svc", EPS, HASH_HEADER, hash_key=None) for _ in range(3)] == [0, 1, 2]


@pytest.mark.parametrize(("policy", "headers", "source_ip", "key"), [
    pytest.param(HASH_HEADER, [("x-user", "alice")], "10.0.0.9", "alice", id="the named header is the key"),
    pytest.param(HASH_HEADER, [], "10.0.0.9", None, id="no such header: no key"),
    pytest.param(LbPolicy(LbKind.CONSISTENT_HASH, HashOn(source_ip=True)), [], "10.0.0.9", "10.0.0.9",
                 id="the source IP is the key"),
    pytest.param(RR, [("x-user", "alice")], "10.0.0.9", None, id="round robin has no key"),
])
def test_hash_keys(policy, headers, source_ip, key):
    assert policy.hash_key(headers, source_ip) == key


def test_a_consistent_hash_needs_exactly_one_source():
    with pytest.raises(ValueError):
        HashOn(header="x", source_ip=True)
    with pytest.raises(ValueError):
        LbPolicy(LbKind.CONSISTENT_HASH)

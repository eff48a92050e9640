"""Token buckets with a fake clock: total, per identity, overrides; a refused request costs nothing."""

from __future__ import annotations

import pytest

from meshcore.testing.clock import FakeClock
from waypoint.resilience.ratelimit import RateLimiter, RateLimitPolicy, TokenBucket

ALICE = "spiffe://cluster.local/ns/default/sa/alice"
BOB = "spiffe://cluster.local/ns/default/sa/bob"


def _run(limiter, clock, who):
    return [None if (r := limiter.check(w, clock.monotonic())) is None else r.reason for w in who]


@pytest.mark.parametrize(("policy", "who", "expected"), [
    pytest.param(RateLimitPolicy(total=2), [ALICE, BOB, ALICE], [None, None, "total"],
                 id="a total of 2 per second refuses the third request"),
    pytest.param(RateLimitPolicy(per_identity=1), [ALICE, BOB, ALICE], [None, None, "identity"],
                 id="per identity each client has its own bucket"),
    pytest.param(RateLimitPolicy(per_identity=1, overrides={ALICE: 3}), [ALICE, ALICE, ALICE, ALICE, BOB, BOB],
                 [None, None, None, "override", None, "identity"], id="an override replaces the identity rate"),
    pytest.param(RateLimitPolicy(per_identity=1), ["", "", ALICE], [None, "identity", None],
                 id="unauthenticated clients share one bucket"),
    pytest.param(RateLimitPolicy(total=1, per_identity=5), [ALICE, BOB], [None, "total"],
                 id="the total applies on top of the identity rate"),
])
def test_limits(policy, who, expected):
    clock = FakeClock()
    limiter = RateLimiter(policy, clock.monotonic())
    assert _run(limiter, clock, who) == expected
    assert sum(limiter.limited.values()) == sum(e is not None for e in expected)


def test_a_refused_request_takes_no_token_from_the_other_bucket():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitPolicy(total=2, per_identity=1), clock.monotonic())
    assert _run(limiter, clock, [ALICE, ALICE, BOB]) == [None, "identity", None]


def test_tokens_come_back_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock.monotonic())
    for _ in range(10):
        assert bucket.has(clock.monotonic())
        bucket.take()
    assert not bucket.has(clock.monotonic())
    clock.advance(0.1)
    assert bucket.has(clock.monotonic())
    clock.advance(60)
    assert bucket.tokens <= bucket.burst  # never more than one second's worth
    bucket.refill(clock.monotonic())
    assert bucket.tokens == 10.0


def test_per_identity_buckets_are_bounded():
    clock = FakeClock()
    limiter = RateLimiter(RateLimitPolicy(per_identity=1), clock.monotonic(), max_identities=2)
    _run(limiter, clock, [ALICE, BOB, "spiffe://cluster.local/ns/x/sa/c"])
    assert _run(limiter, clock, [ALICE]) == [None]  # alice's bucket was dropped: it restarts full


def test_invalid_rates_are_refused():
    with pytest.raises(ValueError, match="positive"):
        RateLimitPolicy(total=0)

"""Admission: rate limits (429 RL), pool limits (admit / wait / 503 UO) and faults, with a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from meshcore.testing.clock import FakeClock
from waypoint.admission import Admission, Ticket
from waypoint.l7.model import LocalResponse
from waypoint.resilience.circuit import PoolLimits
from waypoint.resilience.ratelimit import RateLimitPolicy

ALICE = "spiffe://cluster.local/ns/default/sa/alice"


def _admission() -> tuple[Admission, FakeClock]:
    clock = FakeClock()
    return Admission(clock=clock.monotonic, sleep=clock.sleep), clock


def test_a_rate_limit_answers_429_rl_and_counts_per_reason():
    adm, clock = _admission()
    policy = RateLimitPolicy(total=2)
    answers = [adm.rate_limit("default/echo", policy, ALICE) for _ in range(3)]
    assert answers[:2] == [None, None]
    assert isinstance(answers[2], LocalResponse) and (answers[2].status, answers[2].response_flags) == (429, "RL")
    assert adm.counters.rate_limited == {"total": 1}
    clock.advance(0.5)
    assert adm.rate_limit("default/echo", policy, ALICE) is None  # one token back after half a second


def test_a_changed_rate_limit_starts_with_fresh_buckets():
    adm, _ = _admission()
    adm.rate_limit("default/echo", RateLimitPolicy(total=1), "")
    assert adm.rate_limit("default/echo", RateLimitPolicy(total=1), "") is not None
    assert adm.rate_limit("default/echo", RateLimitPolicy(total=5), "") is None


async def test_pool_overflow_is_503_uo_and_a_release_admits_a_waiter():
    adm, _ = _admission()
    limits = PoolLimits(max_requests=1, max_pending=1)
    first = await adm.admit("svc", limits, http1=True, wait_limit=10)
    assert isinstance(first, Ticket)
    waiting = asyncio.ensure_future(adm.admit("svc", limits, http1=True, wait_limit=10))
    await asyncio.sleep(0)
    third = await adm.admit("svc", limits, http1=True, wait_limit=10)
    assert isinstance(third, LocalResponse) and (third.status, third.response_flags) == (503, "UO")
    adm.release(first)
    adm.release(first)  # idempotent
    second = await asyncio.wait_for(waiting, 5)
    assert isinstance(second, Ticket)
    assert adm.breaker("svc", limits).counters.active == 1
    adm.release(second)
    assert adm.breaker("svc", limits).counters.active == 0


async def test_a_waiter_past_its_limit_gets_503_uo_and_gives_its_place_back():
    adm, _ = _admission()
    limits = PoolLimits(max_requests=1, max_pending=1)
    held = await adm.admit("svc", limits, http1=True, wait_limit=10)
    answer = await adm.admit("svc", limits, http1=True, wait_limit=0.01)
    assert isinstance(answer, LocalResponse) and answer.response_flags == "UO"
    assert adm.breaker("svc", limits).counters.pending == 0
    adm.release(held)  # type: ignore[arg-type]
    assert adm.breaker("svc", limits).counters.active == 0


async def test_a_cancelled_waiter_gives_its_place_back():
    adm, _ = _admission()
    limits = PoolLimits(max_requests=1)
    held = await adm.admit("svc", limits, http1=False, wait_limit=None)
    waiting = asyncio.ensure_future(adm.admit("svc", limits, http1=False, wait_limit=None))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert adm.breaker("svc", limits).counters.pending == 0
    adm.release(held)  # type: ignore[arg-type]
    assert adm.breaker("svc", limits).counters.active == 0


async def test_no_limits_admit_without_a_ticket():
    adm, _ = _admission()
    assert await adm.admit("svc", None, http1=True, wait_limit=None) is None


@pytest.mark.parametrize(("delay", "abort", "flags", "status"), [
    pytest.param(0.0, 503, "FI", 503, id="an abort answers its status flagged FI"),
    pytest.param(2.0, 0, "DI", None, id="a delay goes on afterwards flagged DI"),
    pytest.param(2.0, 500, "DI,FI", 500, id="a delay then an abort"),
])
async def test_faults(delay, abort, flags, status):
    adm, clock = _admission()
    task = asyncio.ensure_future(adm.fault(delay, abort))
    if delay:
        await clock.wait_for_sleepers(1)
        assert not task.done()
        clock.advance(delay)
    got_flags, answer = await asyncio.wait_for(task, 5)
    assert got_flags == flags
    assert (answer.status if answer else None) == status
    if answer is not None:
        assert answer.response_flags == flags and answer.body == b"fault filter abort"

"""Connection-pool limits: admit, queue, overflow (503 UO) and the counters."""

from __future__ import annotations

import pytest

from waypoint.resilience.circuit import Admission, CircuitBreaker, PoolLimits


@pytest.mark.parametrize(("limits", "http1", "admissions"), [
    pytest.param(PoolLimits(), True, ["admit"] * 5, id="no limits admit everything"),
    pytest.param(PoolLimits(max_requests=2, max_pending=0), False, ["admit", "admit", "overflow"],
                 id="http2MaxRequests 2 with no pending room overflows the third"),
    pytest.param(PoolLimits(max_connections=1, max_pending=1), True, ["admit", "queue", "overflow"],
                 id="maxConnections 1 queues one HTTP/1.1 request and overflows the next"),
    pytest.param(PoolLimits(max_connections=1, max_pending=0), False, ["admit", "admit", "admit"],
                 id="maxConnections does not bound multiplexed HTTP/2 requests"),
    pytest.param(PoolLimits(max_requests=1), True, ["admit", "queue", "queue"],
                 id="without a pending limit requests wait"),
])
def test_admission(limits, http1, admissions):
    cb = CircuitBreaker(limits)
    assert [cb.admit(http1)[0].value for _ in admissions] == admissions
    assert cb.counters.overflows == admissions.count("overflow")
    assert cb.counters.pending == admissions.count("queue")


def test_a_release_admits_the_oldest_waiter():
    cb = CircuitBreaker(PoolLimits(max_requests=1, max_pending=5))
    assert cb.admit(True)[0] is Admission.ADMIT
    _, first = cb.admit(True)
    _, second = cb.admit(True)
    assert cb.release(True) == [first]
    assert cb.counters.active == 1 and cb.counters.pending == 1
    assert cb.release(True) == [second]
    assert cb.release(True) == []
    assert cb.counters.active == 0 and cb.counters.admitted == 3


def test_a_cancelled_waiter_frees_its_pending_place():
    cb = CircuitBreaker(PoolLimits(max_requests=1, max_pending=1))
    cb.admit(True)
    _, ticket = cb.admit(True)
    assert cb.admit(True)[0] is Admission.OVERFLOW
    cb.cancel(ticket)
    assert cb.counters.pending == 0
    assert cb.admit(True)[0] is Admission.QUEUE


def test_a_new_request_does_not_jump_the_queue():
    cb = CircuitBreaker(PoolLimits(max_requests=1))
    cb.admit(False)
    _, waiting = cb.admit(False)
    assert cb.release(False) == [waiting]
    assert cb.admit(False)[0] is Admission.QUEUE


def test_invalid_limits_are_refused():
    with pytest.raises(ValueError, match="max_connections"):
        PoolLimits(max_connections=0)

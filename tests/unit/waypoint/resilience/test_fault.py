"""Fault injection: which requests are delayed (DI) or aborted (FI), by percentage with a fixed seed."""

from __future__ import annotations

import random

import pytest

from waypoint.resilience.fault import NO_FAULT, FaultPolicy, FaultVerdict, decide_fault


@pytest.mark.parametrize(("policy", "expected", "flags"), [
    pytest.param(None, NO_FAULT, "-", id="no fault policy: nothing happens"),
    pytest.param(FaultPolicy(abort_status=503), FaultVerdict(0.0, 503), "FI", id="an abort at 100% always aborts"),
    pytest.param(FaultPolicy(delay=2.0), FaultVerdict(2.0, None), "DI", id="a delay at 100% always delays"),
    pytest.param(FaultPolicy(delay=1.0, abort_status=500), FaultVerdict(1.0, 500), "DI,FI",
                 id="delay and abort both apply, delay first"),
    pytest.param(FaultPolicy(abort_status=503, abort_percent=0.0), NO_FAULT, "-", id="an abort at 0% never aborts"),
])
def test_fault_decisions(policy, expected, flags):
    verdict = decide_fault(policy, random.Random(0))
    assert verdict == expected
    assert verdict.flags == flags


@pytest.mark.parametrize("percent", [10.0, 50.0, 90.0])
def test_an_abort_percentage_is_met_within_tolerance_over_many_requests(percent):
    rng = random.Random(42)
    policy = FaultPolicy(abort_status=503, abort_percent=percent)
    n = 5000
    aborted = sum(decide_fault(policy, rng).abort_status == 503 for _ in range(n))
    assert abs(aborted / n * 100 - percent) < 3.0


@pytest.mark.parametrize("kwargs", [
    pytest.param({"abort_status": 99}, id="an abort status below 200 is refused"),
    pytest.param({"abort_status": 503, "abort_percent": 101.0}, id="a percentage over 100 is refused"),
    pytest.param({"delay": -1.0}, id="a negative delay is refused"),
])
def test_invalid_fault_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        FaultPolicy(**kwargs)

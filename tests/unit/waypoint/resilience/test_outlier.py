"""Outlier detection transitions with a fake clock: ejection, its growing duration, the percentage cap."""

from __future__ import annotations

import pytest

from meshcore.testing.clock import FakeClock
from waypoint.resilience.outlier import OutlierDetector, OutlierPolicy
from waypoint.resilience.retry import Outcome

S = Outcome.response
F = Outcome.failure
A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


def _feed(det, policy, clock, endpoint, outcomes, pool_size=3):
    return [det.record("svc", endpoint, o, policy, clock.monotonic(), pool_size) for o in outcomes]


@pytest.mark.parametrize(("policy", "outcomes", "ejected"), [
    pytest.param(OutlierPolicy(consecutive_5xx=3, max_ejection_percent=100), [S(500)] * 3, True,
                 id="three 5xx in a row eject at consecutive5xxErrors 3"),
    pytest.param(OutlierPolicy(consecutive_5xx=3, max_ejection_percent=100), [S(500), S(500), S(200), S(500)], False,
                 id="a success in between resets the count"),
    pytest.param(OutlierPolicy(consecutive_5xx=3, max_ejection_percent=100), [F("UF"), F("UC"), F("UT")], True,
                 id="connect failures resets and timeouts count as 5xx"),
    pytest.param(OutlierPolicy(consecutive_5xx=0, consecutive_gateway=2, max_ejection_percent=100),
                 [S(503), S(502)], True, id="two gateway errors eject at consecutiveGatewayErrors 2"),
    pytest.param(OutlierPolicy(consecutive_5xx=0, consecutive_gateway=2, max_ejection_percent=100),
                 [S(500), S(500), S(500)], False, id="a 500 is not a gateway error"),
    pytest.param(OutlierPolicy(consecutive_5xx=2, max_ejection_percent=100), [S(404)] * 5, False,
                 id="4xx never eject"),
])
def test_ejection_rules(policy, outcomes, ejected):
    clock, det = FakeClock(), OutlierDetector()
    _feed(det, policy, clock, A, outcomes)
    assert det.is_ejected(A, policy, clock.monotonic()) is ejected


def test_an_ejected_endpoint_gets_no_requests_until_its_time_is_up_and_longer_each_time():
    policy = OutlierPolicy(consecutive_5xx=1, base_ejection_time=30.0, interval=10.0, max_ejection_percent=100)
    clock, det = FakeClock(), OutlierDetector()
    assert _feed(det, policy, clock, A, [S(503)]) == [True]
    clock.advance(29.9)
    assert det.usable("svc", [A, B], policy, clock.monotonic()) == [1]
    clock.advance(0.1)
    assert det.usable("svc", [A, B], policy, clock.monotonic()) == [0, 1]  # 30 s = base x 1
    assert _feed(det, policy, clock, A, [S(503)]) == [True]  # ejected again at once: 60 s this time
    clock.advance(59.0)
    assert det.is_ejected(A, policy, clock.monotonic())
    clock.advance(1.0)
    assert not det.is_ejected(A, policy, clock.monotonic())
    assert det.state(A).times_ejected == 2
    clock.advance(20.0)  # two healthy intervals: the multiplier decays back to zero
    assert not det.is_ejected(A, policy, clock.monotonic())
    assert det.state(A).times_ejected == 0


def test_ejection_time_is_capped_at_the_maximum():
    policy = OutlierPolicy(consecutive_5xx=1, base_ejection_time=100.0, max_ejection_time=150.0,
                           max_ejection_percent=100)
    clock, det = FakeClock(), OutlierDetector()
    _feed(det, policy, clock, A, [S(500)])
    clock.advance(100)
    _feed(det, policy, clock, A, [S(500)])
    clock.advance(150)
    assert not det.is_ejected(A, policy, clock.monotonic())


def test_max_ejection_percent_caps_how_many_endpoints_are_ejected_at_once():
    policy = OutlierPolicy(consecutive_5xx=1, max_ejection_percent=50)
    clock, det = FakeClock(), OutlierDetector()
    ejected = [_feed(det, policy, clock, e, [S(500)], pool_size=4)[0] for e in (A, B, C)]
    assert ejected == [True, True, False]  # 50% of 4 is 2
    assert det.ejections == 2 and det.ejections_overflow == 1


def test_at_least_one_endpoint_may_be_ejected_whatever_the_percentage():
    policy = OutlierPolicy(consecutive_5xx=1, max_ejection_percent=10)
    clock, det = FakeClock(), OutlierDetector()
    assert _feed(det, policy, clock, A, [S(500)], pool_size=3) == [True]


def test_without_a_policy_nothing_is_ejected():
    clock, det = FakeClock(), OutlierDetector()
    assert _feed(det, None, clock, A, [S(500)] * 10) == [False] * 10
    assert det.usable("svc", [A], None, clock.monotonic()) == [0]


def test_invalid_outlier_policies_are_refused():
    with pytest.raises(ValueError, match="maxEjectionPercent"):
        OutlierPolicy(max_ejection_percent=150)
    with pytest.raises(ValueError, match="interval"):
        OutlierPolicy(interval=0)

"""EndpointChooser: balancing over the endpoints not ejected, alternatives for retries, ejection fed back."""

from __future__ import annotations

import random

from meshcore.testing.clock import FakeClock
from waypoint.resilience.chooser import EndpointChooser
from waypoint.resilience.lb import LbPolicy
from waypoint.resilience.outlier import OutlierPolicy
from waypoint.resilience.retry import Outcome

KEYS = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
RR = LbPolicy()
EJECT_AT_ONCE = OutlierPolicy(consecutive_5xx=1, base_ejection_time=30.0, max_ejection_percent=100)


def _chooser() -> tuple[EndpointChooser, FakeClock]:
    clock = FakeClock()
    return EndpointChooser(rng=random.Random(0), clock=clock.monotonic), clock


def test_alternatives_follow_the_chosen_endpoint():
    chooser, _ = _chooser()
    assert chooser.pick("svc", KEYS, RR, None, alternatives=2).order == (0, 1, 2)
    assert chooser.pick("svc", KEYS, RR, None, alternatives=2).order == (1, 2, 0)
    assert chooser.pick("svc", KEYS, RR, None).order == (2,)


def test_an_ejected_endpoint_is_neither_chosen_nor_an_alternative_until_its_time_is_up():
    chooser, clock = _chooser()
    assert chooser.observe("svc", KEYS[1], Outcome.response(503), EJECT_AT_ONCE, 3)
    picks = [chooser.pick("svc", KEYS, RR, EJECT_AT_ONCE, alternatives=2) for _ in range(4)]
    assert all(1 not in p.order and p.ejected == 1 for p in picks)
    clock.advance(30)
    assert any(1 in chooser.pick("svc", KEYS, RR, EJECT_AT_ONCE).order for _ in range(3))


def test_every_endpoint_ejected_leaves_no_choice():
    chooser, _ = _chooser()
    for key in KEYS:
        chooser.observe("svc", key, Outcome.failure("UF"), EJECT_AT_ONCE, 3)
    assert chooser.pick("svc", KEYS, RR, EJECT_AT_ONCE) is None
    assert chooser.pick("svc", (), RR, None) is None

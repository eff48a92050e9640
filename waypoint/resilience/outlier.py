"""Outlier detection per endpoint (DestinationRule ``trafficPolicy.outlierDetection``), Envoy's rules:

- ``consecutive_5xx``: that many 5xx in a row (a connect failure, reset or timeout counts as a 503)
  ejects the endpoint; ``consecutive_gateway``: that many 502/503/504 in a row (or failures) ejects it.
  0 disables a rule. Any other response resets the endpoint's counters.
- An ejection lasts ``base_ejection_time * times ejected`` (capped at ``max_ejection_time``); the
  endpoint gets no requests until that time is up. Its ejection count goes down by one for every full
  ``interval`` it then stays un-ejected and healthy (so a flapping endpoint is ejected longer each time).
- Never more than ``max_ejection_percent`` of a pool's endpoints are ejected at once (rounded down, but at
  least one whatever the value, as Envoy): an error that would exceed it only counts.
  Istio's ``minHealthPercent`` defaults to 0 (no panic mode): when every endpoint is ejected the pool
  has none usable (503 ``UH``).

State is per endpoint key (bounded: endpoints not seen for ``forget_after`` seconds are dropped) and per
pool (a service key, to apply the percentage). Pure: ``now`` is passed in (monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from waypoint.resilience.retry import GATEWAY_ERRORS, Outcome


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    max_ejection_time: float = 300.0

    def __post_init__(self) -> None:
        if self.consecutive_5xx < 0 or self.consecutive_gateway < 0:
            raise ValueError("outlier detection: consecutive error counts must be >= 0")
        if self.interval <= 0 or self.base_ejection_time <= 0 or self.max_ejection_time <= 0:
            raise ValueError("outlier detection: interval and ejection times must be positive")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError(f"outlier detection: maxEjectionPercent must be 0..100, got {self.max_ejection_percent}")


@dataclass(slots=True)
class EndpointHealth:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    times_ejected: int = 0
    ejected_until: float | None = None
    healthy_since: float = 0.0  # when it was last un-ejected (or first seen): the multiplier's decay start
    last_seen: float = 0.0


def _is_5xx(outcome: Outcome) -> bool:
    return bool(outcome.flag) or 500 <= outcome.status <= 599


def _is_gateway(outcome: Outcome) -> bool:
    return bool(outcome.flag) or outcome.status in GATEWAY_ERRORS


class OutlierDetector:
    """Outlier state of the endpoints of one waypoint process (see the module docstring)."""

    def __init__(self, *, forget_after: float = 3600.0) -> None:
        self._health: dict[Hashable, EndpointHealth] = {}
        self._pool_of: dict[Hashable, str] = {}
        self._forget_after = forget_after
        self.ejections = 0  # ejections made (a counter for metrics)
        self.ejections_overflow = 0  # ejections skipped by max_ejection_percent

    def _entry(self, endpoint: Hashable, now: float) -> EndpointHealth:
        health = self._health.get(endpoint)
        if health is None:
            health = self._health[endpoint] = EndpointHealth(healthy_since=now)
        health.last_seen = now
        return health

    def _settle(self, health: EndpointHealth, policy: OutlierPolicy, now: float) -> None:
        """Un-eject when the time is up; decay the ejection count per healthy interval."""
        if health.ejected_until is not None:
            if now < health.ejected_until:
                return
            health.ejected_until = None
            health.healthy_since = now
        if health.times_ejected:
            intervals = int((now - health.healthy_since) // policy.interval)
            if intervals:
                health.times_ejected = max(0, health.times_ejected - intervals)
                health.healthy_since += intervals * policy.interval

    def is_ejected(self, endpoint: Hashable, policy: OutlierPolicy, now: float) -> bool:
        health = self._health.get(endpoint)
        if health is None:
            return False
        self._settle(health, policy, now)
        return health.ejected_until is not None

    def usable(self, pool: str, endpoints: Sequence[Hashable], policy: OutlierPolicy | None,
               now: float) -> list[int]:
        """Indexes of ``endpoints`` not ejected now (all of them without a policy)."""
        if policy is None:
            return list(range(len(endpoints)))
        return [i for i, e in enumerate(endpoints) if not self.is_ejected(e, policy, now)]

    def record(self, pool: str, endpoint: Hashable, outcome: Outcome, policy: OutlierPolicy | None, now: float,
               pool_size: int) -> bool:
        """Feed one attempt's outcome; returns True when it ejected ``endpoint``."""
        if policy is None:
            return False
        self._pool_of[endpoint] = pool
        health = self._entry(endpoint, now)
        self._settle(health, policy, now)
        if health.ejected_until is not None:
            return False  # a late answer from an attempt that began before the ejection
        if _is_5xx(outcome):
            health.consecutive_5xx += 1
        else:
            health.consecutive_5xx = 0
        if _is_gateway(outcome):
            health.consecutive_gateway += 1
        else:
            health.consecutive_gateway = 0
        tripped = (policy.consecutive_5xx and health.consecutive_5xx >= policy.consecutive_5xx) or (
            policy.consecutive_gateway and health.consecutive_gateway >= policy.consecutive_gateway)
        if not tripped:
            return False
        if self._ejected_in(pool, policy, now) + 1 > self._max_ejected(policy, pool_size):
            self.ejections_overflow += 1
            return False
        health.times_ejected += 1
        duration = min(policy.base_ejection_time * health.times_ejected,
                       max(policy.max_ejection_time, policy.base_ejection_time))
        health.ejected_until = now + duration
        health.consecutive_5xx = health.consecutive_gateway = 0
        self.ejections += 1
        self._forget(now)
        return True

    @staticmethod
    def _max_ejected(policy: OutlierPolicy, pool_size: int) -> int:
        return max(1, pool_size * policy.max_ejection_percent // 100)

    def _ejected_in(self, pool: str, policy: OutlierPolicy, now: float) -> int:
        return sum(1 for e, p in self._pool_of.items() if p == pool and self.is_ejected(e, policy, now))

    def _forget(self, now: float) -> None:
        stale = [e for e, h in self._health.items()
                 if h.ejected_until is None and now - h.last_seen > self._forget_after]
        for e in stale:
            del self._health[e]
            self._pool_of.pop(e, None)

    def state(self, endpoint: Hashable) -> EndpointHealth | None:
        """The endpoint's health record (for tests and the admin dump)."""
        return self._health.get(endpoint)

"""The waypoint process's endpoint-picking state: a ``Balancer`` (load-balancer cursors, in-flight
counts, hash rings), an ``OutlierDetector`` and the clock they read, behind one object.

``pick(pool, keys, lb, outlier, hash_key, alternatives)`` returns the order to try a pool's endpoints in
(``keys`` are their ``ip:port`` authorities): the balancer's choice among the endpoints not ejected, then
up to ``alternatives`` other non-ejected endpoints for retries (the ones after it, in list order), or
None when every endpoint is ejected. ``observe`` feeds the detector one attempt's outcome. A ``pool`` is
a service key, with ``/subset`` appended for a subset (balancing and ejection caps are per pool; an
endpoint's ejection counts wherever it is used). Not pure (it keeps state), but no I/O: the clock is
injected.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from waypoint.resilience.lb import Balancer, LbPolicy
from waypoint.resilience.outlier import OutlierDetector, OutlierPolicy
from waypoint.resilience.retry import Outcome


@dataclass(frozen=True, slots=True)
class Choice:
    order: tuple[int, ...]  # indexes into the keys: the endpoint to use, then alternatives for retries
    ejected: int  # endpoints left out because they are ejected


class EndpointChooser:
    def __init__(self, *, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.balancer = Balancer(rng)
        self.outlier = OutlierDetector()
        self.clock = clock

    def pick(self, pool: str, keys: Sequence[str], lb: LbPolicy, outlier: OutlierPolicy | None, *,
             hash_key: str | None = None, alternatives: int = 0) -> Choice | None:
        if not keys:
            return None
        live = self.outlier.usable(pool, keys, outlier, self.clock())
        if not live:
            return None
        candidates = [keys[i] for i in live]
        first = live[self.balancer.choose(pool, candidates, lb, hash_key=hash_key)]
        order = [first]
        if alternatives:
            at = live.index(first)
            rest = live[at + 1:] + live[:at]
            order.extend(rest[:alternatives])
        return Choice(tuple(order), len(keys) - len(live))

    def observe(self, pool: str, key: str, outcome: Outcome, outlier: OutlierPolicy | None, pool_size: int) -> bool:
        """Feed one attempt's outcome; True when it ejected the endpoint."""
        return self.outlier.record(pool, key, outcome, outlier, self.clock(), pool_size)

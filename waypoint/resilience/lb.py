"""Endpoint choice over a service's usable endpoints (DestinationRule ``trafficPolicy.loadBalancer``).

``Balancer.choose(key, endpoints, ...)`` returns the index of the endpoint for one attempt:

- ``ROUND_ROBIN``: cycles per ``key`` (a service, or service/subset);
- ``LEAST_REQUEST``: Envoy's power of two choices: two distinct endpoints drawn at random, the one with
  fewer requests in flight wins (ties: the first drawn);
- ``RANDOM``: uniform;
- ``CONSISTENT_HASH``: a hash ring (``POINTS_PER_ENDPOINT`` points per endpoint, each placed by a
  stable hash of its name): the request's hash key (a header's value or the source IP) goes to the first
  point at or after its hash. The same key reaches the same endpoint while the set is unchanged; when an
  endpoint leaves, only its keys move. No hash key (the header absent): round robin, as Envoy falls back.

``avoid``: endpoints a retry already tried; another endpoint is chosen when one is usable (the ring is
walked onward for hashing), else the avoided ones are used again. In-flight counts for least request
are kept by ``started``/``finished``. Randomness from the injected rng; no clock; no I/O.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import random
from collections import OrderedDict
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass

POINTS_PER_ENDPOINT = 160  # points each endpoint owns on a hash ring (fixed: a leaving endpoint moves only its keys)
_RING_CACHE = 64  # rings kept (one per endpoint set); a bounded LRU


class LbKind(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    CONSISTENT_HASH = "CONSISTENT_HASH"


@dataclass(frozen=True, slots=True)
class HashOn:
    """Where a consistent-hash key comes from: a request header (lowercase ``name``) or the source IP."""

    header: str | None = None
    source_ip: bool = False

    def __post_init__(self) -> None:
        if (self.header is None) == (not self.source_ip):
            raise ValueError("consistentHash needs exactly one of httpHeaderName or useSourceIp")


@dataclass(frozen=True, slots=True)
class LbPolicy:
    kind: LbKind = LbKind.ROUND_ROBIN
    hash_on: HashOn | None = None

    def __post_init__(self) -> None:
        if (self.kind is LbKind.CONSISTENT_HASH) != (self.hash_on is not None):
            raise ValueError("a consistent-hash load balancer needs hash_on, and only it takes one")

    def hash_key(self, headers: Sequence[tuple[str, str]], source_ip: str) -> str | None:
        """The request's hash key under this policy (None: the request has none)."""
        on = self.hash_on
        if on is None:
            return None
        if on.source_ip:
            return source_ip or None
        values = [v for n, v in headers if n == on.header]
        return ",".join(values) if values else None


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _Ring:
    __slots__ = ("owners", "points")

    def __init__(self, names: Sequence[str]) -> None:
        per = POINTS_PER_ENDPOINT
        pairs = sorted((stable_hash(f"{name}_{i}"), index) for index, name in enumerate(names) for i in range(per))
        self.points = [p for p, _ in pairs]
        self.owners = [o for _, o in pairs]

    def first(self, key: str, ok: Collection[int]) -> int:
        """The first endpoint index in ``ok`` in ring order from ``key``'s position."""
        start = bisect.bisect_left(self.points, stable_hash(key))
        n = len(self.owners)
        for step in range(n):
            owner = self.owners[(start + step) % n]
            if owner in ok:
                return owner
        raise AssertionError("unreachable: every endpoint owns points on the ring")


class Balancer:
    """Mutable picking state of one waypoint process (round-robin cursors, in-flight counts, rings)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._next: dict[str, int] = {}
        self._in_flight: dict[Hashable, int] = {}
        self._rings: OrderedDict[tuple[str, ...], _Ring] = OrderedDict()

    # in-flight bookkeeping (least request) -----------------------------------------------------------

    def started(self, endpoint: Hashable) -> None:
        self._in_flight[endpoint] = self._in_flight.get(endpoint, 0) + 1

    def finished(self, endpoint: Hashable) -> None:
        left = self._in_flight.get(endpoint, 0) - 1
        if left > 0:
            self._in_flight[endpoint] = left
        else:
            self._in_flight.pop(endpoint, None)

    def in_flight(self, endpoint: Hashable) -> int:
        return self._in_flight.get(endpoint, 0)

    # choice ---------------------------------------------------------------------------------------------

    def choose(self, key: str, endpoints: Sequence[Hashable], policy: LbPolicy, *, hash_key: str | None = None,
               avoid: Collection[Hashable] = ()) -> int:
        """The index into ``endpoints`` (non-empty) for one attempt (see the module docstring)."""
        n = len(endpoints)
        if n == 0:
            raise ValueError("choose() needs at least one endpoint")
        allowed = [i for i, e in enumerate(endpoints) if e not in avoid] if avoid else list(range(n))
        if not allowed:
            allowed = list(range(n))  # every endpoint was tried: use them again
        kind = policy.kind
        if kind is LbKind.CONSISTENT_HASH and hash_key is not None:
            ring = self._ring(tuple(str(e) for e in endpoints))
            return ring.first(hash_key, set(allowed))
        if kind is LbKind.RANDOM:
            return allowed[self._rng.randrange(len(allowed))]
        if kind is LbKind.LEAST_REQUEST and len(allowed) > 1:
            a, b = self._rng.sample(allowed, 2)
            return b if self.in_flight(endpoints[b]) < self.in_flight(endpoints[a]) else a
        return self._round_robin(key, n, allowed)

    def _round_robin(self, key: str, n: int, allowed: list[int]) -> int:
        start = self._next.get(key, 0) % n
        ok = set(allowed)
        for step in range(n):
            i = (start + step) % n
            if i in ok:
                self._next[key] = i + 1
                return i
        raise AssertionError("unreachable: allowed is never empty")

    def _ring(self, names: tuple[str, ...]) -> _Ring:
        ring = self._rings.get(names)
        if ring is None:
            ring = _Ring(names)
            self._rings[names] = ring
            if len(self._rings) > _RING_CACHE:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(names)
        return ring

"""Connection-pool limits per destination pool (DestinationRule ``trafficPolicy.connectionPool``):
Envoy's circuit breakers, counted per pool (a service, or a service's subset).

- ``max_requests`` (``http.http2MaxRequests``): requests in flight to the pool at once;
- ``max_connections`` (``tcp.maxConnections``): upstream connections; an HTTP/1.1 request holds one for
  its whole exchange, so at most this many HTTP/1.1 requests are active and the next ones wait;
- ``max_pending`` (``http.http1MaxPendingRequests``): requests waiting for a connection;
- ``max_requests_per_connection`` (``http.maxRequestsPerConnection``): carried to the upstream pool (a
  connection is closed after that many requests); not counted here.

``admit(protocol_is_http1)`` answers ``ADMIT`` (go on; call ``release`` when done), ``QUEUE`` (wait:
a ticket is woken by ``release``, which returns the ticket to wake) or ``OVERFLOW`` (answer 503 flag
``UO``, counted). Unset limits are unlimited (Istio's defaults are 2^32-1). Pure: the caller does the
waiting; tickets are opaque ints.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass

OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_requests: int | None = None
    max_connections: int | None = None
    max_pending: int | None = None
    max_requests_per_connection: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_connections", "max_requests_per_connection"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"connectionPool {name}: must be at least 1, got {value}")
        if self.max_pending is not None and self.max_pending < 0:
            raise ValueError(f"connectionPool max_pending: must be >= 0, got {self.max_pending}")


class Admission(enum.Enum):
    ADMIT = "admit"
    QUEUE = "queue"
    OVERFLOW = "overflow"


@dataclass(slots=True)
class PoolCounters:
    active: int = 0  # requests admitted and not released
    active_http1: int = 0  # of which HTTP/1.1 (each holds a connection)
    pending: int = 0
    overflows: int = 0  # requests answered 503 UO
    admitted: int = 0


class CircuitBreaker:
    """The limits and counters of one pool (see the module docstring)."""

    def __init__(self, limits: PoolLimits) -> None:
        self.limits = limits
        self.counters = PoolCounters()
        self._waiting: deque[int] = deque()
        self._tickets = itertools.count(1)
        self._http1_of: dict[int, bool] = {}

    def _has_room(self, http1: bool) -> bool:
        lim, c = self.limits, self.counters
        if lim.max_requests is not None and c.active >= lim.max_requests:
            return False
        return not (http1 and lim.max_connections is not None and c.active_http1 >= lim.max_connections)

    def admit(self, http1: bool) -> tuple[Admission, int]:
        """Admit, queue (with a ticket) or refuse one request."""
        c = self.counters
        if not self._waiting and self._has_room(http1):
            self._take(http1)
            return Admission.ADMIT, 0
        max_pending = self.limits.max_pending
        if max_pending is not None and c.pending >= max_pending:
            c.overflows += 1
            return Admission.OVERFLOW, 0
        ticket = next(self._tickets)
        self._waiting.append(ticket)
        self._http1_of[ticket] = http1
        c.pending += 1
        return Admission.QUEUE, ticket

    def _take(self, http1: bool) -> None:
        c = self.counters
        c.active += 1
        c.admitted += 1
        if http1:
            c.active_http1 += 1

    def release(self, http1: bool) -> list[int]:
        """One admitted request finished: the tickets now admitted (their owners go on; oldest first)."""
        c = self.counters
        c.active = max(0, c.active - 1)
        if http1:
            c.active_http1 = max(0, c.active_http1 - 1)
        return self._wake()

    def _wake(self) -> list[int]:
        c = self.counters
        woken: list[int] = []
        while self._waiting and self._has_room(self._http1_of[self._waiting[0]]):
            ticket = self._waiting.popleft()
            self._take(self._http1_of.pop(ticket))
            c.pending -= 1
            woken.append(ticket)
        return woken

    def cancel(self, ticket: int) -> list[int]:
        """A queued request gave up (its deadline passed, the client left). Returns tickets to wake."""
        if ticket in self._http1_of:
            self._waiting.remove(ticket)
            del self._http1_of[ticket]
            self.counters.pending -= 1
        return self._wake()

"""Admission at the waypoint, before a request is forwarded: local rate limits (429 ``RL``), the
connection-pool circuit breaker (503 ``UO``, or a wait for a free slot), and injected faults (delay
``DI``, abort ``FI``). The asyncio shell around ``waypoint.resilience``'s pure state machines.

One ``Admission`` per waypoint process. Its registries follow the config: a service's rate limiter and
a pool's breaker are rebuilt when their policy changes (fresh buckets/counters; requests admitted under
the old breaker release into it) and dropped past ``_MAX_ENTRIES`` (least recently used first).
Invariants: every ``Ticket`` handed out is released exactly once (``release`` is idempotent); a request
waiting for a slot gives it back if it stops waiting (timeout, cancellation).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from waypoint.l7.model import LocalResponse
from waypoint.resilience.circuit import OVERFLOW_BODY, CircuitBreaker, PoolLimits
from waypoint.resilience.circuit import Admission as Verdict
from waypoint.resilience.fault import ABORT_BODY
from waypoint.resilience.ratelimit import RATE_LIMITED_BODY, RateLimiter, RateLimitPolicy

log = structlog.get_logger("waypoint.admission")
_MAX_ENTRIES = 4096
_TEXT = (("content-type", "text/plain"),)


@dataclass(slots=True)
class Ticket:
    """A slot in a pool's circuit breaker, held for the request's lifetime."""

    breaker: CircuitBreaker
    http1: bool
    released: bool = False


@dataclass(slots=True)
class AdmissionCounters:
    rate_limited: dict[str, int] = field(default_factory=dict)  # reason (total/identity/override) -> count
    overflowed: int = 0
    queued: int = 0
    faults_aborted: int = 0
    faults_delayed: int = 0


class Admission:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._limiters: OrderedDict[str, RateLimiter] = OrderedDict()
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self.counters = AdmissionCounters()

    # rate limits -------------------------------------------------------------------------------------

    def rate_limit(self, service: str, policy: RateLimitPolicy | None, identity: str) -> LocalResponse | None:
        """None: go on; else the 429 to answer (``RL``), counted."""
        if policy is None:
            return None
        limiter = self._limiters.get(service)
        if limiter is None or limiter.policy != policy:
            limiter = self._limiters[service] = RateLimiter(policy, self._clock())
            _bound(self._limiters)
        self._limiters.move_to_end(service)
        limited = limiter.check(identity, self._clock())
        if limited is None:
            return None
        c = self.counters.rate_limited
        c[limited.reason] = c.get(limited.reason, 0) + 1
        return LocalResponse(429, RATE_LIMITED_BODY, _TEXT, response_flags="RL")

    # circuit breaking --------------------------------------------------------------------------------

    def breaker(self, pool: str, limits: PoolLimits) -> CircuitBreaker:
        breaker = self._breakers.get(pool)
        if breaker is None or breaker.limits != limits:
            breaker = self._breakers[pool] = CircuitBreaker(limits)
            _bound(self._breakers)
        self._breakers.move_to_end(pool)
        return breaker

    async def admit(self, pool: str, limits: PoolLimits | None, *, http1: bool,
                    wait_limit: float | None) -> Ticket | LocalResponse | None:
        """None (no limits), a ``Ticket`` to ``release`` when the request is done, or the 503 ``UO``
        to answer. Waits for a slot when the pool queues the request (at most ``wait_limit`` seconds, then 503 ``UO``)."""
        if limits is None:
            return None
        breaker = self.breaker(pool, limits)
        verdict, ticket_id = breaker.admit(http1)
        if verdict is Verdict.ADMIT:
            return Ticket(breaker, http1)
        if verdict is Verdict.OVERFLOW:
            return self._overflow(pool)
        self.counters.queued += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[ticket_id] = waiter
        try:
            async with asyncio.timeout(wait_limit):
                await waiter
        except TimeoutError:
            self._stop_waiting(breaker, ticket_id, waiter, http1)
            return self._overflow(pool)  # waited as long as the request may: answered 503 UO
        except BaseException:
            self._stop_waiting(breaker, ticket_id, waiter, http1)
            raise
        return Ticket(breaker, http1)

    def _stop_waiting(self, breaker: CircuitBreaker, ticket_id: int, waiter: asyncio.Future[None],
                      http1: bool) -> None:
        self._waiters.pop(ticket_id, None)
        if waiter.done() and not waiter.cancelled():
            self._release(breaker, http1)  # admitted just as it stopped waiting: give the slot back
        else:
            self._wake(breaker.cancel(ticket_id))

    def _overflow(self, pool: str) -> LocalResponse:
        self.counters.overflowed += 1
        log.debug("connection pool overflow", pool=pool)
        return LocalResponse(503, OVERFLOW_BODY, _TEXT, response_flags="UO")

    def release(self, ticket: Ticket | None) -> None:
        if ticket is None or ticket.released:
            return
        ticket.released = True
        self._release(ticket.breaker, ticket.http1)

    def _release(self, breaker: CircuitBreaker, http1: bool) -> None:
        self._wake(breaker.release(http1))

    def _wake(self, tickets: list[int]) -> None:
        for t in tickets:
            waiter = self._waiters.pop(t, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # faults --------------------------------------------------------------------------------------------

    async def fault(self, delay: float, abort: int) -> tuple[str, LocalResponse | None]:
        """Carry out a fault the route decided: sleep ``delay`` seconds (flag ``DI``), then answer
        ``abort`` (flag ``FI``) when set. Returns the flags earned and the local answer, if any."""
        flags = []
        if delay > 0:
            self.counters.faults_delayed += 1
            flags.append("DI")
            await self._sleep(delay)
        if abort:
            self.counters.faults_aborted += 1
            flags.append("FI")
            return ",".join(flags), LocalResponse(abort, ABORT_BODY, _TEXT, response_flags=",".join(flags))
        return ",".join(flags), None


def _bound(entries: OrderedDict[str, RateLimiter] | OrderedDict[str, CircuitBreaker]) -> None:
    while len(entries) > _MAX_ENTRIES:
        entries.popitem(last=False)

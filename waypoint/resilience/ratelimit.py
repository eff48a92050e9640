"""Local rate limits (our ``HTTPLocalRateLimitPolicy``, shaped like Linkerd's): token buckets.

- ``total``: requests per second for everyone together;
- ``per_identity``: requests per second for each client identity (unauthenticated clients share one
  bucket, keyed ``""``);
- ``overrides``: a client identity's own rate, replacing ``per_identity`` for it.

A request takes one token from its identity bucket and one from the total bucket, and only when both
have one (a refused request costs nothing); otherwise it gets 429 with flag ``RL``, counted per reason.
Buckets hold one second of tokens (burst = rate, at least 1) and refill continuously. Per-identity
buckets are bounded (least recently used dropped past ``max_identities``: a dropped one restarts full).
Pure: ``now`` is passed in (monotonic seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

RATE_LIMITED_BODY = b"local_rate_limited"


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"a rate limit must be positive requests per second, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def has(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    total: float | None = None  # requests/s
    per_identity: float | None = None  # requests/s per client identity
    overrides: Mapping[str, float] = field(default_factory=dict)  # identity (spiffe URI) -> requests/s

    def __post_init__(self) -> None:
        rates = [self.total, self.per_identity, *self.overrides.values()]
        if any(r is not None and r <= 0 for r in rates):
            raise ValueError("rate limits must be positive requests per second")


@dataclass(frozen=True, slots=True)
class Limited:
    reason: str  # "total", "identity" or "override" (which bucket was empty)


class RateLimiter:
    """Buckets of one policy (rebuild it when the policy changes)."""

    def __init__(self, policy: RateLimitPolicy, now: float, *, max_identities: int = 10_000) -> None:
        self.policy = policy
        self._total = TokenBucket(policy.total, now) if policy.total is not None else None
        self._per: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max = max_identities
        self.limited: dict[str, int] = {}
        self.allowed = 0

    def _bucket_for(self, identity: str, now: float) -> tuple[TokenBucket | None, str]:
        rate = self.policy.overrides.get(identity)
        reason = "override"
        if rate is None:
            rate, reason = self.policy.per_identity, "identity"
        if rate is None:
            return None, ""
        bucket = self._per.get(identity)
        if bucket is None or bucket.rate != rate:
            bucket = self._per[identity] = TokenBucket(rate, now)
            if len(self._per) > self._max:
                self._per.popitem(last=False)
        self._per.move_to_end(identity)
        return bucket, reason

    def check(self, identity: str, now: float) -> Limited | None:
        """Take a token for one request from ``identity`` (``""``: unauthenticated), or say why not."""
        bucket, reason = self._bucket_for(identity, now)
        if bucket is not None and not bucket.has(now):
            return self._limit(reason)
        if self._total is not None and not self._total.has(now):
            return self._limit("total")
        if bucket is not None:
            bucket.take()
        if self._total is not None:
            self._total.take()
        self.allowed += 1
        return None

    def _limit(self, reason: str) -> Limited:
        self.limited[reason] = self.limited.get(reason, 0) + 1
        return Limited(reason)

"""Request timeout vs per-try timeout, as Envoy applies them.

The request timeout (VirtualService ``timeout``, HTTPRoute ``timeouts.request``) bounds the whole
exchange from the request head to the end of the response, retries and backoff included; the per-try
timeout (``retries.perTryTimeout``, ``timeouts.backendRequest``) bounds one attempt. An attempt gets the
smaller of its per-try timeout and what is left of the request's. Both end in 504 flag ``UT``; only a
per-try timeout may be retried (the request timeout ends the request). Pure: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deadline:
    """The request's deadline (``None``: no request timeout) and the per-try timeout of its attempts."""

    request_deadline: float | None  # absolute, monotonic seconds
    per_try: float | None  # seconds per attempt, None: bounded only by the request's deadline

    @classmethod
    def start(cls, now: float, request_timeout: float | None, per_try: float | None) -> Deadline:
        for name, value in (("request timeout", request_timeout), ("per-try timeout", per_try)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive seconds, got {value}")
        return cls(None if request_timeout is None else now + request_timeout, per_try)

    def remaining(self, now: float) -> float | None:
        """Seconds left of the request (never negative), or None without a request timeout."""
        return None if self.request_deadline is None else max(0.0, self.request_deadline - now)

    def expired(self, now: float) -> bool:
        return self.request_deadline is not None and now >= self.request_deadline

    def attempt_timeout(self, now: float) -> tuple[float | None, bool]:
        """The timeout of an attempt starting at ``now``, and whether it is the per-try one (retriable)
        rather than the request's (final)."""
        left = self.remaining(now)
        if self.per_try is None:
            return left, False
        if left is None or self.per_try < left:
            return self.per_try, True
        return left, False

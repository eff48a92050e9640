"""Retries: which attempt outcomes are retried, how often, after which backoff (Envoy's retry policy).

``RetryPolicy`` is the compiled configuration (VirtualService ``retries`` / HTTPRoute ``retry``):
``attempts`` retries after the first try (so at most ``attempts + 1`` tries), ``retry_on`` conditions:

- ``5xx``: any 5xx response, or no response at all (connect failure, reset, per-try timeout);
- ``gateway-error``: 502, 503, 504, or no response at all;
- ``connect-failure``: the upstream could not be reached (flag ``UF``);
- ``reset``: the upstream went away before a response (``UC``, ``UF``) or a per-try timeout (``UT``);
- ``retriable-status-codes``: a status in ``retriable_status_codes``;
- ``retriable-4xx``: a 409; ``refused-stream``: an HTTP/2 stream the upstream refused (REFUSED_STREAM,
  never processed);
- gRPC ``cancelled``, ``deadline-exceeded``, ``internal``, ``resource-exhausted``, ``unavailable``: that
  ``grpc-status`` in the response headers (a trailers-only answer; a status in trailers comes after the
  response started and is never retried).

``RetryState`` is one request's progress: ``after(outcome, now)`` says ``Retry(delay)`` or
``GiveUp(reason)``. Invariants: a request whose body outgrew the replay buffer (``body_replayable``
False) or whose response already started downstream is never resent; the request timeout is never
retried (only the per-try one); backoff before the n-th retry is full jitter: uniform in [0, min(base * 2**(n-1), max)]
from the injected rng. Pure: no clock, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

GRPC_RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}
RETRY_ON = frozenset({"5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes", "retriable-4xx",
                      "refused-stream", *GRPC_RETRY_ON})
GATEWAY_ERRORS = frozenset({502, 503, 504})
REPLAY_BUFFER = 64 * 1024  # request body bytes kept for a retry; a longer body is never resent
DEFAULT_BACKOFF_BASE = 0.025  # Envoy's default base interval (25 ms); max defaults to 10x base


def parse_retry_on(text: str) -> tuple[frozenset[str], frozenset[int]]:
    """Istio's ``retryOn`` text (``"5xx,reset,503"``): conditions and bare status codes (which imply
    ``retriable-status-codes``). Raises ``ValueError`` naming every unknown condition."""
    conditions: set[str] = set()
    codes: set[int] = set()
    unknown: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.isdigit() and 100 <= int(item) <= 599:
            codes.add(int(item))
            conditions.add("retriable-status-codes")
        elif item in RETRY_ON:
            conditions.add(item)
        else:
            unknown.append(item)
    if unknown:
        raise ValueError(f"retryOn: unsupported condition(s) {', '.join(unknown)} "
                         f"(supported: {', '.join(sorted(RETRY_ON))}, or HTTP status codes)")
    return frozenset(conditions), frozenset(codes)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # retries after the first try
    retry_on: frozenset[str] = frozenset({"5xx"})
    retriable_status_codes: frozenset[int] = frozenset()
    per_try_timeout: float | None = None  # seconds
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float | None = None  # None: 10 x base
    replay_buffer: int = REPLAY_BUFFER

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"retry attempts must be >= 0, got {self.attempts}")
        unknown = self.retry_on - RETRY_ON
        if unknown:
            raise ValueError(f"retry_on: unsupported condition(s) {', '.join(sorted(unknown))}")
        if self.per_try_timeout is not None and self.per_try_timeout <= 0:
            raise ValueError(f"per-try timeout must be positive seconds, got {self.per_try_timeout}")
        if self.backoff_base <= 0 or (self.backoff_max is not None and self.backoff_max < self.backoff_base):
            raise ValueError("retry backoff: base must be positive and max at least base")
        if self.replay_buffer < 0:
            raise ValueError("retry replay buffer must be >= 0 bytes")

    @property
    def max_backoff(self) -> float:
        return self.backoff_max if self.backoff_max is not None else 10 * self.backoff_base


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended: a response ``status``, or a failure ``flag`` before any response
    (``UF`` connect failure, ``UC`` reset, ``UT`` per-try timeout, ``UPE`` protocol error); ``refused``:
    the reset was an HTTP/2 REFUSED_STREAM; ``grpc_status``: from the response headers, if there."""

    status: int = 0
    flag: str = ""
    grpc_status: int | None = None
    refused: bool = False

    @classmethod
    def response(cls, status: int, grpc_status: int | None = None) -> Outcome:
        return cls(status=status, grpc_status=grpc_status)

    @classmethod
    def failure(cls, flag: str, *, refused: bool = False) -> Outcome:
        return cls(flag=flag, refused=refused)


def is_retriable(policy: RetryPolicy, outcome: Outcome) -> bool:
    """Whether ``outcome`` matches one of the policy's ``retry_on`` conditions."""
    on = policy.retry_on
    if outcome.flag:
        if outcome.refused and "refused-stream" in on:
            return True
        if outcome.flag == "UPE":
            return "5xx" in on or "gateway-error" in on  # a 502 the proxy made
        if outcome.flag == "UF" and "connect-failure" in on:
            return True
        return bool(on & {"5xx", "gateway-error", "reset"})
    status = outcome.status
    if "5xx" in on and 500 <= status <= 599:
        return True
    if "gateway-error" in on and status in GATEWAY_ERRORS:
        return True
    if "retriable-4xx" in on and status == 409:
        return True
    if outcome.grpc_status is not None and any(
            GRPC_RETRY_ON[c] == outcome.grpc_status for c in on if c in GRPC_RETRY_ON):
        return True
    return "retriable-status-codes" in on and status in policy.retriable_status_codes


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float  # seconds of backoff before the next attempt


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str  # why this outcome is final (for the access log)


@dataclass(slots=True)
class RetryState:
    """One request's retry bookkeeping (see the module docstring)."""

    policy: RetryPolicy
    rng: random.Random
    tries: int = 1  # attempts made so far (the first included)
    tried: list[object] = field(default_factory=list)  # endpoints already used, oldest first

    def after(self, outcome: Outcome, *, body_replayable: bool = True, response_started: bool = False,
              request_timed_out: bool = False) -> Retry | GiveUp:
        """Decide what follows an attempt that ended in ``outcome``; a ``Retry`` counts the next try."""
        if not is_retriable(self.policy, outcome):
            return GiveUp("not retriable")
        if response_started:
            return GiveUp("response already started")
        if request_timed_out:
            return GiveUp("request timeout")
        if not body_replayable:
            return GiveUp(f"request body over the {self.policy.replay_buffer}-byte replay buffer")
        if self.tries > self.policy.attempts:
            return GiveUp(f"retries exhausted ({self.policy.attempts})")
        ceiling = min(self.policy.backoff_base * (2 ** (self.tries - 1)), self.policy.max_backoff)
        self.tries += 1
        return Retry(self.rng.uniform(0.0, ceiling))

    def remember(self, endpoint: object) -> None:
        self.tried.append(endpoint)

    def avoid(self) -> Iterable[object]:
        """Endpoints a new attempt should avoid when another is usable (Envoy's previous_hosts)."""
        return self.tried


class ReplayBuffer:
    """The request body kept for a possible retry, up to ``limit`` bytes; past it ``replayable`` is
    False for good (the chunks are dropped: only the bytes already forwarded existed)."""

    __slots__ = ("chunks", "limit", "replayable", "size")

    def __init__(self, limit: int = REPLAY_BUFFER) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.replayable = True

    def add(self, data: bytes) -> None:
        if not self.replayable:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.replayable = False
            self.chunks.clear()
        else:
            self.chunks.append(data)

"""Fault injection (VirtualService ``fault``): a fixed delay and/or an abort, each for a percentage of
requests drawn from an injectable rng.

Envoy's behaviour kept: the delay happens first (flag ``DI``), then the abort (flag ``FI``, the
configured status, body ``fault filter abort``); both may apply to one request (flags ``DI,FI``). A
percentage is 0..100 (Istio's ``percentage.value``; a missing percentage means 100). Pure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ABORT_BODY = b"fault filter abort"


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    delay: float | None = None  # seconds (fixedDelay)
    delay_percent: float = 100.0
    abort_status: int | None = None  # httpStatus
    abort_percent: float = 100.0

    def __post_init__(self) -> None:
        if self.delay is not None and self.delay < 0:
            raise ValueError(f"fault delay must be >= 0 seconds, got {self.delay}")
        if self.abort_status is not None and not 200 <= self.abort_status <= 599:
            raise ValueError(f"fault abort httpStatus must be within 200..599, got {self.abort_status}")
        for name in ("delay_percent", "abort_percent"):
            value = getattr(self, name)
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"fault {name.replace('_', ' ')} must be within 0..100, got {value}")


@dataclass(frozen=True, slots=True)
class FaultVerdict:
    delay: float = 0.0  # seconds to wait before going on (0: none)
    abort_status: int | None = None  # answer with this status after the delay (None: forward)

    @property
    def flags(self) -> str:
        flags = [f for f, on in (("DI", self.delay > 0), ("FI", self.abort_status is not None)) if on]
        return ",".join(flags) or "-"


NO_FAULT = FaultVerdict()


def _hit(rng: random.Random, percent: float) -> bool:
    if percent >= 100.0:
        return True
    return percent > 0.0 and rng.random() * 100.0 < percent


def decide_fault(policy: FaultPolicy | None, rng: random.Random) -> FaultVerdict:
    """What fault, if any, this request gets (one rng draw per configured fault)."""
    if policy is None:
        return NO_FAULT
    delay = policy.delay if policy.delay and _hit(rng, policy.delay_percent) else 0.0
    abort = policy.abort_status if policy.abort_status is not None and _hit(rng, policy.abort_percent) else None
    if not delay and abort is None:
        return NO_FAULT
    return FaultVerdict(delay, abort)

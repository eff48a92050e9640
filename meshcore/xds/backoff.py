"""Reconnect backoff: capped exponential delays with jitter, as a pure value the shell asks for delays.

ztunnel reconnects to istiod after 10 ms, doubling up to 15 s (reference §5). Jitter spreads a fleet of
proxies that lost the control plane at the same moment. Randomness arrives as a sample in [0, 1) so that
tests are deterministic; this module never sleeps and never reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """``next_delay(sample)`` returns the next delay in seconds; ``reset()`` after a healthy stream."""

    initial: float = 0.010
    maximum: float = 15.0
    multiplier: float = 2.0
    # Fraction of each delay that is randomised: delay * (1 - jitter + jitter * sample).
    jitter: float = 0.5
    _attempt: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.multiplier >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid backoff settings: {self!r}")

    def next_delay(self, sample: float) -> float:
        base = min(self.maximum, self.initial * self.multiplier**self._attempt)
        if base < self.maximum:
            self._attempt += 1
        return base * (1 - self.jitter + self.jitter * min(max(sample, 0.0), 1.0))

    def reset(self) -> None:
        self._attempt = 0

"""Push debouncing as a pure decision: when should a burst of changes be pushed? Time arrives as ``now``.

Istio's rule (``PILOT_DEBOUNCE_AFTER`` / ``PILOT_DEBOUNCE_MAX``): push once the changes have been quiet for
``quiet`` seconds, but never later than ``max_delay`` after the first change of the burst, so a constant
stream of changes still gets pushed. istiod defaults to 100 ms / 10 s; our pushes are incremental (only the
changed resources travel), so a shorter maximum costs little and ``PushServer`` defaults to 1 s.

The shell arms one timer at ``deadline()``; when it fires it asks ``due(now)`` and either flushes (then
``reset()``) or re-arms at the new deadline. No timer is rescheduled per change.
"""

from __future__ import annotations


class Debouncer:
    def __init__(self, quiet: float, max_delay: float) -> None:
        if quiet < 0 or max_delay < quiet:
            raise ValueError(f"debounce quiet={quiet} and max={max_delay}: need 0 <= quiet <= max")
        self.quiet = quiet
        self.max_delay = max_delay
        self._first: float | None = None
        self._last: float | None = None

    @property
    def pending(self) -> bool:
        return self._first is not None

    def record(self, now: float) -> None:
        """A change arrived at ``now``."""
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> float | None:
        """When the pending burst should be pushed; None if nothing is pending."""
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def reset(self) -> None:
        """The burst was pushed."""
        self._first = None
        self._last = None

"""Process-wide structlog setup shared by every binary: one call from each ``__main__``.

Logs go to stderr, as JSON (``json``, for clusters and log shippers) or coloured key=value (``console``,
for people). Levels can change at run time (ztunnel's ``/logging`` admin endpoint) through
``set_level``. Nothing here is imported by sans-IO cores.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog + stdlib logging; ``fmt`` is ``console`` or ``json``."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    if fmt not in ("console", "json"):
        raise ValueError(f"log format {fmt!r} is not 'console' or 'json'")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    logging.basicConfig(stream=sys.stderr, format="%(message)s", level=logging.INFO, force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # Resolve sys.stderr per logger, not once: tests and CLIs swap stderr (a cached stream may be closed).
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change the level of every logger from now on (loggers are not cached, see above)."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())))


class RateLimitedLog:
    """One log line per cause per interval, however often the cause repeats (a flood of bad peers must
    not become a flood of log lines). The first occurrence of a cause is logged at once; later ones within
    ``interval`` seconds are only counted, and the next line logged for that cause carries
    ``repeated=N`` (how many were suppressed since the last line). ``clock`` is injectable for tests."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, cause: str) -> int | None:
        """None: suppress this occurrence. Otherwise log now; the value is how many were suppressed."""
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self._interval:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return None
        self._last[cause] = now
        if len(self._last) > 1024:  # causes are a fixed vocabulary; this only guards against misuse
            self._last = {cause: now}
        return self._suppressed.pop(cause, 0)

    def log(self, logger: Any, level: str, event: str, cause: str, **fields: Any) -> bool:
        """Log ``event`` at ``level`` unless ``cause`` was logged less than ``interval`` ago; True if it was."""
        repeated = self.allow(cause)
        if repeated is None:
            return False
        if repeated:
            fields["repeated"] = repeated
        getattr(logger, level)(event, **fields)
        return True

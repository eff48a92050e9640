"""RateLimitedLog: one line per cause per interval, the next line says how many were suppressed."""

from __future__ import annotations

from meshcore.logs import RateLimitedLog
from meshcore.testing.clock import FakeClock


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append(("warning", event, fields))


def test_a_repeated_cause_is_logged_once_per_interval_with_the_count_of_suppressed_lines():
    clock = FakeClock()
    limiter = RateLimitedLog(10.0, clock=clock.monotonic)
    rec = Recorder()
    assert limiter.log(rec, "warning", "hbone.handshake_failed", "handshake:SSLError", addr="a")
    for _ in range(2999):
        assert not limiter.log(rec, "warning", "hbone.handshake_failed", "handshake:SSLError", addr="b")
    assert limiter.log(rec, "warning", "hbone.peer_rejected", "peer_rejected")  # another cause: its own budget
    clock.advance(10.0)
    assert limiter.log(rec, "warning", "hbone.handshake_failed", "handshake:SSLError", addr="c")
    assert [(e, f.get("repeated")) for _, e, f in rec.lines] == [
        ("hbone.handshake_failed", None), ("hbone.peer_rejected", None), ("hbone.handshake_failed", 2999)
    ]

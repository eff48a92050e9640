"""Table tests for the push debouncer (quiet period, maximum delay)."""

from __future__ import annotations

import pytest

from istiod_lite.push.debounce import Debouncer


@pytest.mark.parametrize(
    ("changes", "now", "due"),
    [
        ([], 10.0, False),
        ([0.0], 0.05, False),
        ([0.0], 0.1, True),
        ([0.0, 0.08], 0.15, False),
        ([0.0, 0.08], 0.18, True),
        ([i * 0.05 for i in range(40)], 1.0, True),
        ([i * 0.05 for i in range(40)], 0.99, False),
    ],
    ids=[
        "nothing pending is never due",
        "a change is not pushed inside the quiet period",
        "a change is pushed once quiet for the period",
        "a later change restarts the quiet period",
        "the burst is pushed once quiet after its last change",
        "a constant stream is pushed at the maximum delay",
        "a constant stream waits until the maximum delay",
    ],
)
def test_due(changes: list[float], now: float, due: bool) -> None:
    d = Debouncer(quiet=0.1, max_delay=1.0)
    for t in changes:
        d.record(t)
    assert d.due(now) is due


def test_reset_starts_a_new_burst() -> None:
    d = Debouncer(quiet=0.1, max_delay=1.0)
    d.record(0.0)
    d.reset()
    assert not d.pending and d.deadline() is None
    d.record(5.0)
    assert d.deadline() == pytest.approx(5.1)


@pytest.mark.parametrize(("quiet", "max_delay"), [(-0.1, 1.0), (0.5, 0.1)], ids=["negative quiet", "max below quiet"])
def test_rejects_impossible_settings(quiet: float, max_delay: float) -> None:
    with pytest.raises(ValueError, match="debounce"):
        Debouncer(quiet, max_delay)

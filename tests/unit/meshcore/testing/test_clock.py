"""FakeClock: sleepers wake in deadline order only when time is advanced; jump() wakes nobody."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from meshcore.testing.clock import FakeClock

START = datetime(2030, 1, 1, tzinfo=UTC)


async def test_sleepers_wake_in_deadline_order_when_time_reaches_them() -> None:
    clock = FakeClock(START)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 30), ("early", 10), ("mid", 20))]
    await clock.wait_for_sleepers(3)
    assert clock.next_deadline() == START + timedelta(seconds=10)
    clock.advance(9.5)
    assert clock.sleepers == 3
    clock.advance(timedelta(seconds=15))
    await asyncio.gather(*tasks[1:])
    assert woke == ["early", "mid"] and clock.now() == START + timedelta(seconds=24.5)
    assert clock.advance_to_next() == timedelta(seconds=5.5)
    await tasks[0]
    assert woke == ["early", "mid", "late"] and clock.monotonic() == 30


async def test_jump_moves_time_without_waking_and_cancelled_sleepers_are_not_counted() -> None:
    clock = FakeClock(START)
    task = asyncio.create_task(clock.sleep(5))
    await clock.wait_for_sleepers(1)
    clock.jump(60)
    assert clock.now() == START + timedelta(seconds=60) and clock.sleepers == 1 and not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0 and clock.next_deadline() is None
    with pytest.raises(RuntimeError, match="no task is sleeping"):
        clock.advance_to_next()


def test_time_only_moves_forward_and_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="forward"):
        FakeClock(START).advance(-1)

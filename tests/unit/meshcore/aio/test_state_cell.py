"""StateCell: versions, wake-ups and wait_for, with real tasks on one loop (no sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from meshcore.aio.state_cell import StateCell


def test_current_is_the_initial_value_at_version_zero() -> None:
    cell = StateCell("a")
    assert (cell.current(), cell.version) == ("a", 0)


def test_publish_bumps_the_version_and_replaces_the_value() -> None:
    cell = StateCell("a")
    assert cell.publish("b") == 1 and cell.publish("c") == 2
    assert (cell.current(), cell.version) == ("c", 2)


async def test_changed_returns_at_once_when_a_newer_version_exists() -> None:
    cell = StateCell("a")
    cell.publish("b")
    assert await asyncio.wait_for(cell.changed(0), 1) == (1, "b")


async def test_changed_wakes_every_waiter_on_publish() -> None:
    cell = StateCell("a")
    waiters = [asyncio.create_task(cell.changed(0)) for _ in range(3)]
    await asyncio.sleep(0)  # let them block
    assert not any(w.done() for w in waiters)
    cell.publish("b")
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [(1, "b")] * 3


async def test_a_busy_watcher_sees_the_latest_value_not_each_intermediate_one() -> None:
    cell = StateCell(0)
    for i in range(1, 4):
        cell.publish(i)
    assert await cell.changed(0) == (3, 3)


async def test_wait_for_returns_the_first_matching_snapshot() -> None:
    cell = StateCell(0)
    waiter = asyncio.create_task(cell.wait_for(lambda v: v >= 2, timeout=1))
    await asyncio.sleep(0)
    cell.publish(1)
    await asyncio.sleep(0)
    assert not waiter.done()
    cell.publish(2)
    assert await waiter == 2


async def test_wait_for_times_out_when_nothing_matches() -> None:
    cell = StateCell(0)
    with pytest.raises(TimeoutError):
        await cell.wait_for(lambda v: v > 0, timeout=0.02)


async def test_follow_applies_the_current_snapshot_then_each_newer_one_until_cancelled() -> None:
    cell = StateCell(0)
    seen: list[int] = []
    latest = asyncio.Event()

    def apply(value: int) -> None:
        seen.append(value)
        if value == 3:
            latest.set()

    follower = asyncio.create_task(cell.follow(apply))
    await asyncio.sleep(0)  # it applies the current snapshot at once
    assert seen == [0]
    for value in (1, 2, 3):  # all published before the follower wakes: it applies only the latest
        cell.publish(value)
    async with asyncio.timeout(1):
        await latest.wait()
    assert seen == [0, 3]
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower

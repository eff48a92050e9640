"""``apply``'s report of istiod's policy status: which conditions are warnings, and the bounded wait for the
status of the applied generation (a fake clock; the fake sleep plays istiod writing the status)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ambientctl.commands.applystatus import policy_warnings, report_policy_status, wait_for_policy_status
from meshcore.store import ResourceRef, SqliteStore
from meshcore.store.resource import Resource
from meshcore.testing.resources import authz


def cond(type_: str, status: str, reason: str, message: str = "", generation: int | None = 1) -> dict[str, Any]:
    found = {"type": type_, "status": status, "reason": reason, "message": message}
    return found if generation is None else {**found, "observedGeneration": generation}


def policy(*conditions: dict[str, Any], generation: int = 1) -> Resource:
    return Resource("AuthorizationPolicy", "p", "demo", generation=generation, status={"conditions": list(conditions)})


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        pytest.param(policy(), None, id="no conditions yet is not reached"),
        pytest.param(
            policy(cond("ZtunnelAccepted", "False", "UnsupportedValue", generation=None)), None, id="no generation recorded"
        ),
        pytest.param(
            policy(cond("ZtunnelAccepted", "True", "Accepted", generation=1), generation=2),
            None,
            id="conditions of an older generation are not reached",
        ),
        pytest.param(policy(cond("ZtunnelAccepted", "True", "Accepted")), [], id="accepted says nothing"),
        pytest.param(
            policy(cond("ZtunnelAccepted", "True", "UnsupportedValue", "rule omitted")),
            ["rule omitted"],
            id="accepted with a changed rule is a warning",
        ),
        pytest.param(
            policy(cond("WaypointAccepted", "False", "TargetNotFound", "no waypoint")),
            ["no waypoint"],
            id="not accepted is a warning",
        ),
        pytest.param(
            policy(cond("example.com/Other", "False", "Nope", "not ours"), cond("ZtunnelAccepted", "True", "Accepted")),
            [],
            id="conditions of other controllers are ignored",
        ),
    ],
)
def test_policy_warnings(resource: Resource, expected: list[str] | None) -> None:
    assert policy_warnings(resource) == expected


REF = ResourceRef("AuthorizationPolicy", "demo", "p")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    s.apply([authz("p", action="CUSTOM", provider={"name": "ext"}, rules=[{}])])
    yield s
    s.close()


class FakeTime:
    """A clock that only moves when slept; ``on_sleep`` runs at the given sleep (istiod's write)."""

    def __init__(self, on_sleep: dict[int, Callable[[], None]] | None = None) -> None:
        self.now = 100.0
        self.sleeps = 0
        self.on_sleep = on_sleep or {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds
        self.sleeps += 1
        action = self.on_sleep.get(self.sleeps)
        if action is not None:
            action()


def istiod_writes(store: SqliteStore, *conditions: dict[str, Any]) -> Callable[[], None]:
    return lambda: store.set_status(REF, {"conditions": list(conditions)})


def test_waits_until_istiod_writes_the_applied_generation(store: SqliteStore) -> None:
    t = FakeTime({3: istiod_writes(store, cond("ZtunnelAccepted", "False", "UnsupportedValue", "CUSTOM unsupported"))})
    done, pending = wait_for_policy_status(store, [REF], timeout=3.0, clock=t.clock, sleep=t.sleep)
    assert done == {REF: ["CUSTOM unsupported"]} and pending == []
    assert t.sleeps == 3


def test_gives_up_at_the_deadline_with_a_bounded_number_of_polls(store: SqliteStore) -> None:
    t = FakeTime()
    done, pending = wait_for_policy_status(store, [REF], timeout=3.0, clock=t.clock, sleep=t.sleep)
    assert done == {} and pending == [REF]
    assert t.now == pytest.approx(103.0) and t.sleeps <= 61


def test_a_policy_deleted_meanwhile_is_dropped(store: SqliteStore) -> None:
    t = FakeTime({1: lambda: store.delete([REF])})
    assert wait_for_policy_status(store, [REF], clock=t.clock, sleep=t.sleep) == ({}, [])


def test_report_prints_each_warning_then_notes_what_istiod_did_not_reach(store: SqliteStore) -> None:
    store.apply([authz("late", selector={})])
    t = FakeTime({1: istiod_writes(store, cond("ZtunnelAccepted", "False", "UnsupportedValue", "CUSTOM unsupported"))})
    lines: list[str] = []
    applied = [authz("p"), authz("late"), Resource("Namespace", "demo")]
    report_policy_status(store, applied, timeout=1.0, emit=lines.append, clock=t.clock, sleep=t.sleep)
    assert lines[0] == "Warning: authorizationpolicy/p: CUSTOM unsupported"
    assert lines[1].startswith("note: istiod-lite has not written the status of authorizationpolicy/late within 1s")
    assert len(lines) == 2


def test_report_without_policies_does_not_wait(store: SqliteStore) -> None:
    t = FakeTime()
    report_policy_status(store, [Resource("Namespace", "demo")], emit=pytest.fail, clock=t.clock, sleep=t.sleep)
    assert t.sleeps == 0

"""The local cluster's event bookkeeping (``ambientctl.cluster.events.EventBook``) with a fake clock:
repeats counted on one Event, a cap per object, expiry after the TTL, Events of the store adopted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ambientctl.cluster.events import EVENT_TTL, EventBook, InvolvedObject, flush, seed
from meshcore.store import Resource, SqliteStore, build_resource

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
POD = InvolvedObject("Pod", "demo", "web", "uid-1")
OTHER = InvolvedObject("Pod", "demo", "db", "uid-2")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def book(clock: Clock, **kw: int) -> EventBook:
    return EventBook(wall_clock=clock, per_object=kw.get("per_object", 50))


def test_a_new_event_has_kubernetes_fields(clock: Clock) -> None:
    b = book(clock)
    event = b.record(
        InvolvedObject("Pod", "demo", "web", "uid-1", "spec.containers{app}"), "Warning", "BackOff", "m"
    )
    assert event.kind == "Event" and event.namespace == "demo" and event.name.startswith("web.")
    assert event.spec == {
        "involvedObject": {
            "kind": "Pod",
            "namespace": "demo",
            "name": "web",
            "uid": "uid-1",
            "fieldPath": "spec.containers{app}",
        },
        "type": "Warning",
        "reason": "BackOff",
        "message": "m",
        "count": 1,
        "firstTimestamp": "2026-03-04T05:06:07Z",
        "lastTimestamp": "2026-03-04T05:06:07Z",
        "source": {"component": "kubelet"},
        "reportingComponent": "kubelet",
    }
    # what the store's validation accepts as a user's Event too
    assert build_resource(event.to_dict()).spec == event.spec


def test_a_repeat_updates_count_and_last_timestamp_instead_of_adding(clock: Clock) -> None:
    b = book(clock)
    first = b.record(POD, "Warning", "BackOff", "Back-off restarting failed container app")
    clock.advance(seconds=30)
    again = b.record(POD, "Warning", "BackOff", "Back-off restarting failed container app")
    assert again.ref == first.ref
    assert again.spec["count"] == 2
    assert again.spec["firstTimestamp"] == "2026-03-04T05:06:07Z"
    assert again.spec["lastTimestamp"] == "2026-03-04T05:06:37Z"
    writes, deletes = b.take()
    assert [w.spec["count"] for w in writes] == [2] and deletes == []


@pytest.mark.parametrize(
    ("second", "third"),
    [
        pytest.param(POD, ("Warning", "BackOff", "other message"), id="another message is another event"),
        pytest.param(POD, ("Warning", "Unhealthy", "m"), id="another reason is another event"),
        pytest.param(POD, ("Normal", "BackOff", "m"), id="another type is another event"),
        pytest.param(OTHER, ("Warning", "BackOff", "m"), id="another object is another event"),
        pytest.param(
            InvolvedObject("Pod", "demo", "web", "uid-1", "spec.containers{b}"),
            ("Warning", "BackOff", "m"),
            id="another container is another event",
        ),
    ],
)
def test_what_differs_is_not_merged(
    clock: Clock, second: InvolvedObject, third: tuple[str, str, str]
) -> None:
    b = book(clock)
    one = b.record(POD, "Warning", "BackOff", "m")
    two = b.record(second, third[0], third[1], third[2])  # type: ignore[arg-type]
    assert one.ref != two.ref and two.spec["count"] == 1


def test_take_returns_each_pending_write_once(clock: Clock) -> None:
    b = book(clock)
    b.record(POD, "Normal", "Scheduled", "Successfully assigned demo/web to node-1")
    b.record(POD, "Normal", "Started", "Started container app")
    writes, _ = b.take()
    assert sorted(w.spec["reason"] for w in writes) == ["Scheduled", "Started"]
    assert b.take() == ([], [])


def test_the_oldest_events_of_an_object_beyond_the_cap_are_deleted(clock: Clock) -> None:
    b = book(clock, per_object=3)
    made = []
    for i in range(5):
        made.append(b.record(POD, "Normal", "Started", f"start {i}"))
        clock.advance(seconds=1)
    b.record(OTHER, "Normal", "Started", "start 0")
    writes, deletes = b.take()
    assert deletes == []  # never written: dropped before any write
    assert sorted(w.spec["message"] for w in writes if w.spec["involvedObject"]["name"] == "web") == [
        "start 2",
        "start 3",
        "start 4",
    ]
    clock.advance(seconds=1)
    b.record(POD, "Normal", "Started", "start 5")
    _, deletes = b.take()
    assert deletes == [made[2].ref]
    assert len([e for e in b.events() if e.spec["involvedObject"]["name"] == "db"]) == 1


def test_a_repeat_keeps_an_event_from_being_the_oldest(clock: Clock) -> None:
    b = book(clock, per_object=2)
    first = b.record(POD, "Normal", "A", "a")
    clock.advance(seconds=1)
    b.record(POD, "Normal", "B", "b")
    clock.advance(seconds=1)
    b.record(POD, "Normal", "A", "a")  # seen again: now the newest
    clock.advance(seconds=1)
    b.record(POD, "Normal", "C", "c")
    assert sorted(e.spec["reason"] for e in b.events()) == ["A", "C"]
    assert first.ref in {e.ref for e in b.events()}


def test_events_not_seen_for_the_ttl_expire(clock: Clock) -> None:
    b = book(clock)
    old = b.record(POD, "Normal", "Scheduled", "s")
    b.take()
    clock.advance(seconds=EVENT_TTL.total_seconds() - 60)
    kept = b.record(POD, "Normal", "Started", "started")
    assert b.take() == ([kept], [])
    clock.advance(seconds=61)
    assert b.take() == ([], [old.ref])
    assert b.events() == [kept]
    clock.advance(seconds=EVENT_TTL.total_seconds())
    assert b.take() == ([], [kept.ref])


def test_a_repeat_after_expiry_starts_a_new_event(clock: Clock) -> None:
    b = book(clock)
    old = b.record(POD, "Warning", "BackOff", "m")
    clock.advance(hours=2)
    b.take()
    new = b.record(POD, "Warning", "BackOff", "m")
    assert new.ref != old.ref and new.spec["count"] == 1


def test_names_are_unique_when_the_clock_stands_still(clock: Clock) -> None:
    b = book(clock)
    names = {b.record(POD, "Normal", "Started", f"m{i}").name for i in range(20)}
    assert len(names) == 20


def test_events_already_stored_are_adopted(clock: Clock, tmp_path: Path) -> None:
    first = book(clock)
    stored = first.record(POD, "Warning", "BackOff", "m")
    with SqliteStore(tmp_path / "s.db") as store:
        store.apply(first.take()[0])
        second = book(clock)  # a restarted kubelet
        second.seed(store.list("Event"))
    clock.advance(seconds=10)
    again = second.record(POD, "Warning", "BackOff", "m")
    assert again.ref == stored.ref and again.spec["count"] == 2
    clock.advance(hours=2)
    assert second.take()[1] == [stored.ref]


def test_a_users_event_without_timestamps_expires_too(clock: Clock) -> None:
    b = book(clock)
    user = Resource(
        "Event",
        "mine",
        "demo",
        "v1",
        spec={"involvedObject": {"kind": "Pod", "name": "web"}, "reason": "Hello"},
    )
    b.seed([user])
    assert b.take() == ([], [user.ref])


def test_a_book_adopts_only_the_stored_events_of_its_own_components(clock: Clock) -> None:
    kubelet, controller = book(clock), book(clock)
    pod_event = kubelet.record(POD, "Normal", "Started", "Started container app")
    deploy_event = controller.record(
        InvolvedObject("Deployment", "demo", "web", "uid-3"), "Normal", "ScalingReplicaSet", "Scaled up",
        component="deployment-controller",
    )  # fmt: skip
    stored = [pod_event, deploy_event]
    mine = EventBook(wall_clock=clock, adopts=lambda c: c == "deployment-controller")
    mine.seed(stored)
    assert mine.events() == [deploy_event]
    clock.advance(hours=2)
    assert mine.take() == ([], [deploy_event.ref])  # the kubelet's Event is left to the kubelet's book


def test_seed_then_flush_write_once_and_count_on_the_stored_event(clock: Clock, tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.db") as store:
        first = book(clock)
        first.record(POD, "Warning", "BackOff", "m")
        flush(store, first)
        revision = store.revision()
        flush(store, first)  # nothing new: no write
        assert store.revision() == revision
        restarted = book(clock)
        seed(store, restarted)
        clock.advance(seconds=5)
        restarted.record(POD, "Warning", "BackOff", "m")
        flush(store, restarted)
        (event,) = store.list("Event")
        assert event.spec["count"] == 2 and event.spec["lastTimestamp"] == "2026-03-04T05:06:12Z"
        clock.advance(hours=2)
        flush(store, restarted)
        assert store.list("Event") == []

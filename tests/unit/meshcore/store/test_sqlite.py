"""The SQLite store on real files: round trips, revisions, atomicity, restarts, two writers, the watch."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.store import (
    NotAStore,
    Resource,
    ResourceNotFound,
    ResourceRef,
    SqliteStore,
    StoreError,
    StoreSchemaTooNew,
    StoreUnavailable,
    WatchEvent,
    build_resource,
)

REPO = Path(__file__).resolve().parents[4]


def ns(name: str, **labels: str) -> Resource:
    return build_resource(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )


def pod(name: str, namespace: str = "demo", ip: str | None = None, **spec: Any) -> Resource:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": "node-1", **spec},
    }
    if ip:
        doc["status"] = {"podIP": ip, "phase": "Running"}
    return build_resource(doc)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db_path)
    yield s
    s.close()


async def collect(store: SqliteStore, since: int, count: int, within: float = 10.0) -> list[WatchEvent]:
    """The next ``count`` watch events after ``since`` (fails the test after ``within`` seconds)."""
    events: list[WatchEvent] = []
    async with asyncio.timeout(within), contextlib.aclosing(store.watch(since, poll_interval=0.01)) as watch:
        async for event in watch:
            events.append(event)
            if len(events) == count:
                break
    return events


def test_apply_get_list_delete_round_trip(store: SqliteStore) -> None:
    results = store.apply([ns("demo"), pod("a", ip="10.0.0.1"), pod("b")])
    assert [(str(r.ref), r.action) for r in results] == [
        ("Namespace/demo", "created"),
        ("Pod/demo/a", "created"),
        ("Pod/demo/b", "created"),
    ]
    got = store.get(ResourceRef("Pod", "demo", "a"))
    assert got is not None
    assert got.status["podIP"] == "10.0.0.1" and got.uid and got.resource_version == 2
    assert [r.name for r in store.list("Pod", "demo")] == ["a", "b"]
    assert [r.kind for r in store.list()] == ["Namespace", "Pod", "Pod"]
    assert store.list("Pod", "other") == []

    assert store.delete([ResourceRef("Pod", "demo", "a"), ResourceRef("Pod", "demo", "nope")]) == [
        ResourceRef("Pod", "demo", "a")
    ]
    assert store.get(ResourceRef("Pod", "demo", "a")) is None


def test_resource_version_is_the_revision_of_the_last_write_and_uid_survives_updates(
    store: SqliteStore,
) -> None:
    (created,) = store.apply([pod("a", ip="10.0.0.1")])
    store.apply([ns("demo")])
    (updated,) = store.apply([pod("a", ip="10.0.0.2")])
    assert (created.resource.resource_version, updated.resource.resource_version) == (1, 3)
    assert updated.action == "configured"
    assert updated.resource.uid == created.resource.uid
    assert store.revision() == 3


def test_unchanged_apply_writes_nothing(store: SqliteStore) -> None:
    store.apply([ns("demo"), pod("a", ip="10.0.0.1")])
    before = store.revision()
    results = store.apply([ns("demo"), pod("a", ip="10.0.0.1")])
    assert [r.action for r in results] == ["unchanged", "unchanged"]
    assert [r.resource.resource_version for r in results] == [1, 2]
    assert store.revision() == before
    assert len(store.changes_since(0)) == 2


def test_apply_without_status_keeps_the_stored_status_as_kubernetes_does(store: SqliteStore) -> None:
    store.apply([pod("a", ip="10.0.0.1")])
    (result,) = store.apply([pod("a")])
    assert result.action == "unchanged"
    (result,) = store.apply([pod("a", serviceAccountName="other")])
    assert result.action == "configured"
    assert result.resource.status["podIP"] == "10.0.0.1"


def test_apply_is_all_or_nothing(store: SqliteStore, db_path: Path) -> None:
    # Make the database refuse the second write, inside the transaction.
    raw = sqlite3.connect(db_path)
    raw.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON objects WHEN NEW.name = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
    )
    raw.commit()
    raw.close()
    with pytest.raises(StoreUnavailable, match="refused by test"):
        store.apply([pod("a"), pod("poison")])
    assert store.list() == []
    assert store.revision() == 0
    assert store.changes_since(0) == []


def test_deleting_a_namespace_deletes_its_contents_first(store: SqliteStore) -> None:
    store.apply([ns("demo"), pod("a"), pod("b"), pod("c", namespace="other")])
    since = store.revision()
    deleted = store.delete([ResourceRef("Namespace", "", "demo")])
    assert [str(r) for r in deleted] == ["Pod/demo/a", "Pod/demo/b", "Namespace/demo"]
    events = store.changes_since(since)
    assert [(e.type, str(e.resource.ref), e.revision) for e in events] == [
        ("DELETED", "Pod/demo/a", 5),
        ("DELETED", "Pod/demo/b", 6),
        ("DELETED", "Namespace/demo", 7),
    ]
    assert [str(r.ref) for r in store.list()] == ["Pod/other/c"]


def test_set_labels_creates_modifies_and_reports_unchanged(store: SqliteStore) -> None:
    ref = ResourceRef("Namespace", "", "demo")
    with pytest.raises(ResourceNotFound):
        store.set_labels(ref, {"x": "1"}, [])
    assert store.set_labels(ref, {"mode": "ambient"}, [], create=True).action == "created"
    assert store.set_labels(ref, {"mode": "ambient"}, []).action == "unchanged"
    store.apply([ns("demo", mode="ambient", keep="yes")])
    result = store.set_labels(ref, {}, ["mode"])
    assert result.action == "configured"
    assert result.resource.labels == {"keep": "yes"}
    assert store.set_labels(ref, {}, ["mode"]).action == "unchanged"
    assert [e.type for e in store.changes_since(0)] == ["ADDED", "MODIFIED", "MODIFIED"]


def test_restart_loses_nothing(db_path: Path) -> None:
    first = SqliteStore(db_path)
    first.apply([ns("demo"), pod("a", ip="10.0.0.1")])
    first.delete([ResourceRef("Namespace", "", "demo")])
    first.apply([pod("b", namespace="x")])
    before = (first.list(), first.revision(), first.changes_since(0))
    first.close()

    second = SqliteStore(db_path)
    try:
        assert (second.list(), second.revision(), second.changes_since(0)) == before
        (result,) = second.apply([pod("c", namespace="x")])
        assert result.resource.resource_version == before[1] + 1
    finally:
        second.close()


def test_store_files_are_private(store: SqliteStore, db_path: Path) -> None:
    store.apply([ns("demo")])
    for f in db_path.parent.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    f = tmp_path / "store.db"
    f.write_bytes(b"hello, not sqlite" * 100)
    with pytest.raises(NotAStore, match="is not an ambient-mesh store"):
        SqliteStore(f)
    assert f.read_bytes() == b"hello, not sqlite" * 100


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "other.db"
    raw = sqlite3.connect(f)
    raw.execute("CREATE TABLE t (x)")
    raw.commit()
    raw.close()
    with pytest.raises(NotAStore, match="another application"):
        SqliteStore(f)


def test_a_newer_schema_is_refused_with_an_upgrade_hint(db_path: Path) -> None:
    SqliteStore(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(StoreSchemaTooNew, match="schema v99, newer than this version reads.*upgrade"):
        SqliteStore(db_path)


def test_a_closed_store_says_so(store: SqliteStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.list()


def test_a_second_store_on_the_same_file_sees_writes_and_continues_revisions(db_path: Path) -> None:
    a, b = SqliteStore(db_path), SqliteStore(db_path)
    try:
        a.apply([ns("demo")])
        (result,) = b.apply([pod("a")])
        assert result.resource.resource_version == 2
        assert a.get(ResourceRef("Pod", "demo", "a")) == result.resource
        assert [e.revision for e in a.changes_since(0)] == [1, 2]
    finally:
        a.close()
        b.close()


def test_concurrent_writers_get_unique_gapless_revisions(db_path: Path) -> None:
    stores = [SqliteStore(db_path) for _ in range(2)]
    errors: list[BaseException] = []

    def write(s: SqliteStore, prefix: str) -> None:
        try:
            for i in range(25):
                s.apply([pod(f"{prefix}-{i}")])
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(s, p)) for s, p in zip(stores, "xy", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert not errors
        events = stores[0].changes_since(0)
        assert [e.revision for e in events] == list(range(1, 51))
        assert all(e.resource.resource_version == e.revision for e in events)
    finally:
        for s in stores:
            s.close()


def test_snapshot_gives_the_revision_of_the_objects_it_lists(store: SqliteStore) -> None:
    store.apply([ns("demo"), pod("a")])
    revision, objects = store.snapshot("Pod")
    assert revision == 2
    assert [r.name for r in objects] == ["a"]


async def test_watch_delivers_changes_in_order_from_this_and_another_store(db_path: Path) -> None:
    watcher, writer = SqliteStore(db_path), SqliteStore(db_path)
    try:
        watcher.apply([ns("demo")])
        task = asyncio.create_task(collect(watcher, 0, 5))
        writer.apply([pod("a", ip="10.0.0.1")])
        writer.apply([pod("a", ip="10.0.0.2")])
        watcher.apply([pod("b")])
        writer.delete([ResourceRef("Pod", "demo", "a")])
        events = await task
    finally:
        watcher.close()
        writer.close()
    assert [(e.type, e.resource.name, e.revision) for e in events] == [
        ("ADDED", "demo", 1),
        ("ADDED", "a", 2),
        ("MODIFIED", "a", 3),
        ("ADDED", "b", 4),
        ("DELETED", "a", 5),
    ]
    assert events[2].resource.status["podIP"] == "10.0.0.2"


async def test_watch_resumes_after_a_revision_and_sees_later_writes(store: SqliteStore) -> None:
    store.apply([ns("a"), ns("b")])
    task = asyncio.create_task(collect(store, 1, 2))
    # Yield once so the watch is usually already polling when "c" is written (it passes either way).
    await asyncio.sleep(0)
    store.apply([ns("c")])
    events = await task
    assert [e.resource.name for e in events] == ["b", "c"]


async def test_watch_sees_writes_of_another_process(store: SqliteStore, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n"
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app, namespace: demo}\n"
    )
    task = asyncio.create_task(collect(store, 0, 2, within=60))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ambientctl",
        "--state-dir",
        str(tmp_path),
        "apply",
        "-f",
        str(manifest),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["namespace/demo created", "serviceaccount/app created"]
    events = await task
    assert [(e.type, str(e.resource.ref)) for e in events] == [
        ("ADDED", "Namespace/demo"),
        ("ADDED", "ServiceAccount/demo/app"),
    ]


async def test_watch_ends_when_the_store_is_closed(store: SqliteStore) -> None:
    async def drain() -> list[WatchEvent]:
        return [e async for e in store.watch(0, poll_interval=0.01)]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0)
    store.close()
    assert await asyncio.wait_for(task, timeout=5) == []

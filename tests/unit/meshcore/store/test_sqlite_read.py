"""``read_objects``: the read-only look at a few stored objects that short-lived readers (the CNI plugin)
use instead of opening a ``SqliteStore``: what it returns, that it never creates or changes a file, that
every file the store refuses it refuses too (with the store's error classes), and what it imports."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from meshcore.store import (
    NotAStore,
    Resource,
    ResourceRef,
    SqliteStore,
    StoreDamaged,
    StoreError,
    StoreSchemaTooNew,
    StoreUnavailable,
    build_resource,
)
from meshcore.store.sqlite_read import read_objects

POD = ResourceRef("Pod", "demo", "web")
NS = ResourceRef("Namespace", "", "demo")


def pod(**labels: str) -> Resource:
    return build_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "demo", "labels": labels},
            "spec": {"nodeName": "node-1"},
        }
    )


def namespace(**labels: str) -> Resource:
    return build_resource(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": labels}}
    )


def test_it_returns_what_the_store_returns_and_none_for_what_is_not_stored(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with SqliteStore(db) as store:
        store.apply([namespace(team="a"), pod(app="web")])
        expected = [store.get(NS), store.get(POD), None]
    assert read_objects(db, [NS, POD, ResourceRef("Pod", "demo", "other")]) == expected


def test_it_sees_a_write_a_running_store_just_made(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with SqliteStore(db) as store:
        store.apply([namespace()])
        assert read_objects(db, [POD]) == [None]
        store.apply([pod(app="web")])
        (seen,) = read_objects(db, [POD])
        assert seen is not None and seen.labels == {"app": "web"}


def test_it_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        read_objects(tmp_path / "store.db", [POD])
    assert list(tmp_path.iterdir()) == []


def test_it_changes_nothing_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with SqliteStore(db) as store:
        store.apply([namespace(), pod()])
    before = db.read_bytes()
    read_objects(db, [NS, POD])
    assert db.read_bytes() == before


def _other_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")


def _newer_schema(path: Path) -> None:
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")


def _damaged_object(path: Path) -> None:
    with SqliteStore(path) as store:
        store.apply([pod()])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE objects SET body = x'7b6e6f7420'")


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda p: p.write_bytes(b""), StoreUnavailable, "not initialised"),
        (lambda p: p.write_bytes(b"not a database, just text" * 100), StoreDamaged, "damaged"),
        (_other_database, NotAStore, "another application"),
        (_newer_schema, StoreSchemaTooNew, "v99"),
        (_damaged_object, StoreDamaged, "cannot be read"),
        (lambda p: p.mkdir(), StoreUnavailable, "does not exist"),
    ],
    ids=[
        "an empty file nobody initialised is refused",
        "a file that is not SQLite is reported damaged",
        "another application's database is not a store",
        "a newer schema is refused",
        "an object that does not decode is reported damaged",
        "a directory is not a store",
    ],
)
def test_a_file_the_store_would_refuse_is_refused_with_a_store_error(
    tmp_path: Path, make, error, words
) -> None:
    db = tmp_path / "store.db"
    make(db)
    with pytest.raises(error, match=words) as caught:
        read_objects(db, [POD])
    assert isinstance(caught.value, StoreError)


def test_a_store_whose_readers_all_closed_can_still_be_read(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with SqliteStore(db) as store:
        store.apply([pod()])
    assert not os.path.exists(f"{db}-shm")  # the last connection removed the WAL files
    (seen,) = read_objects(db, [POD])
    assert seen is not None and seen.name == "web"


def test_importing_it_loads_neither_yaml_nor_structlog_nor_asyncio() -> None:
    probe = (
        "import json, sys, meshcore.store.sqlite_read; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'yaml', 'structlog', 'asyncio', 'rich'})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []

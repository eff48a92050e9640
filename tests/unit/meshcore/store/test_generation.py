"""``metadata.generation`` on the SQLite store, as the API server keeps it: 1 on create, +1 on each spec change,
never on a status, label or annotation write; a generation the writer sends is ignored."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcore.store import ResourceRef, SqliteStore
from meshcore.store.resource import Resource

REF = ResourceRef("AuthorizationPolicy", "demo", "deny")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


def policy(action: str = "DENY", **fields: object) -> Resource:
    return Resource(
        "AuthorizationPolicy", "deny", "demo", "security.istio.io/v1", spec={"action": action, "rules": [{}]}, **fields
    )  # type: ignore[arg-type]


def generation(store: SqliteStore) -> int:
    got = store.get(REF)
    assert got is not None
    return got.generation


def test_create_is_generation_1_and_a_spec_change_adds_one(store: SqliteStore) -> None:
    (created,) = store.apply([policy()])
    assert created.resource.generation == 1 and generation(store) == 1
    (same,) = store.apply([policy()])
    assert same.action == "unchanged" and generation(store) == 1
    (changed,) = store.apply([policy("ALLOW")])
    assert changed.resource.generation == 2 and generation(store) == 2
    assert store.get(REF).to_dict()["metadata"]["generation"] == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s: s.set_status(REF, {"conditions": [{"type": "ZtunnelAccepted"}]}), id="a status write"),
        pytest.param(lambda s: s.set_labels(REF, {"team": "a"}, ()), id="a label write"),
        pytest.param(lambda s: s.set_annotations(REF, {"note": "x"}, ()), id="an annotation write"),
        pytest.param(lambda s: s.apply([policy(labels={"team": "b"})]), id="an apply changing only labels"),
    ],
)
def test_writes_that_leave_the_spec_alone_keep_the_generation(store: SqliteStore, write: object) -> None:
    store.apply([policy()])
    write(store)  # type: ignore[operator]
    assert generation(store) == 1


def test_a_generation_sent_by_the_writer_is_ignored(store: SqliteStore) -> None:
    store.apply([policy(generation=40)])
    assert generation(store) == 1
    store.apply([policy("ALLOW", generation=40)])
    assert generation(store) == 2


def test_set_labels_creating_an_object_makes_generation_1(store: SqliteStore) -> None:
    store.set_labels(ResourceRef("Namespace", "", "demo"), {"istio.io/dataplane-mode": "ambient"}, (), create=True)
    got = store.get(ResourceRef("Namespace", "", "demo"))
    assert got is not None and got.generation == 1


def test_an_object_stored_before_generations_counts_as_generation_1(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore(path) as s:
        s.apply([policy()])
    with sqlite3.connect(path) as db:  # rewrite the row as an older store wrote it: no generation
        (body,) = db.execute("SELECT body FROM objects").fetchone()
        doc = json.loads(body)
        del doc["generation"]
        db.execute("UPDATE objects SET body = ?", (json.dumps(doc).encode(),))
    with SqliteStore(path) as s:
        assert generation(s) == 0
        s.apply([policy(labels={"team": "a"})])
        assert generation(s) == 1
        s.apply([policy("ALLOW")])
        assert generation(s) == 2

"""``metadata.creationTimestamp`` as the API server keeps it: set by the store when an object is created
(RFC 3339, UTC, whole seconds), kept by every later write, a writer's value ignored; read from the API
server on the Kubernetes store and never sent back."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from meshcore.store import ResourceRef, SqliteStore, build_resource
from meshcore.store.kubernetes import to_manifest, to_resource
from meshcore.store.resource import Resource

REF = ResourceRef("AuthorizationPolicy", "demo", "deny")
T0 = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)


class FakeWall:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def wall() -> FakeWall:
    return FakeWall()


@pytest.fixture
def store(tmp_path: Path, wall: FakeWall) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db", wall_clock=wall)
    yield s
    s.close()


def policy(action: str = "DENY", **fields: object) -> Resource:
    return Resource(
        "AuthorizationPolicy",
        "deny",
        "demo",
        "security.istio.io/v1",
        spec={"action": action, "rules": [{}]},
        **fields,
    )  # type: ignore[arg-type]


def created(store: SqliteStore) -> str:
    got = store.get(REF)
    assert got is not None
    return got.creation_timestamp


def test_create_sets_the_time_in_utc_whole_seconds(store: SqliteStore) -> None:
    (result,) = store.apply([policy()])
    assert result.resource.creation_timestamp == "2026-03-04T05:06:07Z" == created(store)
    assert store.get(REF).to_dict()["metadata"]["creationTimestamp"] == "2026-03-04T05:06:07Z"  # type: ignore[union-attr]


def test_a_clock_in_another_zone_is_written_as_utc(tmp_path: Path) -> None:
    plus2 = timezone(timedelta(hours=2))
    with SqliteStore(tmp_path / "s.db", wall_clock=lambda: datetime(2026, 1, 1, 1, 0, 0, tzinfo=plus2)) as s:
        (result,) = s.apply([policy()])
    assert result.resource.creation_timestamp == "2025-12-31T23:00:00Z"


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda s: s.apply([policy("ALLOW")]), id="a spec change keeps it"),
        pytest.param(
            lambda s: s.set_status(REF, {"conditions": [{"type": "ZtunnelAccepted"}]}),
            id="a status write keeps it",
        ),
        pytest.param(lambda s: s.set_labels(REF, {"team": "a"}, ()), id="a label write keeps it"),
        pytest.param(lambda s: s.set_annotations(REF, {"note": "x"}, ()), id="an annotation write keeps it"),
        pytest.param(
            lambda s: s.apply([policy("ALLOW", creation_timestamp="2001-01-01T00:00:00Z")]),
            id="an update sending another time keeps it",
        ),
    ],
)
def test_later_writes_keep_the_creation_time(
    store: SqliteStore, wall: FakeWall, write: Callable[[SqliteStore], object]
) -> None:
    store.apply([policy()])
    wall.now = T0 + timedelta(hours=3)
    write(store)
    assert created(store) == "2026-03-04T05:06:07Z"


def test_a_time_sent_on_create_is_ignored(store: SqliteStore) -> None:
    store.apply([policy(creation_timestamp="2001-01-01T00:00:00Z")])
    assert created(store) == "2026-03-04T05:06:07Z"


def test_an_apply_differing_only_in_the_sent_time_is_unchanged(store: SqliteStore) -> None:
    store.apply([policy()])
    (again,) = store.apply([policy(creation_timestamp="2001-01-01T00:00:00Z")])
    assert again.action == "unchanged"


def test_delete_and_recreate_is_a_new_creation_time(store: SqliteStore, wall: FakeWall) -> None:
    store.apply([policy()])
    store.delete([REF])
    wall.now = T0 + timedelta(minutes=5)
    store.apply([policy()])
    assert created(store) == "2026-03-04T05:11:07Z"


def test_set_labels_creating_an_object_sets_it(store: SqliteStore) -> None:
    ref = ResourceRef("Namespace", "", "demo")
    store.set_labels(ref, {"istio.io/dataplane-mode": "ambient"}, (), create=True)
    got = store.get(ref)
    assert got is not None and got.creation_timestamp == "2026-03-04T05:06:07Z"


def test_a_yaml_creation_timestamp_is_accepted_and_dropped_by_validation() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "demo", "creationTimestamp": "2001-01-01T00:00:00Z"},
    }
    assert build_resource(doc).creation_timestamp == ""


def test_an_object_stored_by_an_older_version_has_none_until_recreated(
    tmp_path: Path, wall: FakeWall
) -> None:
    path = tmp_path / "store.db"
    with SqliteStore(path, wall_clock=wall) as s:
        s.apply([policy()])
    with sqlite3.connect(path) as db:  # the row as an older store wrote it: no creation time
        (body,) = db.execute("SELECT body FROM objects").fetchone()
        doc = json.loads(body)
        del doc["creation_timestamp"]
        db.execute("UPDATE objects SET body = ?", (json.dumps(doc).encode(),))
    with SqliteStore(path, wall_clock=wall) as s:
        assert created(s) == ""
        s.apply([policy("ALLOW")])  # an update does not invent one
        assert created(s) == ""
        assert "creationTimestamp" not in s.get(REF).to_dict()["metadata"]  # type: ignore[union-attr]


def test_the_kubernetes_store_reads_it_and_never_sends_it() -> None:
    obj = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny", "namespace": "demo", "creationTimestamp": "2026-03-04T05:06:07Z"},
        "spec": {"action": "DENY"},
    }
    resource = to_resource(obj, "AuthorizationPolicy")
    assert resource.creation_timestamp == "2026-03-04T05:06:07Z"
    assert "creationTimestamp" not in to_manifest(resource)["metadata"]

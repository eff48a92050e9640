"""``set_annotations``: one object's annotations changed in one transaction, every other field kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcore.store import ResourceNotFound, ResourceRef, SqliteStore, build_resource

REF = ResourceRef("Pod", "demo", "web")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


def _pod(store: SqliteStore) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}, "annotations": {"keep": "1"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": "10.0.0.5"},
    }
    store.apply([build_resource(doc)])


def test_a_missing_object_is_reported_not_created(store: SqliteStore) -> None:
    with pytest.raises(ResourceNotFound):
        store.set_annotations(REF, {"a": "b"}, [])
    assert store.list() == []


def test_adding_and_removing_keeps_labels_spec_status_and_uid(store: SqliteStore) -> None:
    _pod(store)
    before = store.get(REF)
    assert before is not None
    added = store.set_annotations(REF, {"ambient.istio.io/redirection": "enabled"}, [])
    assert added.action == "configured"
    after = store.get(REF)
    assert after is not None
    assert after.annotations == {"keep": "1", "ambient.istio.io/redirection": "enabled"}
    assert (after.labels, after.spec, after.status, after.uid) == (
        before.labels,
        before.spec,
        before.status,
        before.uid,
    )
    assert after.resource_version == store.revision() > before.resource_version
    removed = store.set_annotations(REF, {}, ["ambient.istio.io/redirection", "absent"])
    assert removed.action == "configured"
    assert removed.resource.annotations == {"keep": "1"}


def test_no_change_writes_nothing(store: SqliteStore) -> None:
    _pod(store)
    revision = store.revision()
    assert store.set_annotations(REF, {"keep": "1"}, ["absent"]).action == "unchanged"
    assert store.revision() == revision
    store.set_annotations(REF, {"x": "y"}, [])
    assert [e.type for e in store.changes_since(revision)] == ["MODIFIED"]

"""``set_status``: one object's status replaced in one transaction, every other field kept (a controller's
status write never reverts a concurrent spec change)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcore.store import ResourceNotFound, ResourceRef, SqliteStore, build_resource

REF = ResourceRef("Gateway", "demo", "waypoint")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


def _gateway(store: SqliteStore, listener_port: int = 15008) -> None:
    doc = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "demo", "labels": {"istio.io/waypoint-for": "all"}},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": listener_port, "protocol": "HBONE"}],
        },
    }
    store.apply([build_resource(doc)])


def test_a_missing_object_is_reported_not_created(store: SqliteStore) -> None:
    with pytest.raises(ResourceNotFound):
        store.set_status(REF, {"addresses": []})
    assert store.list() == []


def test_status_is_replaced_and_everything_else_kept(store: SqliteStore) -> None:
    _gateway(store)
    before = store.get(REF)
    assert before is not None
    result = store.set_status(REF, {"addresses": [{"type": "IPAddress", "value": "10.96.0.9"}]})
    assert result.action == "configured"
    after = store.get(REF)
    assert after is not None
    assert after.status == {"addresses": [{"type": "IPAddress", "value": "10.96.0.9"}]}
    assert (after.labels, after.spec, after.uid) == (before.labels, before.spec, before.uid)
    assert after.resource_version == store.revision() > before.resource_version


def test_a_spec_change_made_after_the_read_survives_the_status_write(store: SqliteStore) -> None:
    _gateway(store)
    _gateway(store, listener_port=15009)  # another writer changed the spec meanwhile
    store.set_status(REF, {"conditions": []})
    stored = store.get(REF)
    assert stored is not None and stored.spec["listeners"][0]["port"] == 15009


def test_an_equal_status_writes_nothing(store: SqliteStore) -> None:
    _gateway(store)
    store.set_status(REF, {"addresses": [{"value": "10.96.0.9"}]})
    revision = store.revision()
    assert store.set_status(REF, {"addresses": [{"value": "10.96.0.9"}]}).action == "unchanged"
    assert store.revision() == revision
    assert [e.type for e in store.changes_since(0)] == ["ADDED", "MODIFIED"]

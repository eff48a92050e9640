"""The ``Store`` contract, run against both backends: the embedded SQLite store and the Kubernetes store on
the test kit's API server stand-in. Only what the interface promises for both is asserted here
(atomicity of multi-object writes is SQLite's alone; see test_sqlite.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from meshcore.store import (
    Resource,
    ResourceNotFound,
    ResourceRef,
    Store,
    UnknownKind,
    build_resource,
)


def ns(name: str, **labels: str) -> Resource:
    return build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})


def pod(name: str, namespace: str = "demo", ip: str | None = None, node: str = "node-1") -> Resource:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                           "spec": {"nodeName": node}}
    if ip:
        doc["status"] = {"podIP": ip, "phase": "Running"}
    return build_resource(doc)


def route(name: str = "r", hostname: str = "a.example") -> Resource:
    return build_resource({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "demo"}, "spec": {"hostnames": [hostname]},
    })


def test_apply_creates_then_configures_and_get_returns_what_was_stored(store: Store) -> None:
    first = store.apply([ns("demo"), pod("a")])
    assert [r.action for r in first] == ["created", "created"]
    uid = first[1].resource.uid
    assert uid
    again = store.apply([pod("a", node="node-2")])
    assert again[0].action == "configured"
    got = store.get(ResourceRef("Pod", "demo", "a"))
    assert got is not None and got.spec["nodeName"] == "node-2" and got.uid == uid
    assert got.resource_version > first[1].resource.resource_version


def test_applying_the_same_content_is_unchanged_and_writes_nothing(store: Store) -> None:
    store.apply([ns("demo"), pod("a")])
    before = store.revision()
    assert [r.action for r in store.apply([pod("a")])] == ["unchanged"]
    assert store.revision() == before


def test_list_is_sorted_by_kind_namespace_name_and_filters(store: Store) -> None:
    store.apply([ns("demo"), ns("other"), pod("b"), pod("a"), pod("c", "other")])
    assert [r.name for r in store.list("Pod")] == ["a", "b", "c"]
    assert [r.name for r in store.list("Pod", "other")] == ["c"]
    assert [(r.kind, r.name) for r in store.list(namespace="demo")] == [("Pod", "a"), ("Pod", "b")]


def test_status_is_kept_when_an_apply_gives_none_and_set_when_one_is_given(store: Store) -> None:
    store.apply([ns("demo"), pod("a", ip="10.0.0.1")])
    ref = ResourceRef("Pod", "demo", "a")
    got = store.get(ref)
    assert got is not None and got.status["podIP"] == "10.0.0.1"
    store.apply([pod("a", node="node-2")])
    got = store.get(ref)
    assert got is not None and got.status["podIP"] == "10.0.0.1" and got.spec["nodeName"] == "node-2"


def test_delete_returns_only_what_existed(store: Store) -> None:
    store.apply([ns("demo"), pod("a")])
    refs = [ResourceRef("Pod", "demo", "a"), ResourceRef("Pod", "demo", "missing")]
    assert store.delete(refs) == [refs[0]]
    assert store.get(refs[0]) is None


def test_deleting_a_namespace_deletes_its_contents(store: Store) -> None:
    store.apply([ns("demo"), pod("a")])
    store.delete([ResourceRef("Namespace", "", "demo")])
    assert store.get(ResourceRef("Namespace", "", "demo")) is None
    # At once in SQLite; on Kubernetes the namespace controller deletes the contents after the namespace.
    deadline = time.monotonic() + 10
    while store.get(ResourceRef("Pod", "demo", "a")) is not None:
        assert time.monotonic() < deadline, "the namespace's pod was not deleted"
        time.sleep(0.01)


def test_a_snapshot_then_changes_since_sees_every_later_change_once_in_order(store: Store) -> None:
    store.apply([ns("demo"), pod("a")])
    revision, objects = store.snapshot()
    assert {r.name for r in objects} == {"demo", "a"}
    store.apply([pod("b")])
    store.apply([pod("a", node="node-9")])
    store.delete([ResourceRef("Pod", "demo", "b")])
    events = store.changes_since(revision)
    assert [(e.type, e.resource.name) for e in events] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert [e.revision for e in events] == sorted({e.revision for e in events})
    assert all(e.revision > revision for e in events)
    assert store.changes_since(events[-1].revision) == []


async def test_watch_yields_the_changes_after_its_start(store: Store) -> None:
    store.apply([ns("demo")])
    since = store.revision()
    store.apply([pod("a")])
    seen = []
    async with asyncio.timeout(10):
        async for event in store.watch(since, poll_interval=0.01):
            seen.append((event.type, event.resource.name))
            break
    assert seen == [("ADDED", "a")]


def test_set_labels_adds_and_removes_and_creates_only_when_asked(store: Store) -> None:
    missing = ResourceRef("Namespace", "", "fresh")
    with pytest.raises(ResourceNotFound):
        store.set_labels(missing, {"a": "1"}, [])
    created = store.set_labels(missing, {"istio.io/dataplane-mode": "ambient"}, [], create=True)
    assert created.action == "created"
    changed = store.set_labels(missing, {"b": "2"}, ["istio.io/dataplane-mode"])
    assert changed.action == "configured" and changed.resource.labels == {"b": "2"}
    assert store.set_labels(missing, {"b": "2"}, []).action == "unchanged"


def test_set_annotations_leaves_everything_else(store: Store) -> None:
    store.apply([ns("demo"), pod("a")])
    ref = ResourceRef("Pod", "demo", "a")
    result = store.set_annotations(ref, {"ambient.istio.io/redirection": "enabled"}, [])
    assert result.resource.annotations == {"ambient.istio.io/redirection": "enabled"}
    assert result.resource.spec["nodeName"] == "node-1"
    with pytest.raises(ResourceNotFound):
        store.set_annotations(ResourceRef("Pod", "demo", "zzz"), {"a": "b"}, [])


def test_set_status_writes_the_status_keeps_the_spec_and_skips_equal_writes(store: Store) -> None:
    store.apply([ns("demo"), route()])
    ref = ResourceRef("HTTPRoute", "demo", "r")
    status = {"parents": [{"parentRef": {"name": "svc"}, "controllerName": "istio.io/mesh",
                           "conditions": [{"type": "Accepted", "status": "True"}]}]}
    result = store.set_status(ref, status)
    assert result.action == "configured"
    got = store.get(ref)
    assert got is not None and got.status == status and got.spec == {"hostnames": ["a.example"]}
    before = store.revision()
    assert store.set_status(ref, status).action == "unchanged"
    assert store.revision() == before
    with pytest.raises(ResourceNotFound):
        store.set_status(ResourceRef("HTTPRoute", "demo", "nope"), status)


def test_an_unknown_kind_is_refused(store: Store) -> None:
    with pytest.raises(UnknownKind):
        store.apply([Resource(kind="Widget", name="w", namespace="demo")])

"""Size limits: the Kubernetes annotation limit (256 KiB) and etcd's object limit (1.5 MiB), enforced by
validation and again by the store on every write path, with messages naming the object and the limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.store import (
    InvalidResource,
    Resource,
    ResourceRef,
    ResourceTooLarge,
    SqliteStore,
    build_resource,
    load_documents,
)
from meshcore.store.limits import MAX_ANNOTATIONS_BYTES, MAX_OBJECT_BYTES, annotations_size

KEY = "example.com/blob"


def pod_doc(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "demo"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"nodeName": "node-1", **spec}}


def value_for_total(total: int, key: str = KEY) -> str:
    """An annotation value that makes ``{key: value}`` exactly ``total`` bytes by Kubernetes' count."""
    return "x" * (total - len(key))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


@pytest.mark.parametrize(
    ("annotations", "accepted"),
    [
        ({KEY: value_for_total(MAX_ANNOTATIONS_BYTES)}, True),
        ({KEY: value_for_total(MAX_ANNOTATIONS_BYTES + 1)}, False),
        ({"a": "x" * (MAX_ANNOTATIONS_BYTES // 2), "b": "y" * (MAX_ANNOTATIONS_BYTES // 2)}, False),
        # 3-byte characters: 90,000 characters are 270,000 bytes, over the limit though under it in length.
        ({KEY: "€" * 90_000}, False),
    ],
    ids=[
        "annotations of exactly 256 KiB are accepted",
        "annotations one byte over 256 KiB are refused",
        "the limit is on all annotations together, keys included",
        "the limit counts UTF-8 bytes, not characters",
    ],
)
def test_validation_enforces_the_kubernetes_annotation_limit(annotations: dict[str, str], accepted: bool) -> None:
    if accepted:
        assert annotations_size(build_resource(pod_doc(annotations)).annotations) == MAX_ANNOTATIONS_BYTES
        return
    with pytest.raises(InvalidResource) as info:
        build_resource(pod_doc(annotations), "big.yaml", 1)
    message = str(info.value)
    assert info.value.path == "$.metadata.annotations"
    assert "Pod demo/web" in message and "big.yaml" in message
    assert f"over the limit of {MAX_ANNOTATIONS_BYTES} bytes" in message and "256 KiB" in message


def test_a_50_mb_annotation_in_yaml_is_refused_and_the_store_does_not_grow(
    store: SqliteStore, tmp_path: Path
) -> None:
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: demo\n"
        f"  annotations:\n    {KEY}: {'x' * (50 * 1024 * 1024)}\nspec:\n  nodeName: node-1\n"
    )
    before = (tmp_path / "store.db").stat().st_size
    with pytest.raises(InvalidResource, match="annotations: 52428816 bytes in total"):
        load_documents(text, "huge.yaml")
    assert store.revision() == 0
    assert (tmp_path / "store.db").stat().st_size == before


def test_the_store_refuses_oversized_annotations_that_bypass_validation(store: SqliteStore) -> None:
    store.apply([build_resource(pod_doc({"keep": "me"}))])
    ref = ResourceRef("Pod", "demo", "web")
    # With the stored "keep: me" (6 bytes), one byte over the limit.
    with pytest.raises(ResourceTooLarge) as info:
        store.set_annotations(ref, {KEY: value_for_total(MAX_ANNOTATIONS_BYTES + 1 - 6)}, [])
    assert str(info.value).startswith("Pod/demo/web: its annotations total 262145 bytes, over the limit of 262144")
    assert (info.value.size, info.value.limit) == (MAX_ANNOTATIONS_BYTES + 1, MAX_ANNOTATIONS_BYTES)
    stored = store.get(ref)
    assert stored is not None and stored.annotations == {"keep": "me"}
    assert store.revision() == 1
    assert store.rejected_writes == {"annotations_too_large": 1}


def test_the_store_refuses_an_object_over_etcds_limit_and_applies_nothing_of_the_batch(
    store: SqliteStore,
) -> None:
    small = build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    # Labels and spec are not limited by validation; together they exceed 1.5 MiB.
    big = build_resource(pod_doc(nodeSelector={f"k{i}": "y" * 1024 for i in range(MAX_OBJECT_BYTES // 1024)}))
    with pytest.raises(ResourceTooLarge) as info:
        store.apply([small, big])
    message = str(info.value)
    assert message.startswith("Pod/demo/web: the stored object is ")
    assert f"over the limit of {MAX_OBJECT_BYTES} bytes" in message and "etcd" in message
    assert store.list() == []
    assert store.revision() == 0
    assert store.rejected_writes == {"object_too_large": 1}


def test_an_object_just_under_etcds_limit_is_stored(store: SqliteStore) -> None:
    # The body adds the metadata and JSON framing to the spec; leave it 4 KiB of room.
    (result,) = store.apply([build_resource(pod_doc(hostname="y" * (MAX_OBJECT_BYTES - 4096)))])
    assert result.action == "created"
    got = store.get(ResourceRef("Pod", "demo", "web"))
    assert isinstance(got, Resource) and len(got.spec["hostname"]) == MAX_OBJECT_BYTES - 4096

"""The Kubernetes store's reflectors against the API stand-in: other clients' writes reach the cache in
order, a 410 Gone re-lists without losing or repeating a resource, errors back off and recover, a kind
whose CRD is missing is empty (and named), a stale update is retried, status goes by server-side apply."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshcore.store import ResourceRef, StoreUnavailable, build_resource
from meshcore.store.kubernetes import (
    DEFAULT_KINDS,
    Backoff,
    KubernetesStore,
    rbac_rules,
    to_manifest,
    to_resource,
)
from meshcore.testing.kube_api import ApiResource, KubeApiServer, ThreadedKubeApi, mesh_resources


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        yield server


def connect(api: ThreadedKubeApi, **kwargs: Any) -> KubernetesStore:
    return KubernetesStore.connect(host=api.url, sync_timeout=10, write_timeout=10, **kwargs)


def eventually(check: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def pod_doc(name: str, namespace: str = "demo", node: str = "node-1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node}}


def ns_doc(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def test_other_clients_writes_reach_the_cache_in_order(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, ns_doc("demo"))
    with connect(api) as store:
        start = store.revision()
        api.call(api.server.put_object, pod_doc("a"))
        api.call(api.server.put_object, pod_doc("a", node="node-2"))
        api.call(api.server.delete_object, "Pod", "demo", "a")
        eventually(lambda: len(store.changes_since(start)) == 3, "three events")
        assert [e.type for e in store.changes_since(start)] == ["ADDED", "MODIFIED", "DELETED"]
        assert store.changes_since(start)[1].resource.spec == {"nodeName": "node-2"}


def test_a_410_gone_relists_without_losing_or_repeating_a_resource(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, ns_doc("demo"))
    for name in ("keep", "change", "vanish"):
        api.call(api.server.put_object, pod_doc(name))
    with connect(api) as store:
        start, before = store.snapshot("Pod")
        assert [p.name for p in before] == ["change", "keep", "vanish"]

        def behind_the_watchs_back() -> None:
            # Changes the open watches will never stream: the history is compacted and the streams cut,
            # so resuming from the last version seen must get 410 and re-list.
            server = api.server
            server.stall_watches()
            server.put_object(pod_doc("change", node="node-2"))
            server.delete_object("Pod", "demo", "vanish")
            server.put_object(pod_doc("new"))
            server.compact()
            server.close_watches()

        api.call(behind_the_watchs_back)
        eventually(lambda: store.stats["relists_gone"] >= 1 and store.get(ResourceRef("Pod", "demo", "new")) is not None,
                   "the re-list")
        events = [(e.type, e.resource.name) for e in store.changes_since(start)]
        assert sorted(events) == [("ADDED", "new"), ("DELETED", "vanish"), ("MODIFIED", "change")]
        assert [p.name for p in store.list("Pod")] == ["change", "keep", "new"]
        assert store.get(ResourceRef("Pod", "demo", "change")).spec == {"nodeName": "node-2"}  # type: ignore[union-attr]


def test_lists_are_read_in_chunks_with_continue_tokens(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, ns_doc("demo"))
    for i in range(7):
        api.call(api.server.put_object, pod_doc(f"p{i}"))
    with connect(api, page_size=3) as store:
        assert [p.name for p in store.list("Pod")] == [f"p{i}" for i in range(7)]
        pod_lists = [r for r in api.server.requests if r.verb == "list" and r.resource == "pods"]
        assert len(pod_lists) == 3  # 3 + 3 + 1


def test_an_expired_continue_token_lists_again_from_the_start_without_losing_or_repeating_a_pod(
    api: ThreadedKubeApi,
) -> None:
    api.call(api.server.put_object, ns_doc("demo"))
    for i in range(5):
        api.call(api.server.put_object, pod_doc(f"p{i}"))
    api.call(api.server.expire_continue_tokens, 1)
    with connect(api, page_size=2) as store:
        assert store.stats["list_continue_expired"] == 1
        added = [e.resource.name for e in store.changes_since(0) if e.resource.kind == "Pod"]
        assert added == [f"p{i}" for i in range(5)]


def test_with_max_sync_failures_an_unreachable_server_fails_the_start_naming_the_failures() -> None:
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:9: the initial list failed 1 time"):
        KubernetesStore.connect(host="http://127.0.0.1:9", sync_timeout=60, max_sync_failures=1)


def test_bookmarks_are_taken_as_the_version_to_resume_from(api: ThreadedKubeApi) -> None:
    with connect(api) as store:
        eventually(lambda: api.call(api.server.open_watches) == len(DEFAULT_KINDS), "every watch open")
        api.call(api.server.send_bookmarks)
        eventually(lambda: store.stats["bookmarks"] >= len(DEFAULT_KINDS), "bookmarks")


def test_failed_requests_back_off_and_recover(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, ns_doc("demo"))
    api.call(api.server.fail_next, 503, 15)
    with connect(api) as store:
        assert store.stats["watch_errors"] >= 1
        assert store.get(ResourceRef("Namespace", "", "demo")) is not None


def test_a_kind_whose_crd_is_missing_is_served_empty_and_named() -> None:
    served = [r for r in mesh_resources() if r.group != "gateway.networking.k8s.io"]
    with ThreadedKubeApi(KubeApiServer(served)) as api, connect(api) as store:
        assert store.list("HTTPRoute") == []
        assert store.missing_kinds == ["GRPCRoute", "Gateway", "HTTPRoute"]


def test_an_unreachable_api_server_is_unavailable_with_the_kinds_not_listed() -> None:
    with pytest.raises(StoreUnavailable, match=r"initial list of .*Pod.* did not complete within 0.5s"):
        KubernetesStore.connect(host="http://127.0.0.1:9", sync_timeout=0.5)


def test_a_stale_update_is_retried_on_the_current_version(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, ns_doc("demo"))
    api.call(api.server.put_object, pod_doc("a"))
    with connect(api) as store:
        api.call(api.server.fail_next, 409, 1, "update")
        result = store.apply([build_resource(pod_doc("a", node="node-2"))])
        assert result[0].action == "configured" and store.stats["conflicts"] == 1
        assert api.call(api.server.get_object, "Pod", "demo", "a")["spec"]["nodeName"] == "node-2"


def test_status_is_written_by_server_side_apply_under_the_field_manager(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, ns_doc("demo"))
    api.call(api.server.put_object, {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                                     "metadata": {"name": "r", "namespace": "demo"}, "spec": {}})
    with connect(api, field_manager="istiod-lite") as store:
        store.set_status(ResourceRef("HTTPRoute", "demo", "r"), {"parents": []})
        stored = api.call(api.server.get_object, "HTTPRoute", "demo", "r")
        assert stored["status"] == {"parents": []}
        managers = {(f["manager"], f.get("subresource")) for f in stored["metadata"]["managedFields"]}
        assert ("istiod-lite", "status") in managers
        patches = [r for r in api.server.requests if r.verb == "patch"]
        assert [(r.resource, r.subresource) for r in patches] == [("httproutes", "status")]


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        (pod_doc("a"), "Pod"),
        ({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": "demo"},
          "automountServiceAccountToken": False}, "ServiceAccount"),
        (ns_doc("demo"), "Namespace"),
    ],
    ids=["a pod keeps spec and status", "a service account's top-level fields round-trip",
         "a namespace has no namespace"],
)
def test_api_objects_convert_to_resources_and_back(doc: dict[str, Any], kind: str) -> None:
    resource = to_resource({**doc, "metadata": {**doc["metadata"], "resourceVersion": "7", "uid": "u"}}, kind)
    assert resource.uid == "u" and resource.resource_version == 0
    assert to_manifest(resource) == {k: v for k, v in doc.items() if k != "status"}


def test_backoff_grows_to_its_cap_and_resets() -> None:
    import random

    b = Backoff(base=0.1, cap=1.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    assert all(0.05 <= d <= 1.0 for d in delays) and delays[-1] >= 0.5
    b.reset()
    assert b.next() <= 0.1


def test_the_stand_in_serves_every_kind_the_store_holds() -> None:
    from meshcore.store.resource import KINDS

    kinds = {r.kind for r in mesh_resources()}
    assert set(KINDS) <= kinds and isinstance(mesh_resources()[0], ApiResource)
    assert set(DEFAULT_KINDS) <= set(KINDS)  # the backend watches only kinds the store knows


def test_the_rbac_rules_grant_exactly_the_calls_the_store_makes(api: ThreadedKubeApi) -> None:
    """Every Store method on Pods (the verbs are the same for every kind), then: each recorded call is
    granted, each verb granted on pods and pods/status was used, and every kind was listed and watched."""
    api.call(api.server.put_object, ns_doc("demo"))
    with connect(api) as store:
        ref = ResourceRef("Pod", "demo", "a")
        store.apply([build_resource({**pod_doc("a"), "status": {"podIP": "10.0.0.1"}})])
        api.call(api.server.fail_next, 409, 1, "update")
        store.apply([build_resource({**pod_doc("a", node="node-2"), "status": {"podIP": "10.0.0.1"}})])
        store.set_labels(ref, {"a": "b"}, [])
        store.set_annotations(ref, {"a": "b"}, [])
        store.set_status(ref, {"podIP": "10.0.0.2"})
        store.delete([ref])
        eventually(lambda: api.call(api.server.open_watches) == len(DEFAULT_KINDS), "every watch open")
    recorded = {(r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb)
                for r in api.server.requests}
    granted = {(g, res, v) for rule in rbac_rules() for g in rule["apiGroups"] for res in rule["resources"]
               for v in rule["verbs"]}
    assert recorded <= granted
    for resource in ("pods", "pods/status"):
        assert {v for g, r, v in granted if r == resource} == {v for g, r, v in recorded if r == resource}
    assert {(g, r) for g, r, v in granted if "/" not in r} == {(g, r) for g, r, v in recorded if v == "watch"}


def test_a_missing_kubeconfig_is_unavailable_naming_the_file(tmp_path: Any) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(StoreUnavailable, match=f"kubeconfig {missing}"):
        KubernetesStore.connect(kubeconfig=str(missing), sync_timeout=1)

"""The Kubernetes store with a field selector per kind (the CNI node agent's view): only the selected
objects are listed, watched and cached, across a 410 re-list too; a pod scheduled onto the node arrives,
one that leaves goes; annotations are one merge patch under the store's field manager; and the node
agent's RBAC is exactly the calls its store makes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshcore.store import ResourceRef, StoreError
from meshcore.store.kubernetes import (
    NODE_AGENT_FIELD_MANAGER,
    NODE_AGENT_KINDS,
    KubernetesStore,
    node_agent_field_selectors,
    node_agent_rbac_rules,
    reader_rbac_rules,
)
from meshcore.testing.kube_api import ThreadedKubeApi


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        for ns in ("demo", "other"):
            server.call(server.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield server


def node_agent_store(api: ThreadedKubeApi, node: str = "node-1", **kwargs: Any) -> KubernetesStore:
    return KubernetesStore.connect(
        host=api.url, kinds=NODE_AGENT_KINDS, field_selectors=node_agent_field_selectors(node),
        field_manager=NODE_AGENT_FIELD_MANAGER, sync_timeout=10, write_timeout=10, **kwargs,
    )


def pod(name: str, node: str | None, ns: str = "demo") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node} if node else {}}


def eventually(check: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def pods(store: KubernetesStore) -> list[str]:
    return [f"{p.namespace}/{p.name}" for p in store.list("Pod")]


def test_only_the_nodes_pods_are_cached_and_one_scheduled_there_later_arrives(api: ThreadedKubeApi) -> None:
    for doc in (pod("a", "node-1"), pod("b", "node-2"), pod("c", "node-1", "other"), pod("pending", None)):
        api.call(api.server.put_object, doc)
    with node_agent_store(api) as store:
        assert pods(store) == ["demo/a", "other/c"]
        assert [n.name for n in store.list("Namespace")] == ["demo", "other"]  # every namespace
        start = store.revision()
        api.call(api.server.put_object, pod("pending", "node-1"))  # scheduled here
        api.call(api.server.put_object, pod("d", "node-2"))  # elsewhere: never seen
        api.call(api.server.put_object, pod("a", "node-3"))  # leaves the selection
        eventually(lambda: len(store.changes_since(start)) == 2, "two events")
        assert [(e.type, e.resource.name) for e in store.changes_since(start)] == [
            ("ADDED", "pending"), ("DELETED", "a")]
        assert pods(store) == ["demo/pending", "other/c"]
    lists = [r for r in api.server.requests if r.resource == "pods" and r.verb in ("list", "watch")]
    assert lists and all(r.namespace == "" for r in lists)  # one cluster-wide, selected collection


def test_a_410_relist_keeps_the_selection(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, pod("a", "node-1"))
    with node_agent_store(api) as store:
        start = store.revision()

        def behind_the_watchs_back() -> None:
            server = api.server
            server.stall_watches()
            server.put_object(pod("b", "node-1"))
            server.put_object(pod("x", "node-2"))
            server.compact()
            server.close_watches()

        api.call(behind_the_watchs_back)
        eventually(lambda: store.stats["relists_gone"] >= 1 and "demo/b" in pods(store), "the re-list")
        assert pods(store) == ["demo/a", "demo/b"]
        assert [(e.type, e.resource.name) for e in store.changes_since(start)] == [("ADDED", "b")]


def test_annotations_are_a_merge_patch_under_the_stores_field_manager(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, pod("a", "node-1"))
    with node_agent_store(api) as store:
        result = store.set_annotations(ResourceRef("Pod", "demo", "a"), {"ambient.istio.io/redirection": "enabled"}, [])
        assert result.action == "configured"
        assert result.resource.annotations == {"ambient.istio.io/redirection": "enabled"}
    stored = api.call(api.server.get_object, "Pod", "demo", "a")
    assert stored["metadata"]["annotations"] == {"ambient.istio.io/redirection": "enabled"}
    assert NODE_AGENT_FIELD_MANAGER in {f["manager"] for f in stored["metadata"]["managedFields"]}


def test_the_node_agents_rbac_is_exactly_the_calls_its_store_makes(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, pod("a", "node-1"))
    with node_agent_store(api) as store:
        ref = ResourceRef("Pod", "demo", "a")
        store.set_annotations(ref, {"ambient.istio.io/redirection": "enabled"}, [])
        store.set_annotations(ref, {}, ["ambient.istio.io/redirection"])
        assert store.read_live(ref) is not None and store.read_live(ResourceRef("Namespace", "", "demo")) is not None
        eventually(lambda: api.call(api.server.open_watches) == len(NODE_AGENT_KINDS), "every watch open")
    recorded = {(r.group, r.resource, r.verb) for r in api.server.requests}
    granted = {(g, res, v) for rule in node_agent_rbac_rules() for g in rule["apiGroups"]
               for res in rule["resources"] for v in rule["verbs"]}
    assert recorded == granted
    assert node_agent_rbac_rules() == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
    ]


def test_a_live_read_sees_what_the_stalled_watch_has_not_delivered_and_leaves_the_cache_alone(
    api: ThreadedKubeApi,
) -> None:
    with node_agent_store(api) as store:
        eventually(lambda: api.call(api.server.open_watches) == len(NODE_AGENT_KINDS), "every watch open")
        api.call(api.server.stall_watches)
        created = api.call(api.server.put_object, pod("new", "node-1"))
        ref = ResourceRef("Pod", "demo", "new")
        live = store.read_live(ref, timeout=5)
        assert live is not None and live.uid == created["metadata"]["uid"]
        assert live.spec["nodeName"] == "node-1" and live.resource_version == 0
        assert store.get(ref) is None  # the cache is the watch's alone
        assert store.read_live(ResourceRef("Pod", "demo", "never-created")) is None


@pytest.mark.parametrize(
    ("status", "message"),
    [(403, "refused the read: 403.*RBAC: grant get on pods"), (500, "refused the read: 500")],
    ids=["a forbidden read names the RBAC grant", "a server error is named with its status"],
)
def test_a_refused_live_read_raises_a_store_error_naming_the_api_server(
    api: ThreadedKubeApi, status: int, message: str
) -> None:
    with node_agent_store(api) as store:
        api.call(api.server.fail_next, status, 1, "get")
        with pytest.raises(StoreError, match=message) as raised:
            store.read_live(ResourceRef("Pod", "demo", "a"), timeout=5)
        assert api.url in str(raised.value)


BAD_SETTINGS = [
    ("a selector for a kind the store does not watch", lambda api: KubernetesStore.connect(
        host=api.url, kinds=("Pod",), field_selectors={"Service": "metadata.name=x"}), "Service"),
    ("a node name that would change the selector", lambda api: node_agent_field_selectors("a,b"), "node name"),
    ("an empty node name", lambda api: node_agent_field_selectors(""), "node name"),
    ("a patched kind the store does not read", lambda api: reader_rbac_rules(["Namespace"], patched=["Pod"]),
     "Pod"),
    ("a live-read kind the store does not read", lambda api: reader_rbac_rules(["Namespace"], live=["Pod"]),
     "live-read kinds"),
]


@pytest.mark.parametrize(("case", "make", "message"), BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_a_setting_that_cannot_be_served_is_refused_at_once(
    api: ThreadedKubeApi, case: str, make: Callable[[ThreadedKubeApi], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make(api)

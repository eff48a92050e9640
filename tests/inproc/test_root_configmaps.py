"""The mesh root in ``istio-ca-root-cert`` in every namespace (``istiod_lite.ca.secret.RootPublisher``),
against the API stand-in: published in each namespace but Kubernetes' own and terminating ones, in a new
namespace as it is added, again where a user deleted it, with only the root's key rewritten where a user
edited it; a new root everywhere; nothing written by a follower; one namespace's failure leaves the others
published and is retried; only the verbs the manifests' ClusterRole grants used."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry

from istiod_lite.ca.secret import CONFIGMAP_VERBS, ROOT_CONFIGMAP, RootPublisher
from meshcore.store.kubernetes import load_configuration
from meshcore.store.resource import Resource
from meshcore.testing.kube_api import ThreadedKubeApi

ROOT = "-----BEGIN CERTIFICATE-----\nroot one\n-----END CERTIFICATE-----\n"
NEW_ROOT = "-----BEGIN CERTIFICATE-----\nroot two\n-----END CERTIFICATE-----\n"
DEADLINE = 10.0


class Cluster:
    """The stand-in, the namespaces the publisher is told of (as the store's cache would have them) and
    whether this replica leads."""

    def __init__(self, api: ThreadedKubeApi) -> None:
        self.api = api
        self.namespaces: list[Resource] = []
        self.leading = True

    def add_namespace(self, name: str, phase: str = "Active") -> None:
        self.api.call(self.api.server.put_object, {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": name}, "status": {"phase": phase}})
        self.namespaces.append(Resource(kind="Namespace", name=name, status={"phase": phase}))

    def root_in(self, namespace: str) -> str | None:
        got = self.api.call(self.api.server.get_object, "ConfigMap", namespace, ROOT_CONFIGMAP)
        return None if got is None else str(got["data"]["root-cert.pem"])

    def configmap(self, namespace: str) -> dict[str, Any]:
        got = self.api.call(self.api.server.get_object, "ConfigMap", namespace, ROOT_CONFIGMAP)
        assert got is not None
        return dict(got)

    def writes(self) -> list[tuple[str, str]]:
        return [(r.verb, r.namespace) for r in self.api.server.requests
                if r.resource == "configmaps" and r.verb not in ("get", "list")]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with ThreadedKubeApi() as api:
        c = Cluster(api)
        for name in ("istio-system", "demo", "shop", "kube-system"):
            c.add_namespace(name)
        c.add_namespace("leaving", phase="Terminating")
        yield c


@pytest.fixture
async def publisher(cluster: Cluster) -> AsyncIterator[RootPublisher]:
    p = RootPublisher(ApiClient(load_configuration(host=cluster.api.url)), ROOT,
                      namespaces=lambda: list(cluster.namespaces), is_leader=lambda: cluster.leading,
                      metrics=CollectorRegistry(), resync_seconds=3600)
    task = asyncio.create_task(p.run())
    try:
        yield p
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await p.api.close()


async def until(predicate: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not await asyncio.to_thread(predicate):
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


async def test_every_namespace_gets_the_root_but_kubernetes_own_and_terminating_ones(
    cluster: Cluster, publisher: RootPublisher
) -> None:
    await until(lambda: publisher.passes == 1, "the first pass")
    assert {ns: cluster.root_in(ns) for ns in ("istio-system", "demo", "shop", "kube-system", "leaving")} == {
        "istio-system": ROOT, "demo": ROOT, "shop": ROOT, "kube-system": None, "leaving": None,
    }
    assert cluster.configmap("demo")["metadata"]["labels"] == {"app.kubernetes.io/part-of": "ambient-mesh"}
    publisher.everywhere()
    await until(lambda: publisher.passes == 2, "a second pass")
    assert sorted(cluster.writes()) == [("create", "demo"), ("create", "istio-system"), ("create", "shop")]
    lists = [r for r in cluster.api.server.requests if r.resource == "configmaps" and r.verb == "list"]
    assert len(lists) == 2 and all(r.namespace == "" for r in lists)  # one cluster-wide list a pass


async def test_a_new_namespace_gets_it_when_it_is_added(cluster: Cluster, publisher: RootPublisher) -> None:
    await until(lambda: publisher.passes == 1, "the first pass")
    cluster.add_namespace("late")
    publisher.namespaces_added(["late"])
    await until(lambda: cluster.root_in("late") == ROOT, "the root in the new namespace")
    assert publisher.passes == 1  # that namespace alone, not another pass over all


async def test_a_users_edit_keeps_everything_but_the_root_and_a_deleted_one_comes_back(
    cluster: Cluster, publisher: RootPublisher
) -> None:
    await until(lambda: publisher.passes == 1, "the first pass")
    edited = cluster.configmap("demo")
    edited["metadata"]["labels"]["team"] = "payments"
    edited["data"] = {"root-cert.pem": "tampered", "extra.pem": "a user's key"}
    cluster.api.call(cluster.api.server.put_object, edited)
    cluster.api.call(cluster.api.server.delete_object, "ConfigMap", "shop", ROOT_CONFIGMAP)
    publisher.everywhere()  # what the periodic resync does
    await until(lambda: publisher.passes == 2, "the resync pass")
    demo = cluster.configmap("demo")
    assert demo["data"] == {"root-cert.pem": ROOT, "extra.pem": "a user's key"}
    assert demo["metadata"]["labels"]["team"] == "payments"
    assert cluster.root_in("shop") == ROOT


async def test_the_periodic_resync_needs_no_trigger(cluster: Cluster) -> None:
    p = RootPublisher(ApiClient(load_configuration(host=cluster.api.url)), ROOT,
                      namespaces=lambda: list(cluster.namespaces), is_leader=lambda: True,
                      metrics=CollectorRegistry(), resync_seconds=0.05)
    task = asyncio.create_task(p.run())
    try:
        await until(lambda: p.passes >= 1, "the first pass")
        cluster.api.call(cluster.api.server.delete_object, "ConfigMap", "shop", ROOT_CONFIGMAP)
        await until(lambda: cluster.root_in("shop") == ROOT, "the deleted ConfigMap back")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await p.api.close()


async def test_a_new_root_is_published_everywhere(cluster: Cluster, publisher: RootPublisher) -> None:
    await until(lambda: publisher.passes == 1, "the first pass")
    publisher.set_root(NEW_ROOT)
    await until(lambda: publisher.passes == 2, "the pass for the new root")
    assert {cluster.root_in(ns) for ns in ("istio-system", "demo", "shop")} == {NEW_ROOT}


async def test_a_follower_writes_nothing_until_it_leads(cluster: Cluster) -> None:
    cluster.leading = False
    p = RootPublisher(ApiClient(load_configuration(host=cluster.api.url)), ROOT,
                      namespaces=lambda: list(cluster.namespaces), is_leader=lambda: cluster.leading,
                      metrics=CollectorRegistry(), resync_seconds=3600)
    task = asyncio.create_task(p.run())
    try:
        await until(lambda: p.declined == 1, "the first pass declined")
        p.namespaces_added(["demo"])
        await until(lambda: p.declined == 2, "the new namespace declined")
        assert cluster.writes() == [] and p.passes == 0
        cluster.leading = True
        p.everywhere()  # what taking the lease does
        await until(lambda: p.passes == 1, "the pass on taking the lease")
        assert cluster.root_in("demo") == ROOT
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await p.api.close()


async def test_one_namespace_failing_leaves_the_others_published_and_is_retried(
    cluster: Cluster, publisher: RootPublisher
) -> None:
    await until(lambda: publisher.passes == 1, "the first pass")
    for ns in ("demo", "istio-system", "shop"):
        cluster.api.call(cluster.api.server.delete_object, "ConfigMap", ns, ROOT_CONFIGMAP)
    cluster.api.call(cluster.api.server.fail_next, 500, 1, "create")  # the first create of the pass fails
    publisher.everywhere()
    await until(lambda: publisher.passes == 2, "the pass with a failure")
    missing = [ns for ns in ("demo", "istio-system", "shop") if cluster.root_in(ns) is None]
    assert missing == ["istio-system"]  # the first namespace's create failed; the others went on
    publisher.everywhere()
    await until(lambda: publisher.passes == 3, "the retry")
    assert cluster.root_in("istio-system") == ROOT


async def test_only_the_verbs_the_cluster_role_grants_are_used(cluster: Cluster, publisher: RootPublisher) -> None:
    await until(lambda: publisher.passes == 1, "the first pass")
    edited = cluster.configmap("demo")
    edited["data"] = {"root-cert.pem": "old"}
    cluster.api.call(cluster.api.server.put_object, edited)
    publisher.everywhere()
    await until(lambda: publisher.passes == 2 and cluster.root_in("demo") == ROOT, "another pass")
    cluster.add_namespace("late")
    publisher.namespaces_added(["late"])
    await until(lambda: cluster.root_in("late") == ROOT, "the new namespace")
    used = {r.verb for r in cluster.api.server.requests if r.resource == "configmaps"}
    assert used == set(CONFIGMAP_VERBS)

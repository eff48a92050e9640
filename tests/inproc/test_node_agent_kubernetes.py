"""The CNI node agent on the Kubernetes store (STORE=kubernetes, a kubeconfig) against the API stand-in:
its store holds only its own node's pods (a pod on another node is never listed, not even in an enrolled
namespace); an enrolled pod on its node, and one scheduled there later, are captured, handed to ztunnel
and annotated on the API server under the field manager ``ztunnel-node-agent``; every call it made is
one its ClusterRole grants. One process, no root: a recording redirector and a fake ztunnel, each pod's
"netns" this process's own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.enrollment import REDIRECTION_ANNOTATION
from meshcore.store import Store
from meshcore.store.kubernetes import NODE_AGENT_FIELD_MANAGER, node_agent_rbac_rules
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig
from ztunnel.cni.agent import open_store
from ztunnel.cni.events import PluginEvent, send_event
from ztunnel.cni.testing import FakeZtunnel, agent_config, agent_running, eventually

TIMEOUT = 10.0


class RecordingRedirector:
    """Counts applies and removes (the kernel step is not what this test is about)."""

    def __init__(self) -> None:
        self.applied = 0
        self.removed = 0

    async def apply(self, netns_fd: int) -> None:
        self.applied += 1

    async def remove(self, netns_fd: int) -> None:
        self.removed += 1


def pod(name: str, node: str | None, ns: str = "demo") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node} if node else {}, "status": {"phase": "Running"}}


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        server.call(server.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}})
        yield server


def annotation(api: ThreadedKubeApi, name: str) -> str | None:
    obj = api.call(api.server.get_object, "Pod", "demo", name)
    value: str | None = (obj["metadata"].get("annotations") or {}).get(REDIRECTION_ANNOTATION)
    return value


async def plugin_add(config: Any, name: str) -> None:
    event = PluginEvent(cmd="add", pod_namespace="demo", pod_name=name, container_id=f"c-{name}",
                        netns="/proc/self/ns/net")
    await asyncio.to_thread(send_event, str(config.event_socket), event, TIMEOUT)


async def test_the_node_agent_reads_only_its_nodes_pods_and_annotates_them_as_itself(
    tmp_path: Path, api: ThreadedKubeApi
) -> None:
    api.call(api.server.put_object, pod("here", "node-1"))
    api.call(api.server.put_object, pod("elsewhere", "node-2"))
    api.call(api.server.put_object, pod("later", None))
    config = agent_config(tmp_path, store="kubernetes",
                          kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)))
    store: Store = await asyncio.to_thread(open_store, config)
    redirector = RecordingRedirector()
    try:
        assert [p.name for p in store.list("Pod")] == ["here"]
        async with agent_running(config, store, redirector) as agent, FakeZtunnel(config.zds_socket):
            await plugin_add(config, "here")
            await eventually(lambda: annotation(api, "here") == "enabled", "the pod on this node annotated",
                             within=TIMEOUT)
            stored = api.call(api.server.get_object, "Pod", "demo", "here")
            assert NODE_AGENT_FIELD_MANAGER in {f["manager"] for f in stored["metadata"]["managedFields"]}
            assert [handed for _, handed in agent.captured().values()] == [True]

            api.call(api.server.put_object, pod("later", "node-1"))  # scheduled onto this node
            await eventually(lambda: any(p.name == "later" for p in store.list("Pod")),
                             "the pod scheduled here in the store", within=TIMEOUT)
            await plugin_add(config, "later")
            await eventually(lambda: annotation(api, "later") == "enabled", "the later pod annotated",
                             within=TIMEOUT)
            assert len(agent.captured()) == 2 and redirector.applied == 2

            # The enrolled pod on node-2 was never listed, watched into the store, captured or annotated.
            assert sorted(p.name for p in store.list("Pod")) == ["here", "later"]
            assert annotation(api, "elsewhere") is None
    finally:
        await asyncio.to_thread(store.close)
    recorded = {(r.group, r.resource, r.verb) for r in api.server.requests}
    granted = {(g, res, v) for rule in node_agent_rbac_rules() for g in rule["apiGroups"]
               for res in rule["resources"] for v in rule["verbs"]}
    assert recorded <= granted, recorded - granted
    assert ("", "pods", "patch") in recorded

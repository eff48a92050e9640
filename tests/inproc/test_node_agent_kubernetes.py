"""The CNI node agent on the Kubernetes store (STORE=kubernetes, a kubeconfig) against the API stand-in:
its store holds only its own node's pods (a pod on another node is never listed, not even in an enrolled
namespace); an enrolled pod on its node, and one scheduled there later, are captured, handed to ztunnel
and annotated on the API server under the field manager ``ztunnel-node-agent``; every call it made is
one its ClusterRole grants. With the plugin in ``enrollment: agent`` mode (what the host install writes on
Kubernetes) the agent decides: a pod its watch has not delivered yet (the watches stalled) is read live
from the API server and captured, or passed when its namespace is not enrolled; a pod recreated under the
same name is decided as the new one; an API server that refuses the read fails the ADD. One process, no
root: a recording redirector and a fake ztunnel, each pod's "netns" this process's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.enrollment import REDIRECTION_ANNOTATION
from meshcore.store import ResourceRef, Store
from meshcore.store.kubernetes import NODE_AGENT_FIELD_MANAGER, node_agent_rbac_rules
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig
from ztunnel.cni.agent import NodeAgent, open_store
from ztunnel.cni.config import NodeAgentConfig
from ztunnel.cni.events import PluginEvent, send_event
from ztunnel.cni.plugin import run as run_plugin
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


# -- the plugin in agent mode: the agent decides, reading the API server live when its watch lags ----------

PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.9/24"}]}


async def plugin_add_deciding_agent(config: NodeAgentConfig, name: str, uid: str, ns: str = "demo") -> tuple[int, Any]:
    """The real plugin's ADD (in a thread, as the runtime's process would block) with the entry the host
    install writes: (exit status, its stdout as JSON)."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c-{name}", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}"}
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni", "enrollment": "agent",
            "cni_event_address": str(config.event_socket), "event_timeout": TIMEOUT, "prevResult": PREV}
    out, status = await asyncio.to_thread(run_plugin, env, json.dumps(conf).encode())
    return status, json.loads(out)


@pytest.fixture
async def lagging(
    tmp_path: Path, api: ThreadedKubeApi
) -> AsyncIterator[tuple[NodeAgentConfig, Store, NodeAgent, RecordingRedirector, FakeZtunnel]]:
    """A node agent on the Kubernetes store whose watches are stalled once open (it sees nothing new)."""
    config = agent_config(tmp_path, store="kubernetes",
                          kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)))
    store: Store = await asyncio.to_thread(open_store, config)
    redirector = RecordingRedirector()
    try:
        async with agent_running(config, store, redirector) as agent, FakeZtunnel(config.zds_socket) as zt:
            await eventually(lambda: api.call(api.server.open_watches) == 2, "both watches open", within=TIMEOUT)
            api.call(api.server.stall_watches)
            yield config, store, agent, redirector, zt
    finally:
        await asyncio.to_thread(store.close)


def live_gets(api: ThreadedKubeApi) -> set[str]:
    return {r.resource for r in api.server.requests if r.verb == "get"}


async def test_the_agent_captures_a_pod_its_watch_has_not_delivered_reading_it_live(
    api: ThreadedKubeApi, lagging: tuple[NodeAgentConfig, Store, NodeAgent, RecordingRedirector, FakeZtunnel]
) -> None:
    config, store, agent, redirector, zt = lagging
    created = api.call(api.server.put_object, pod("fresh", "node-1"))
    uid = created["metadata"]["uid"]
    assert store.get(ResourceRef("Pod", "demo", "fresh")) is None  # the watch has not delivered it

    status, out = await plugin_add_deciding_agent(config, "fresh", uid)

    assert (status, out) == (0, PREV)
    assert agent.captured() == {uid: ("/proc/self/ns/net", True)} and uid in zt.serving
    assert redirector.applied == 1
    assert live_gets(api) == {"pods", "namespaces"}
    assert agent.registry.get_sample_value("ambient_cni_live_pod_reads_total", {"result": "found"}) == 1
    # Once the watch resumes, the pod arrives in the view with the same uid and is annotated as usual.
    api.call(api.server.close_watches)
    await eventually(lambda: annotation(api, "fresh") == "enabled", "the pod annotated", within=TIMEOUT)
    assert agent.captured() == {uid: ("/proc/self/ns/net", True)} and redirector.removed == 0


async def test_a_pod_read_live_in_a_namespace_outside_the_mesh_passes_uncaptured(
    api: ThreadedKubeApi, lagging: tuple[NodeAgentConfig, Store, NodeAgent, RecordingRedirector, FakeZtunnel]
) -> None:
    config, _, agent, redirector, zt = lagging
    api.call(api.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}})
    created = api.call(api.server.put_object, pod("web", "node-1", ns="plain"))

    status, out = await plugin_add_deciding_agent(config, "web", created["metadata"]["uid"], ns="plain")

    assert (status, out) == (0, PREV)
    assert agent.captured() == {} and redirector.applied == 0 and zt.serving == set()
    assert live_gets(api) == {"pods", "namespaces"}


async def test_a_pod_recreated_under_the_same_name_is_decided_as_the_new_one(
    api: ThreadedKubeApi, tmp_path: Path
) -> None:
    old = api.call(api.server.put_object, pod("web", "node-1"))
    config = agent_config(tmp_path, store="kubernetes",
                          kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)))
    store: Store = await asyncio.to_thread(open_store, config)
    try:
        async with agent_running(config, store, RecordingRedirector()) as agent, FakeZtunnel(config.zds_socket):
            await eventually(lambda: api.call(api.server.open_watches) == 2, "both watches open", within=TIMEOUT)
            api.call(api.server.stall_watches)
            api.call(api.server.delete_object, "Pod", "demo", "web")
            new = api.call(api.server.put_object, pod("web", "node-1"))
            assert store.get(ResourceRef("Pod", "demo", "web")).uid == old["metadata"]["uid"]  # the view lags

            status, _ = await plugin_add_deciding_agent(config, "web", new["metadata"]["uid"])

            assert status == 0
            assert set(agent.captured()) == {new["metadata"]["uid"]}
            assert "pods" in live_gets(api)
            # The watch resumes: the old pod's deletion and the new pod arrive; the new one stays captured.
            api.call(api.server.close_watches)
            await eventually(lambda: annotation(api, "web") == "enabled", "the new pod annotated", within=TIMEOUT)
            await eventually(lambda: getattr(store.get(ResourceRef("Pod", "demo", "web")), "uid", None)
                             == new["metadata"]["uid"], "the view has the new pod", within=TIMEOUT)
            assert set(agent.captured()) == {new["metadata"]["uid"]}
    finally:
        await asyncio.to_thread(store.close)


@pytest.mark.parametrize(
    ("code", "words"),
    [(403, "403"), (503, "503")],
    ids=["an API server that forbids the read fails the ADD", "an API server that is unavailable fails the ADD"],
)
async def test_an_api_server_that_refuses_the_live_read_fails_the_add_closed(
    api: ThreadedKubeApi,
    lagging: tuple[NodeAgentConfig, Store, NodeAgent, RecordingRedirector, FakeZtunnel],
    code: int,
    words: str,
) -> None:
    config, _, agent, redirector, _ = lagging
    created = api.call(api.server.put_object, pod("fresh", "node-1"))
    api.call(api.server.fail_next, code, 1, "get")

    status, out = await plugin_add_deciding_agent(config, "fresh", created["metadata"]["uid"])

    assert (status, out["code"]) == (1, 11)  # try again later: the kubelet retries the sandbox
    assert "could not decide whether pod demo/fresh is enrolled" in out["msg"]
    assert "Kubernetes API server" in out["msg"] and words in out["msg"] and api.url in out["msg"]
    assert agent.captured() == {} and redirector.applied == 0
    assert agent.registry.get_sample_value("ambient_cni_live_pod_reads_total", {"result": "error"}) == 1

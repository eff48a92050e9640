"""The node agent end to end in one process, without root: a real store, real event and ZDS sockets, a
fake ztunnel, and a recording redirector instead of nft (the kernel half is tests/netns). Every pod's
"netns" is this process's own (``/proc/self/ns/net``, or a symlink to it that a test can make vanish)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from meshcore.aio.netns import NetnsId
from meshcore.store import ResourceRef, SqliteStore, build_resource
from ztunnel.cni.config import NodeAgentConfig
from ztunnel.cni.events import EventReply, PluginEvent, send_event
from ztunnel.cni.podnetns import NetnsEntry, NetnsMap
from ztunnel.cni.testing import FakeZtunnel, agent_config, agent_running
from ztunnel.cni.testing import eventually as _eventually
from ztunnel.redirect import ApplyFailed

TIMEOUT = 5.0
OWN_NETNS = "/proc/self/ns/net"
ANNOTATION = "ambient.istio.io/redirection"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


class Redirector:
    """Records apply/remove by the namespace their fd names; ``fail_applies`` makes that many fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, NetnsId]] = []
        self.fail_applies = 0

    async def apply(self, netns_fd: int) -> None:
        if self.fail_applies:
            self.fail_applies -= 1
            raise ApplyFailed(f"fd:{netns_fd}", "nft: Error: Could not process rule")
        self.calls.append(("apply", NetnsId.of_fd(netns_fd)))

    async def remove(self, netns_fd: int) -> None:
        self.calls.append(("remove", NetnsId.of_fd(netns_fd)))

    def count(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)


async def eventually(predicate: Callable[[], Any], what: str = "condition") -> None:
    await _eventually(predicate, what, within=TIMEOUT)


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def config(tmp_path: Path) -> NodeAgentConfig:
    return agent_config(tmp_path, zds_ack_timeout=1.0, retry_initial=0.05, retry_max=0.2)


def running(config: NodeAgentConfig, store: SqliteStore, redirector: Redirector) -> Any:
    return agent_running(config, store, redirector, within=TIMEOUT)


def namespace(store: SqliteStore, labels: dict[str, str] | None = None, name: str = "demo") -> None:
    store.apply(
        [
            build_resource(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
            )
        ]
    )


def pod(store: SqliteStore, name: str, *, node: str = "node-1", labels: dict[str, str] | None = None) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": labels or {}},
        "spec": {"nodeName": node, "serviceAccountName": f"sa-{name}"},
        "status": {"phase": "Running", "podIP": "10.244.1.9"},
    }
    (result,) = store.apply([build_resource(doc)])
    return result.resource.uid


def annotation(store: SqliteStore, name: str) -> str | None:
    found = store.get(ResourceRef("Pod", "demo", name))
    return None if found is None else found.annotations.get(ANNOTATION)


async def cni(config: NodeAgentConfig, cmd: str, name: str, netns: str = OWN_NETNS) -> EventReply:
    event = PluginEvent(
        cmd=cmd, pod_namespace="demo", pod_name=name, container_id=f"sandbox-{name}", netns=netns
    )
    return await asyncio.to_thread(send_event, str(config.event_socket), event, TIMEOUT)


async def test_enabling_a_namespace_captures_its_pods_and_disabling_releases_them(config, store) -> None:
    namespace(store)
    uid = pod(store, "web")
    pod(store, "elsewhere", node="node-2")
    redirector = Redirector()
    async with running(config, store, redirector) as agent, FakeZtunnel(config.zds_socket) as zt:
        assert await cni(config, "add", "web") == EventReply(ok=True, captured=False)  # learns the netns
        assert await cni(config, "add", "elsewhere") == EventReply(ok=True, captured=False)
        assert redirector.calls == []

        store.set_labels(ResourceRef("Namespace", "", "demo"), AMBIENT, [])
        await eventually(lambda: annotation(store, "web") == "enabled", "web annotated enabled")
        assert redirector.calls == [("apply", NetnsId.of_path(OWN_NETNS))]
        assert zt.serving == {uid}
        (add,) = [r for r in zt.requests if type(r).__name__ == "AddWorkload"]
        assert (add.info.name, add.info.namespace, add.info.service_account) == ("web", "demo", "sa-web")
        assert zt.netns_ids[uid] == NetnsId.of_path(OWN_NETNS)
        assert agent.captured() == {uid: (OWN_NETNS, True)}
        assert agent.registry.get_sample_value("ambient_cni_pods_captured") == 1

        store.set_labels(ResourceRef("Namespace", "", "demo"), {}, ["istio.io/dataplane-mode"])
        await eventually(lambda: annotation(store, "web") is None, "annotation removed")
        assert redirector.count("remove") == 1
        assert zt.serving == set() and agent.captured() == {}


async def test_a_cni_add_for_an_enrolled_pod_answers_once_ztunnel_has_it(config, store) -> None:
    namespace(store, AMBIENT)
    uid = pod(store, "web")
    async with running(config, store, Redirector()), FakeZtunnel(config.zds_socket) as zt:
        assert await cni(config, "add", "web") == EventReply(ok=True, captured=True, enrolled=True)
        assert uid in zt.serving
        await eventually(lambda: annotation(store, "web") == "enabled")


async def test_without_ztunnel_a_pod_is_redirected_pending_and_handed_over_on_connect(config, store) -> None:
    namespace(store, AMBIENT)
    uid = pod(store, "web")
    redirector = Redirector()
    async with running(config, store, redirector) as agent:
        reply = await cni(config, "add", "web")
        assert not reply.ok and reply.captured and "no ztunnel is connected" in reply.error
        assert redirector.count("apply") == 1  # the rules stay: traffic fails closed until ztunnel comes
        await eventually(lambda: annotation(store, "web") == "pending")
        async with FakeZtunnel(config.zds_socket) as zt:
            await eventually(lambda: annotation(store, "web") == "enabled", "enabled after the snapshot")
            assert zt.snapshots == [frozenset({uid})]
            assert agent.captured() == {uid: (OWN_NETNS, True)}
        # ztunnel restarts: the new one gets the pod in its snapshot again; nothing is re-applied
        async with FakeZtunnel(config.zds_socket) as again:
            await eventually(lambda: again.snapshots == [frozenset({uid})], "snapshot on reconnect")
        assert redirector.count("apply") == 1


async def test_a_nack_leaves_the_pod_pending_and_it_is_retried(config, store) -> None:
    namespace(store, AMBIENT)
    uid = pod(store, "web")
    async with running(config, store, Redirector()) as agent:
        async with FakeZtunnel(config.zds_socket, nack={uid: "no workload web in xDS yet"}) as zt:
            reply = await cni(config, "add", "web")
            assert not reply.ok and "no workload web in xDS yet" in reply.error
            assert annotation(store, "web") == "pending"
            assert (
                agent.registry.get_sample_value("ambient_cni_pod_failures_total", {"reason": "ztunnel_nack"})
                == 1
            )
            zt.nack.clear()
            await eventually(lambda: annotation(store, "web") == "enabled", "enabled after a retry")
            assert uid in zt.serving


async def test_one_pods_failures_leave_the_others_alone(config, store, tmp_path: Path) -> None:
    namespace(store)
    good, gone = pod(store, "good"), pod(store, "gone")
    vanishing = tmp_path / "vanishing-netns"
    os.symlink(OWN_NETNS, vanishing)
    redirector = Redirector()
    async with running(config, store, redirector) as agent, FakeZtunnel(config.zds_socket) as zt:
        await cni(config, "add", "good")
        await cni(config, "add", "gone", netns=str(vanishing))
        vanishing.unlink()  # the sandbox went away before the namespace was enabled
        redirector.fail_applies = 1  # and the first rules to be applied fail
        store.set_labels(ResourceRef("Namespace", "", "demo"), AMBIENT, [])
        await eventually(
            lambda: annotation(store, "good") == "enabled", "the good pod captured after a retry"
        )
        # The two pods are handled concurrently: the vanished one's failure may land after the good capture.
        await eventually(lambda: gone in agent.failures(), "the vanished pod's failure recorded")
        assert zt.serving == {good}
        assert gone in agent.failures() and "gone" in agent.failures()[gone]
        assert (
            agent.registry.get_sample_value("ambient_cni_pod_failures_total", {"reason": "netns_gone"}) >= 1
        )


async def test_a_deleted_pod_is_released(config, store) -> None:
    namespace(store, AMBIENT)
    uid = pod(store, "web")
    redirector = Redirector()
    async with running(config, store, redirector) as agent, FakeZtunnel(config.zds_socket) as zt:
        assert (await cni(config, "add", "web")).captured
        store.delete([ResourceRef("Pod", "demo", "web")])
        await eventually(lambda: agent.captured() == {}, "released")
        assert zt.serving == set() and redirector.count("remove") == 1
        assert uid not in agent.failures()


async def test_a_cni_del_releases_the_pod_before_answering(config, store) -> None:
    namespace(store, AMBIENT)
    uid = pod(store, "web")
    async with running(config, store, Redirector()) as agent, FakeZtunnel(config.zds_socket) as zt:
        assert (await cni(config, "add", "web")).captured
        assert await cni(config, "del", "web") == EventReply(ok=True)
        assert zt.serving == set() and agent.captured() == {}
        assert annotation(store, "web") == "enabled"  # still enrolled: re-captured by its next sandbox
        assert (await cni(config, "add", "web")).captured
        assert zt.serving == {uid}


async def test_a_clobbered_annotation_is_written_again(config, store) -> None:
    namespace(store, AMBIENT)
    pod(store, "web")
    async with running(config, store, Redirector()), FakeZtunnel(config.zds_socket):
        assert (await cni(config, "add", "web")).captured
        await eventually(lambda: annotation(store, "web") == "enabled")
        stored = store.get(ResourceRef("Pod", "demo", "web"))
        store.apply([msgspec.structs.replace(stored, annotations={})])  # a writer replacing the object
        await eventually(lambda: annotation(store, "web") == "enabled", "annotation restored")


async def test_after_a_restart_pods_that_left_the_mesh_meanwhile_are_released(config, store) -> None:
    namespace(store)  # no longer ambient
    uid = pod(store, "web")
    store.set_annotations(ResourceRef("Pod", "demo", "web"), {ANNOTATION: "enabled"}, [])
    NetnsMap(config.netns_map_path).record(
        "demo", "web", NetnsEntry(OWN_NETNS, str(NetnsId.of_path(OWN_NETNS)), "sandbox-web")
    )
    redirector = Redirector()
    async with running(config, store, redirector) as agent:
        await eventually(lambda: annotation(store, "web") is None, "left-over capture released")
        assert redirector.calls == [("remove", NetnsId.of_path(OWN_NETNS))]
        assert uid not in agent.captured()


async def test_a_pod_of_another_node_is_never_captured(config, store) -> None:
    namespace(store, AMBIENT)
    pod(store, "web", node="node-2")
    redirector = Redirector()
    async with running(config, store, redirector), FakeZtunnel(config.zds_socket) as zt:
        assert await cni(config, "add", "web") == EventReply(ok=True, captured=False)
        assert redirector.calls == [] and zt.serving == set()


async def test_a_pod_scheduled_after_its_sandbox_started_is_captured_from_the_recorded_netns(
    config, store
) -> None:
    namespace(store, AMBIENT)
    async with running(config, store, Redirector()), FakeZtunnel(config.zds_socket) as zt:
        # The local cluster runs the pod (CNI ADD) before it registers it in the store.
        assert await cni(config, "add", "web") == EventReply(ok=True, captured=False)
        uid = pod(store, "web")
        await eventually(lambda: uid in zt.serving, "captured once registered")


async def deciding_add(config: NodeAgentConfig, name: str) -> EventReply:
    """An ADD from a plugin in ``enrollment: agent`` mode: it decided nothing and waits for the verdict."""
    event = PluginEvent(cmd="add", pod_namespace="demo", pod_name=name, container_id=f"sandbox-{name}",
                        netns=OWN_NETNS, wait=True, agent_decides=True)
    return await asyncio.to_thread(send_event, str(config.event_socket), event, TIMEOUT)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda store: pod(store, "web"), EventReply(ok=True, captured=True, enrolled=True)),
        (lambda store: pod(store, "web", labels={"istio.io/dataplane-mode": "none"}), EventReply(ok=True)),
        (lambda store: None, "pod demo/web: not found in the store"),
        (lambda store: pod(store, "web", node="node-2"),
         "pod demo/web is scheduled on node 'node-2' in the store, not on this agent's node 'node-1'"),
    ],
    ids=[
        "an enrolled pod is captured and said to be",
        "a pod that opts out passes, said not enrolled",
        "a pod the agent cannot find fails the add instead of passing uncaptured",
        "a pod of another node fails the add naming both nodes",
    ],
)
async def test_an_add_the_plugin_left_to_the_agent_is_decided_by_the_agent(
    config, store, setup: Callable[[SqliteStore], object], expected: EventReply | str
) -> None:
    namespace(store, AMBIENT)
    setup(store)
    async with running(config, store, Redirector()) as agent, FakeZtunnel(config.zds_socket):
        reply = await deciding_add(config, "web")
        if isinstance(expected, str):
            assert not reply.ok and expected in reply.error
            assert agent.captured() == {}
        else:
            assert reply == expected
            assert len(agent.captured()) == (1 if expected.captured else 0)

"""The node agent against the real kernel: pods are network namespaces, redirection is real nftables and
ip rules (``ztunnel.redirect``), the plugin runs as a process, and a fake ztunnel takes the ZDS hand-off
and checks that each netns fd it receives names the pod's namespace."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns as pyroute2_netns

from meshcore.aio.netns import NetnsId
from meshcore.store import ResourceRef, SqliteStore, build_resource
from ztunnel.cni.config import NodeAgentConfig
from ztunnel.cni.events import PluginEvent, send_event
from ztunnel.cni.testing import FakeZtunnel, agent_config
from ztunnel.cni.testing import agent_running as _agent_running
from ztunnel.cni.testing import eventually as _eventually
from ztunnel.redirect import DriftKind, RedirectOptions, check, render

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0
ANNOTATION = "ambient.istio.io/redirection"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
RULESET = render(RedirectOptions())
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "x"}],
    "ips": [{"address": "10.9.0.2/24"}],
}


async def eventually(predicate: Callable[[], Any], what: str) -> None:
    await _eventually(predicate, what, within=TIMEOUT)


async def drift(path: str) -> set[DriftKind]:
    return {d.kind for d in await asyncio.to_thread(check, path, RULESET)}


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def config(tmp_path: Path) -> NodeAgentConfig:
    return agent_config(tmp_path, state_dir=tmp_path, retry_initial=0.05, retry_max=0.5)


def agent_running(config: NodeAgentConfig, store: SqliteStore) -> Any:
    return _agent_running(config, store, within=TIMEOUT)  # the real redirector: nft in the pod netns


def add_namespace(store: SqliteStore, labels: dict[str, str]) -> None:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": labels}}
    store.apply([build_resource(doc)])


def add_pod(store: SqliteStore, name: str, labels: dict[str, str] | None = None) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": labels or {}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": "10.9.0.2"},
    }
    return store.apply([build_resource(doc)])[0].resource.uid


def annotation(store: SqliteStore, name: str) -> str | None:
    found = store.get(ResourceRef("Pod", "demo", name))
    return None if found is None else found.annotations.get(ANNOTATION)


async def tell_agent(config: NodeAgentConfig, name: str, netns: str, cmd: str = "add") -> None:
    event = PluginEvent(cmd=cmd, pod_namespace="demo", pod_name=name, container_id=f"c-{name}", netns=netns)
    await asyncio.to_thread(send_event, str(config.event_socket), event, TIMEOUT)


def run_plugin(
    config: NodeAgentConfig, name: str, netns: str, command: str = "ADD"
) -> subprocess.CompletedProcess[bytes]:
    conf = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambient-cni",
        "state_dir": str(config.state_dir),
        "cni_event_address": str(config.event_socket),
        "event_timeout": TIMEOUT,
        "prevResult": PREV,
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"c-{name}",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}",
        "CNI_PATH": "/opt/cni/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "ztunnel.cni.plugin"],
        input=json.dumps(conf).encode(),
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=TIMEOUT * 2,
        check=False,
    )


async def test_enabling_and_disabling_a_namespace_captures_and_releases_a_running_pod(
    make_netns, config, store
) -> None:
    pod_ns = make_netns("h15pod")
    add_namespace(store, {})
    uid = add_pod(store, "web")
    async with agent_running(config, store), FakeZtunnel(config.zds_socket) as zt:
        await tell_agent(config, "web", pod_ns.path)
        assert DriftKind.TABLE_MISSING in await drift(pod_ns.path)  # not enrolled: untouched

        store.set_labels(ResourceRef("Namespace", "", "demo"), AMBIENT, [])
        await eventually(lambda: annotation(store, "web") == "enabled", "pod captured")
        assert await drift(pod_ns.path) == set()
        assert zt.serving == {uid}
        assert zt.netns_ids[uid] == NetnsId.of_path(pod_ns.path) != NetnsId.of_path("/proc/self/ns/net")

        store.set_labels(ResourceRef("Namespace", "", "demo"), {}, ["istio.io/dataplane-mode"])
        await eventually(lambda: annotation(store, "web") is None, "pod released")
        assert await drift(pod_ns.path) == {
            DriftKind.TABLE_MISSING,
            DriftKind.IP_RULE_MISSING,
            DriftKind.IP_ROUTE_MISSING,
        }
        assert zt.serving == set()
        assert [type(r).__name__ for r in zt.requests][-1] == "DelWorkload"


async def test_the_plugin_captures_an_enrolled_pod_and_leaves_others_alone(make_netns, config, store) -> None:
    meshed, plain = make_netns("h15in"), make_netns("h15out")
    add_namespace(store, AMBIENT)
    uid = add_pod(store, "meshed")
    add_pod(store, "plain", labels={"istio.io/dataplane-mode": "none"})
    async with agent_running(config, store), FakeZtunnel(config.zds_socket) as zt:
        done = await asyncio.to_thread(run_plugin, config, "meshed", meshed.path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout) == PREV
        assert await drift(meshed.path) == set()
        assert zt.serving == {uid} and zt.netns_ids[uid] == NetnsId.of_path(meshed.path)

        done = await asyncio.to_thread(run_plugin, config, "plain", plain.path)
        assert (done.returncode, json.loads(done.stdout)) == (0, PREV)
        assert DriftKind.TABLE_MISSING in await drift(plain.path)
        assert zt.serving == {uid}

        # ztunnel restarts: the new connection gets the captured pod in its snapshot
        await zt.close()
        async with FakeZtunnel(config.zds_socket) as again:
            await eventually(lambda: again.snapshots == [frozenset({uid})], "snapshot after reconnect")
            assert again.netns_ids[uid] == NetnsId.of_path(meshed.path)

        done = await asyncio.to_thread(run_plugin, config, "meshed", meshed.path, "DEL")
        assert (done.returncode, done.stdout) == (0, b"")


async def test_the_plugin_fails_an_enrolled_pods_add_when_no_ztunnel_takes_it(
    make_netns, config, store
) -> None:
    pod_ns = make_netns("h15nz")
    add_namespace(store, AMBIENT)
    add_pod(store, "web")
    async with agent_running(config, store):
        done = await asyncio.to_thread(run_plugin, config, "web", pod_ns.path)
        assert done.returncode == 1
        error = json.loads(done.stdout)
        assert error["code"] == 100 and "no ztunnel is connected" in error["msg"]
        assert await drift(pod_ns.path) == set()  # kept: fails closed until ztunnel takes the pod
        assert annotation(store, "web") == "pending"


async def test_a_vanished_netns_fails_that_pod_only(make_netns, config, store) -> None:
    doomed, fine = make_netns("h15gone"), make_netns("h15ok")
    add_namespace(store, {})
    gone_uid, fine_uid = add_pod(store, "doomed"), add_pod(store, "fine")
    async with agent_running(config, store) as agent, FakeZtunnel(config.zds_socket) as zt:
        await tell_agent(config, "doomed", doomed.path)
        await tell_agent(config, "fine", fine.path)
        await asyncio.to_thread(pyroute2_netns.remove, doomed.name)
        store.set_labels(ResourceRef("Namespace", "", "demo"), AMBIENT, [])
        await eventually(lambda: annotation(store, "fine") == "enabled", "the other pod captured")
        await eventually(lambda: gone_uid in agent.failures(), "the vanished pod reported")
        assert agent.registry.get_sample_value("ambient_cni_pod_failures_total", {"reason": "netns_gone"}) >= 1
        assert await drift(fine.path) == set()
        assert zt.serving == {fine_uid}
        assert annotation(store, "doomed") is None

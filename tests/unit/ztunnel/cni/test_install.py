"""The node agent's host install in a tmp dir: ambient-cni chained last into the node's conflist and removed
again only on uninstall (its DaemonSet gone or being deleted, read from the API server stand-in), never on a
restart or when the DaemonSet cannot be read."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from meshcore.store.kubernetes import load_configuration
from meshcore.testing.kube_api import ApiResource, KubeApiServer, mesh_resources
from ztunnel.cni.install import (
    DAEMONSET_VERBS,
    HostInstallConfig,
    InstallError,
    UninstallMode,
    clean_up_on_stop,
    host_install_from_env,
    install_plugin,
    parse_host_install,
    should_clean_up,
    uninstall_plugin,
)
from ztunnel.cni.plugin_config import decode_plugin_config

POD_NETWORK = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
    {"type": "ptp", "ipMasq": True, "ipam": {"type": "host-local"}},
    {"type": "portmap", "capabilities": {"portMappings": True}},
]}
ENTRY = {"type": "ambient-cni", "cni_event_address": "/var/run/ambient-cni/pluginevent.sock"}


@pytest.fixture
def host(tmp_path: Path) -> HostInstallConfig:
    (tmp_path / "bin").mkdir()
    (tmp_path / "net.d").mkdir()
    source = tmp_path / "image" / "ambient-cni"
    source.parent.mkdir()
    source.write_bytes(b"#!/bin/sh\nexit 0\n")
    (tmp_path / "net.d" / "10-pod-network.conflist").write_text(json.dumps(POD_NETWORK))
    return HostInstallConfig(bin_dir=tmp_path / "bin", net_dir=tmp_path / "net.d", plugin_source=source, entry=ENTRY)


def conflist(host: HostInstallConfig, name: str = "10-pod-network.conflist") -> dict[str, Any]:
    return json.loads((host.net_dir / name).read_text())  # type: ignore[no-any-return]


def test_install_copies_the_plugin_and_chains_it_last_keeping_the_rest(host: HostInstallConfig) -> None:
    result = install_plugin(host)
    assert result.conflist == host.net_dir / "10-pod-network.conflist"
    assert (host.bin_dir / "ambient-cni").read_bytes() == b"#!/bin/sh\nexit 0\n"
    assert stat.S_IMODE((host.bin_dir / "ambient-cni").stat().st_mode) == 0o755
    doc = conflist(host)
    assert [p["type"] for p in doc["plugins"]] == ["ptp", "portmap", "ambient-cni"]
    assert doc["plugins"][:2] == POD_NETWORK["plugins"] and doc["name"] == "k8s-pod-network"
    assert doc["plugins"][2] == ENTRY


def test_install_twice_leaves_one_entry(host: HostInstallConfig) -> None:
    install_plugin(host)
    install_plugin(host)
    assert [p["type"] for p in conflist(host)["plugins"]] == ["ptp", "portmap", "ambient-cni"]


def test_install_chains_into_the_file_libcni_loads_first(host: HostInstallConfig) -> None:
    (host.net_dir / "99-other.conflist").write_text(json.dumps(POD_NETWORK))
    (host.net_dir / "05-first.conflist").write_text(json.dumps(POD_NETWORK))
    assert install_plugin(host).conflist == host.net_dir / "05-first.conflist"
    assert "ambient-cni" not in [p["type"] for p in conflist(host, "99-other.conflist")["plugins"]]


def test_install_without_a_pod_network_config_copies_the_plugin_and_chains_nothing(host: HostInstallConfig) -> None:
    (host.net_dir / "10-pod-network.conflist").unlink()
    assert install_plugin(host).conflist is None
    assert (host.bin_dir / "ambient-cni").exists()


REFUSED = [
    ("a single-plugin conf is refused, not renamed", "10-bridge.conf", json.dumps({"type": "bridge"}),
     "convert it to a conflist"),
    ("a conflist that is not json is refused with its path", "01-broken.conflist", "{not json", "is not JSON"),
]


@pytest.mark.parametrize(("name", "text", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_install_refuses_a_primary_config_it_cannot_chain_into(
    host: HostInstallConfig, name: str, text: str, words: str
) -> None:
    (host.net_dir / name).write_text(text)
    with pytest.raises(InstallError, match=words) as info:
        install_plugin(host)
    assert name in str(info.value)
    assert (host.net_dir / name).read_text() == text  # never rewritten


def test_uninstall_removes_the_entry_and_the_plugin_and_nothing_else(host: HostInstallConfig) -> None:
    install_plugin(host)
    (host.bin_dir / "ptp").write_bytes(b"other plugin")
    changed = uninstall_plugin(host)
    assert set(changed) == {host.net_dir / "10-pod-network.conflist", host.bin_dir / "ambient-cni"}
    assert conflist(host) == POD_NETWORK
    assert not (host.bin_dir / "ambient-cni").exists() and (host.bin_dir / "ptp").exists()
    assert uninstall_plugin(host) == []  # idempotent
    assert sorted(p.name for p in host.net_dir.iterdir()) == ["10-pod-network.conflist"]  # no temp files left


def test_uninstall_leaves_a_conflist_it_cannot_read_and_cleans_the_rest(host: HostInstallConfig) -> None:
    install_plugin(host)
    (host.net_dir / "20-broken.conflist").write_text("{not json")
    uninstall_plugin(host)
    assert (host.net_dir / "20-broken.conflist").read_text() == "{not json"
    assert conflist(host) == POD_NETWORK


def ds(**meta: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "istio-cni", **meta}}


DECISIONS = [
    ("a daemonset that is gone means uninstall", None, None, UninstallMode.AUTO, True),
    ("a daemonset being deleted means uninstall", ds(deletionTimestamp="2026-01-01T00:00:00Z"), None,
     UninstallMode.AUTO, True),
    ("a daemonset that remains means a restart or upgrade", ds(), None, UninstallMode.AUTO, False),
    ("a daemonset that cannot be read keeps the plugin", None, "503 ServiceUnavailable", UninstallMode.AUTO, False),
    ("always removes even when the daemonset remains", ds(), None, UninstallMode.ALWAYS, True),
    ("never keeps even when the daemonset is gone", None, None, UninstallMode.NEVER, False),
]


@pytest.mark.parametrize(("daemonset", "error", "mode", "remove"), [c[1:] for c in DECISIONS],
                         ids=[c[0] for c in DECISIONS])
def test_should_clean_up(daemonset: dict[str, Any] | None, error: str | None, mode: UninstallMode,
                         remove: bool) -> None:
    assert should_clean_up(daemonset, lookup_error=error, mode=mode).remove is remove


SETTINGS = [
    ("no mounted cni dirs means no host install", {}, None),
    ("only one mounted dir is refused", {"MOUNTED_CNI_NET_DIR": "/host/etc/cni/net.d"}, "MOUNTED_CNI_BIN_DIR"),
    ("an unknown stop mode is refused", {"MOUNTED_CNI_NET_DIR": "/n", "MOUNTED_CNI_BIN_DIR": "/b",
                                         "CNI_UNINSTALL_ON_STOP": "sometimes"}, "auto, always or never"),
]


@pytest.mark.parametrize(("env", "words"), [c[1:] for c in SETTINGS], ids=[c[0] for c in SETTINGS])
def test_host_install_settings(env: dict[str, str], words: str | None) -> None:
    if words is None:
        assert parse_host_install(env, ENTRY, Path("/x")) is None
    else:
        with pytest.raises(InstallError, match=words):
            parse_host_install(env, ENTRY, Path("/x"))


def test_host_install_settings_name_the_daemonset_and_the_plugin() -> None:
    got = parse_host_install({"MOUNTED_CNI_NET_DIR": "/n", "MOUNTED_CNI_BIN_DIR": "/b", "DAEMONSET_NAME": "cni",
                              "POD_NAMESPACE": "mesh", "CNI_PLUGIN_SOURCE": "/opt/ambient-cni"}, ENTRY, Path("/x"))
    assert got is not None
    assert (got.bin_dir, got.net_dir, got.plugin_source) == (Path("/b"), Path("/n"), Path("/opt/ambient-cni"))
    assert (got.daemonset, got.namespace, got.on_stop) == ("cni", "mesh", UninstallMode.AUTO)


def test_the_agents_host_install_chains_an_entry_that_leaves_enrolment_to_the_agent(host: HostInstallConfig) -> None:
    env = {"MOUNTED_CNI_NET_DIR": str(host.net_dir), "MOUNTED_CNI_BIN_DIR": str(host.bin_dir),
           "CNI_PLUGIN_SOURCE": str(host.plugin_source)}
    from_env = host_install_from_env(Path("/run/ambient/pluginevent.sock"), env)
    assert from_env is not None
    install_plugin(from_env)
    doc = conflist(host)
    entry = doc["plugins"][-1]
    assert entry == {"type": "ambient-cni", "cni_event_address": "/run/ambient/pluginevent.sock",
                     "enrollment": "agent"}
    # As the runtime hands it to the plugin (the conflist's cniVersion and name added): agent mode, no store.
    config = decode_plugin_config(json.dumps({"cniVersion": doc["cniVersion"], "name": doc["name"], **entry}).encode())
    assert (config.enrollment, config.state_dir) == ("agent", None)


# -- at SIGTERM, against the API server stand-in -------------------------------------------------------------

DAEMONSETS = ApiResource("apps", "v1", "daemonsets", "DaemonSet", True)


@pytest.fixture
async def api() -> AsyncIterator[tuple[KubeApiServer, ApiClient]]:
    async with KubeApiServer([*mesh_resources(), DAEMONSETS]) as server:
        server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
        async with ApiClient(load_configuration(host=server.url)) as client:
            yield server, client


async def stop(host: HostInstallConfig, api: tuple[KubeApiServer, ApiClient], **meta: Any) -> bool:
    server, client = api
    if meta.get("present", True):
        meta.pop("present", None)
        server.put_object({**ds(**meta), "metadata": {"name": "istio-cni", "namespace": "istio-system", **meta}})
    install_plugin(host)
    decision = await clean_up_on_stop(host, client)
    # RBAC: the only calls are those DAEMONSET_VERBS names (the Role in the manifests grants exactly them)
    assert {r.verb for r in server.requests if r.resource == "daemonsets"} <= set(DAEMONSET_VERBS)
    return decision.remove


async def test_a_restart_keeps_the_plugin(host: HostInstallConfig, api: tuple[KubeApiServer, ApiClient]) -> None:
    assert await stop(host, api) is False
    assert [r.verb for r in api[0].requests if r.resource == "daemonsets"] == ["get"]
    assert (host.bin_dir / "ambient-cni").exists()
    assert [p["type"] for p in conflist(host)["plugins"]] == ["ptp", "portmap", "ambient-cni"]


async def test_deleting_the_daemonset_removes_the_plugin(
    host: HostInstallConfig, api: tuple[KubeApiServer, ApiClient]
) -> None:
    assert await stop(host, api, deletionTimestamp="2026-01-01T00:00:00Z", finalizers=["test/keep"]) is True
    assert not (host.bin_dir / "ambient-cni").exists() and conflist(host) == POD_NETWORK


async def test_a_deleted_daemonset_removes_the_plugin(
    host: HostInstallConfig, api: tuple[KubeApiServer, ApiClient]
) -> None:
    assert await stop(host, api, present=False) is True
    assert not (host.bin_dir / "ambient-cni").exists() and conflist(host) == POD_NETWORK


async def test_an_api_server_that_cannot_answer_keeps_the_plugin(
    host: HostInstallConfig, api: tuple[KubeApiServer, ApiClient]
) -> None:
    api[0].fail_next(503, 1, "get")
    assert await stop(host, api) is False
    assert (host.bin_dir / "ambient-cni").exists()

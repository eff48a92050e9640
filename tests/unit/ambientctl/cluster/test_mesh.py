"""The mesh's pure side: where each node's files live, each component's command line and environment,
and the CNI config the plugin will read (checked with the plugin's own decoder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambientctl.cluster.cni import decode_conflist, plugin_stdin
from ambientctl.cluster.mesh import (
    MeshSettings,
    agent_command,
    agent_name,
    base_env,
    cni_conflist,
    component_names,
    istiod_command,
    kubelet_command,
    node_files,
    socket_path_problem,
    ztunnel_command,
    ztunnel_name,
)
from ambientctl.cluster.plan import build_layout
from ambientctl.cluster.spec import ClusterSpec
from ztunnel.cni.config import decode_plugin_config
from ztunnel.config import ProxyMode, parse_config

STATE = Path("/var/lib/am")
LAYOUT = build_layout(ClusterSpec(nodes=2, prefix="am-"))
NODE = LAYOUT.nodes[1]
FILES = node_files(STATE / "cluster" / "nodes", NODE.name)
PY = "/opt/venv/bin/python"
ENV = base_env({"PATH": "/usr/bin", "HOME": "/root", "SECRET_TOKEN": "x", "NODE_NAME": "leak"}, PY)


def test_components_inherit_a_clean_environment_with_the_mesh_python_first_on_path() -> None:
    assert ENV == {"HOME": "/root", "PATH": "/opt/venv/bin:/usr/bin", "LANG": "C.UTF-8"}


def test_each_node_keeps_its_files_in_its_own_directory() -> None:
    d = STATE / "cluster" / "nodes" / "node-2"
    assert (FILES.credential_dir, FILES.zds_socket, FILES.event_socket, FILES.conf_dir) == (
        d / "credential",
        d / "zds.sock",
        d / "cni.sock",
        d / "net.d",
    )


def test_istiod_listens_on_the_fabric_address_with_the_clusters_state() -> None:
    command = istiod_command(PY, STATE, LAYOUT, ENV, "info")
    assert (command.name, command.netns) == ("istiod", "am-fabric")
    assert command.argv[:3] == (PY, "-m", "istiod_lite")
    assert "--xds-address" in command.argv and "172.30.0.254:15012" in command.argv
    assert "172.30.0.254:15014" in command.argv and str(STATE) in command.argv


def test_ztunnel_runs_shared_in_its_node_against_istiod_and_its_node_agent() -> None:
    command = ztunnel_command(PY, LAYOUT, NODE, FILES, ENV, MeshSettings())
    assert (command.name, command.netns, command.argv) == (
        "ztunnel-node-2",
        "am-node-2",
        (PY, "-m", "ztunnel"),
    )
    config = parse_config(dict(command.env))  # ztunnel itself accepts every setting we give it
    assert config.proxy_mode is ProxyMode.SHARED and config.node_name == "node-2"
    assert config.xds_address == config.ca_address == "172.30.0.254:15012"
    assert config.inpod_uds == str(FILES.zds_socket)
    assert config.node_credential_dir == FILES.credential_dir
    assert config.socks5_addr is None and str(config.admin_addr) == "127.0.0.1:15000"


def test_the_node_agent_serves_its_nodes_sockets_from_the_clusters_store() -> None:
    command = agent_command(PY, STATE, NODE, FILES, ENV, "info")
    assert (command.name, command.netns) == ("node-agent-node-2", "am-node-2")
    env = command.env
    assert (env["NODE_NAME"], env["AMBIENT_STATE_DIR"]) == ("node-2", str(STATE))
    assert (env["INPOD_UDS"], env["CNI_EVENT_ADDRESS"]) == (str(FILES.zds_socket), str(FILES.event_socket))


def test_the_kubelet_runs_on_the_host() -> None:
    command = kubelet_command(PY, STATE, "am-", ENV, "info")
    assert command.netns == "" and command.argv[1:3] == ("-m", "ambientctl.cluster.kubelet_main")


def test_the_cni_conflist_is_what_the_plugin_understands() -> None:
    conflist = decode_conflist(cni_conflist(STATE, FILES, 12.5), "10-ambient.conflist")
    (entry,) = conflist.plugins
    assert entry["type"] == "ambient-cni"
    # Exactly what the runtime sends the plugin, decoded by the plugin's own code.
    config = decode_plugin_config(plugin_stdin(conflist, entry, {"cniVersion": "1.0.0", "ips": []}))
    assert (config.state_dir, config.cni_event_address, config.event_timeout) == (
        str(STATE),
        str(FILES.event_socket),
        12.5,
    )
    assert config.prev_result_json is not None


@pytest.mark.parametrize(
    ("path", "ok"),
    [(Path("/tmp/am/cluster/nodes/node-1/zds.sock"), True), (Path("/tmp/" + "d" * 100 + "/zds.sock"), False)],
    ids=["a short socket path is fine", "a socket path over 107 bytes is refused with advice"],
)
def test_socket_paths_must_fit_sun_path(path: Path, ok: bool) -> None:
    problem = socket_path_problem(path)
    assert (problem is None) is ok
    if problem:
        assert "shorter --state-dir" in problem


def test_components_start_in_dependency_order() -> None:
    assert component_names(["node-1", "node-2"]) == [
        "istiod",
        agent_name("node-1"),
        agent_name("node-2"),
        ztunnel_name("node-1"),
        ztunnel_name("node-2"),
        "kubelet",
    ]


def test_extra_settings_reach_every_component_and_their_own_variables_win() -> None:
    from istiod_lite.config import parse_config as parse_istiod_config

    extra = {"SECRET_TTL": "30s", "MAX_WORKLOAD_CERT_TTL": "40s", "DEFAULT_WORKLOAD_CERT_TTL": "40s"}
    env = base_env({"PATH": "/usr/bin"}, PY, {**extra, "NODE_NAME": "from-extra"})
    settings = MeshSettings(extra_env=extra)
    ztunnel = parse_config(dict(ztunnel_command(PY, LAYOUT, NODE, FILES, env, settings).env))
    assert ztunnel.secret_ttl_seconds == 30
    assert ztunnel.node_name == "node-2"  # the command's own NODE_NAME, not the extra one
    istiod = istiod_command(PY, STATE, LAYOUT, env, "info")
    config = parse_istiod_config(env=dict(istiod.env))
    assert (config.max_cert_ttl, config.default_cert_ttl) == (40, 40)

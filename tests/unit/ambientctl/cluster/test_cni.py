"""The runtime side of CNI: what a plugin is given (env, stdin with prevResult), what its answers mean,
and the chain run against stand-in plugin executables."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from ambientctl.cluster.cni import (
    CniConfigInvalid,
    CniPluginFailed,
    CniRuntime,
    build_conflist,
    decode_conflist,
    default_cni_path,
    node_conf_dir,
    parse_result,
    plugin_env,
    plugin_stdin,
    prev_result,
)
from ambientctl.cluster.spec import PodSpec
from ambientctl.cluster.state import PodRecord

RECORD = PodRecord(
    spec=PodSpec("web", "shop", "node-2"),
    ip="10.244.2.7",
    netns="am-pod-shop-web",
    host_veth="am-v12345678",
    node_ip="172.30.0.2",
)


def test_the_primary_result_describes_the_pods_interface_address_and_default_route() -> None:
    result = prev_result(RECORD, "/var/run/netns/am-pod-shop-web")
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/am-pod-shop-web"}],
        "ips": [{"address": "10.244.2.7/32", "gateway": "10.244.2.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.2.1"}],
        "dns": {},
    }


def test_the_plugin_environment_names_the_pod_as_kubelet_does() -> None:
    env = plugin_env(
        "ADD",
        container="am-pod-shop-web-42",
        netns_path="/var/run/netns/am-pod-shop-web",
        namespace="shop",
        name="web",
        cni_path=["/opt/venv/bin", "/opt/cni/bin"],
        base={"PATH": "/usr/bin"},
        pod_uid="u-1",
    )
    assert env == {
        "PATH": "/usr/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "am-pod-shop-web-42",
        "CNI_NETNS": "/var/run/netns/am-pod-shop-web",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;"
        "K8S_POD_INFRA_CONTAINER_ID=am-pod-shop-web-42;K8S_POD_UID=u-1",
        "CNI_PATH": f"/opt/venv/bin{os.pathsep}/opt/cni/bin",
    }


def test_a_plugins_stdin_is_its_entry_with_the_lists_name_version_and_the_previous_result() -> None:
    conflist = decode_conflist(build_conflist("net", [{"type": "ambient-cni", "state_dir": "/s"}]), "x")
    doc = json.loads(plugin_stdin(conflist, conflist.plugins[0], {"cniVersion": "1.0.0", "ips": []}))
    assert doc == {
        "type": "ambient-cni",
        "state_dir": "/s",
        "cniVersion": "1.0.0",
        "name": "net",
        "prevResult": {"cniVersion": "1.0.0", "ips": []},
    }


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "not json"),
        (b'{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "no plugins"),
        (b'{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../evil"}]}', "binary name"),
        (b'{"cniVersion": "1.0.0", "name": "n", "plugins": [{"state_dir": "/s"}]}', "binary name"),
    ],
    ids=[
        "a conflist that is not JSON is refused",
        "a conflist without plugins is refused",
        "a plugin type that is a path is refused",
        "a plugin without a type is refused",
    ],
)
def test_bad_conflists_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(CniConfigInvalid):
        decode_conflist(data, "net.d/10.conflist")


@pytest.mark.parametrize(
    ("stdout", "code", "outcome"),
    [
        (b'{"cniVersion": "1.0.0", "ips": []}', 0, {"cniVersion": "1.0.0", "ips": []}),
        (b"", 0, {}),
        (
            b'{"cniVersion": "1.0.0", "code": 11, "msg": "pod not captured", "details": "ztunnel down"}',
            1,
            "pod not captured (code 11): ztunnel down",
        ),
        (b"Traceback (most recent call last)", 1, "exit status 1: Traceback (most recent call last)"),
    ],
    ids=[
        "a success returns the result",
        "an empty success (DEL) returns nothing",
        "a CNI error JSON gives its message, code and details",
        "a crash without error JSON gives the exit status and output",
    ],
)
def test_plugin_answers(stdout: bytes, code: int, outcome: object) -> None:
    if isinstance(outcome, str):
        with pytest.raises(ValueError, match=outcome.replace("(", r"\(").replace(")", r"\)")):
            parse_result(stdout, code)
    else:
        assert parse_result(stdout, code) == outcome


# A stand-in plugin: records its environment and stdin, then answers as the test tells it.
PLUGIN = """#!/bin/sh
echo "$(basename "$0") $CNI_COMMAND" >> "$(dirname "$0")/calls"
cat > "$0.stdin.$CNI_COMMAND"
env > "$0.env.$CNI_COMMAND"
if [ -f "$0.fail" ]; then cat "$0.fail"; exit 1; fi
if [ "$CNI_COMMAND" = ADD ]; then echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.244.2.7/32"}], "by": "'"$(basename "$0")"'"}'; fi
"""


def install_plugin(bin_dir: Path, name: str) -> Path:
    path = bin_dir / name
    path.write_text(PLUGIN)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def runtime(tmp_path: Path, *plugins: str) -> CniRuntime:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in plugins:
        install_plugin(bin_dir, name)
    conf = node_conf_dir(tmp_path / "nodes", "node-2")
    conf.mkdir(parents=True)
    (conf / "10-test.conflist").write_bytes(build_conflist("test", [{"type": p} for p in plugins]))
    return CniRuntime(tmp_path / "nodes", cni_path=[str(tmp_path / "missing"), str(bin_dir)], timeout=10)


def test_a_node_without_a_conflist_calls_nothing(tmp_path: Path) -> None:
    assert CniRuntime(tmp_path / "nodes").add(RECORD, "/var/run/netns/x") is None
    assert CniRuntime(tmp_path / "nodes").delete(RECORD, "/var/run/netns/x") == []


def test_add_chains_each_plugins_result_into_the_next_and_del_runs_in_reverse(tmp_path: Path) -> None:
    cni = runtime(tmp_path, "first", "second")
    result = cni.add(RECORD, "/var/run/netns/am-pod-shop-web")
    assert result is not None and result["by"] == "second"
    bin_dir = tmp_path / "bin"
    first_in = json.loads((bin_dir / "first.stdin.ADD").read_text())
    second_in = json.loads((bin_dir / "second.stdin.ADD").read_text())
    assert first_in["prevResult"]["ips"][0]["gateway"] == "10.244.2.1"  # the cluster's own network
    assert second_in["prevResult"]["by"] == "first"
    env = dict(
        line.split("=", 1) for line in (bin_dir / "first.env.ADD").read_text().splitlines() if "=" in line
    )
    assert env["CNI_NETNS"] == "/var/run/netns/am-pod-shop-web" and "K8S_POD_NAME=web" in env["CNI_ARGS"]

    assert cni.delete(RECORD, "/var/run/netns/am-pod-shop-web") == []
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls == ["first ADD", "second ADD", "second DEL", "first DEL"]


def test_a_refusing_plugin_fails_the_add_with_its_message_and_del_only_reports_it(tmp_path: Path) -> None:
    cni = runtime(tmp_path, "ambient-cni")
    (tmp_path / "bin" / "ambient-cni.fail").write_text(
        '{"cniVersion": "1.0.0", "code": 11, "msg": "node agent unreachable"}'
    )
    with pytest.raises(
        CniPluginFailed, match="ambient-cni ADD for pod shop/web failed: node agent unreachable"
    ):
        cni.add(RECORD, "/var/run/netns/am-pod-shop-web")
    (problem,) = cni.delete(RECORD, "/var/run/netns/am-pod-shop-web")
    assert "node agent unreachable" in problem


def test_a_plugin_missing_from_the_cni_path_is_named(tmp_path: Path) -> None:
    cni = runtime(tmp_path)
    conf = node_conf_dir(tmp_path / "nodes", "node-2") / "10-test.conflist"
    conf.write_bytes(build_conflist("test", [{"type": "absent-plugin"}]))
    with pytest.raises(CniPluginFailed, match="no executable 'absent-plugin' in the CNI path"):
        cni.add(RECORD, "/var/run/netns/x")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CNI_PATH": "/a/bin:/b/bin"}, ["/a/bin", "/b/bin"]),
        ({"CNI_PATH": ":/a/bin:"}, ["/a/bin"]),
        ({"CNI_PATH": ""}, None),
        ({}, None),
    ],
    ids=[
        "CNI_PATH lists the plugin directories in order",
        "empty entries of CNI_PATH are skipped",
        "an empty CNI_PATH means the default",
        "without CNI_PATH plugins are looked up next to this Python, then in /opt/cni/bin",
    ],
)
def test_where_plugins_are_looked_up(environ: dict[str, str], expected: list[str] | None) -> None:
    default = [os.path.dirname(sys.executable), "/opt/cni/bin"]
    assert default_cni_path(environ) == (expected if expected is not None else default)

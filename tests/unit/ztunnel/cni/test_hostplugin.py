"""The host plugin (``ztunnel/cni/hostplugin.py``): its wire lines against ``wire.py``'s, its answers against
the venv plugin's for the same calls, and the file the host install writes, run as a node's host runs it:
the system's python3 with a bare environment (nothing of the venv) and a fake agent on a unix socket."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel.cni import errors, hostplugin, plugin
from ztunnel.cni.install import (
    _HOST_SHIM,
    HOST_PYTHON_MISSING,
    HostInstallConfig,
    host_install_from_env,
    host_plugin_executable,
    install_plugin,
)
from ztunnel.cni.wire import EventReply, PluginEvent, decode_event, encode_line

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.244.1.5/24"}]}
ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_UID=abc"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def conf(address: str, **over: Any) -> bytes:
    doc = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni", "enrollment": "agent",
           "cni_event_address": address, "event_timeout": 5, "prevResult": PREV, **over}
    return json.dumps(doc).encode()


def cni_env(command: str = "ADD", **over: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/cni-1234",
            "CNI_IFNAME": "eth0", "CNI_ARGS": ARGS, "CNI_PATH": "/opt/cni/bin", **over}


class FakeAgent:
    """A node agent's event socket in a thread: answers every event line with ``reply``, records the lines."""

    def __init__(self, path: Path, reply: EventReply) -> None:
        self.path = path
        self.reply = reply
        self.lines: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5.0)
                buf = b""
                while b"\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                self.lines.append(buf.partition(b"\n")[0])
                conn.sendall(encode_line(self.reply))

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=5.0)


@pytest.fixture
def agent_at(tmp_path: Path) -> Iterator[Any]:
    agents: list[FakeAgent] = []

    def start(reply: EventReply) -> FakeAgent:
        agents.append(FakeAgent(tmp_path / f"agent{len(agents)}.sock", reply))
        return agents[-1]

    yield start
    for a in agents:
        a.close()


# -- the wire -----------------------------------------------------------------------------------------------


def test_an_add_line_decodes_with_the_wire_as_the_agent_mode_event() -> None:
    config = json.loads(conf("/x"))
    line = hostplugin.pod_event("add", cni_env(), hostplugin.parse_cni_args(ARGS), config)
    assert line.endswith(b"\n")
    assert decode_event(line[:-1]) == PluginEvent(
        cmd="add", pod_namespace="demo", pod_name="web", container_id="c0ffee", netns="/var/run/netns/cni-1234",
        ifname="eth0", pod_uid="abc", pod_ips=("10.244.1.5",), wait=True, agent_decides=True)
    # byte for byte what the venv plugin sends for the same call
    assert line == encode_line(decode_event(line[:-1]))


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(ns=names, name=names, cid=names, uid=st.text(max_size=20),
       ips=st.lists(st.ip_addresses().map(str), max_size=3), cmd=st.sampled_from(["add", "del"]))
def test_every_host_line_decodes_with_the_wire(ns: str, name: str, cid: str, uid: str, ips: list[str],
                                               cmd: str) -> None:
    config = {"prevResult": {"ips": [{"address": f"{ip}/24"} for ip in ips]}}
    args = {"K8S_POD_NAMESPACE": ns, "K8S_POD_NAME": name, "K8S_POD_UID": uid}
    line = hostplugin.pod_event(cmd, cni_env(CNI_CONTAINERID=cid), args, config)
    event = decode_event(line[:-1])
    assert (event.cmd, event.pod_namespace, event.pod_name, event.container_id) == (cmd, ns, name, cid.strip())
    assert (event.pod_uid, event.pod_ips, event.wait, event.agent_decides) == (uid, tuple(ips), True, cmd == "add")


@settings(max_examples=150, deadline=None)
@given(ok=st.booleans(), error=st.text(max_size=60), captured=st.booleans(), enrolled=st.booleans())
def test_every_reply_the_wire_encodes_decodes_in_the_host_plugin(ok: bool, error: str, captured: bool,
                                                                 enrolled: bool) -> None:
    line = encode_line(EventReply(ok=ok, error=error, captured=captured, enrolled=enrolled))
    assert hostplugin.decode_reply(line[:-1]) == {"ok": ok, "error": error, "captured": captured,
                                                  "enrolled": enrolled}


BAD_REPLIES = [
    ("a reply that is not json is malformed", b"{nope", "malformed agent reply"),
    ("a reply without ok is malformed", b'{"error": "x"}', "no `ok` field"),
    ("a reply whose ok is not a bool is malformed", b'{"ok": "yes"}', "`ok` is not a bool"),
    ("a reply that is a list is malformed", b"[true]", "expected a JSON object"),
]


@pytest.mark.parametrize(("line", "words"), [c[1:] for c in BAD_REPLIES], ids=[c[0] for c in BAD_REPLIES])
def test_a_reply_that_is_no_reply_is_refused(line: bytes, words: str) -> None:
    with pytest.raises(hostplugin.AgentError, match=words):
        hostplugin.decode_reply(line)


def test_an_older_agents_reply_without_the_later_fields_decodes_with_their_defaults() -> None:
    assert hostplugin.decode_reply(b'{"ok": true}') == {"ok": True, "error": "", "captured": False,
                                                        "enrolled": False}


def test_the_error_codes_are_the_venv_plugins() -> None:
    for name in ("CNI_INCOMPATIBLE_VERSION", "CNI_INVALID_ENV", "CNI_IO_FAILURE", "CNI_DECODE_FAILURE",
                 "CNI_INVALID_CONFIG", "CNI_TRY_AGAIN_LATER", "CNI_ENROLL_FAILED"):
        assert getattr(hostplugin, name) == getattr(errors, name), name


# -- the same answers as the venv plugin ---------------------------------------------------------------------

REPLIES = [
    ("an enrolled pod the agent captured passes", EventReply(ok=True, captured=True, enrolled=True), 0, None),
    ("a pod the agent found not enrolled passes", EventReply(ok=True, enrolled=False), 0, None),
    ("an enrolled pod the agent could not capture fails with 100",
     EventReply(ok=False, error="redirection failed", enrolled=True), 1, 100),
    ("a pod the agent could not decide fails with 11", EventReply(ok=False, error="api down"), 1, 11),
]


@pytest.mark.parametrize(("reply", "status", "code"), [c[1:] for c in REPLIES], ids=[c[0] for c in REPLIES])
def test_the_host_plugin_answers_as_the_venv_plugin(agent_at: Any, reply: EventReply, status: int,
                                                    code: int | None) -> None:
    agent = agent_at(reply)
    stdin = conf(str(agent.path))
    host_out, host_status = hostplugin.run(cni_env(), stdin)
    venv_out, venv_status = plugin.run(cni_env(), stdin)
    assert (host_status, json.loads(host_out)) == (venv_status, json.loads(venv_out))
    assert host_status == status
    assert json.loads(host_out) == PREV if code is None else json.loads(host_out)["code"] == code
    assert agent.lines[0] == agent.lines[1]  # the same event line from both


OTHER_CALLS = [
    ("no agent fails the add with 11", cni_env(), None),
    ("a pod that is not kubernetes passes through", cni_env(CNI_ARGS="IgnoreUnknown=1"), None),
    ("an unknown command is refused with 4", cni_env("FROB"), None),
    ("an add without a netns is refused with 4", cni_env(CNI_NETNS=""), None),
    ("a relative netns is refused with 4", cni_env(CNI_NETNS="netns/x"), None),
    ("an unsupported cni version is refused with 1", cni_env(), {"cniVersion": "9.9.9"}),
    ("a stdin that is not json is refused with 6", cni_env(), b"{nope"),
    ("a negative event timeout is refused with 7", cni_env(), {"event_timeout": -1}),
    ("check of a valid call passes", cni_env("CHECK"), None),
    ("version lists the supported versions", cni_env("VERSION"), None),
]


@pytest.mark.parametrize(("env", "over"), [c[1:] for c in OTHER_CALLS], ids=[c[0] for c in OTHER_CALLS])
def test_other_calls_are_answered_as_the_venv_plugin(tmp_path: Path, env: dict[str, str], over: Any) -> None:
    stdin = over if isinstance(over, bytes) else conf(str(tmp_path / "none.sock"), **(over or {}))
    host_out, host_status = hostplugin.run(env, stdin)
    venv_out, venv_status = plugin.run(env, stdin)
    assert host_status == venv_status
    host_doc = json.loads(host_out) if host_out else None
    venv_doc = json.loads(venv_out) if venv_out else None
    if host_status and env["CNI_COMMAND"] != "FROB" and over != b"{nope":
        assert host_doc == venv_doc
    else:  # the decoders' own words differ (json vs msgspec); the code and the shape do not
        assert (host_doc or {}).get("code") == (venv_doc or {}).get("code")


def test_the_store_mode_is_refused_on_a_host_naming_the_fix(tmp_path: Path) -> None:
    out, status = hostplugin.run(cni_env(), conf(str(tmp_path / "x.sock"), enrollment="store"))
    doc = json.loads(out)
    assert status == 1 and doc["code"] == errors.CNI_INVALID_CONFIG
    assert "not offered" in doc["msg"] and '"enrollment": "agent"' in doc["msg"]


def test_del_without_an_agent_or_with_a_bad_config_never_fails(tmp_path: Path) -> None:
    assert hostplugin.run(cni_env("DEL"), conf(str(tmp_path / "none.sock"))) == (b"", 0)
    assert hostplugin.run(cni_env("DEL", CNI_CONTAINERID=""), b"{nope") == (b"", 0)


def test_del_tells_the_agent(agent_at: Any) -> None:
    agent = agent_at(EventReply(ok=True))
    assert hostplugin.run(cni_env("DEL"), conf(str(agent.path))) == (b"", 0)
    event = decode_event(agent.lines[0])
    assert (event.cmd, event.pod_name, event.wait, event.agent_decides) == ("del", "web", True, False)


# -- the installed file, run as the node's host runs it -------------------------------------------------------

needs_system_python = pytest.mark.skipif(
    not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3 on this machine (scripts/setup.sh installs python3-venv, "
                                       "which brings it)")


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    (tmp_path / "net.d").mkdir()
    host = HostInstallConfig(bin_dir=tmp_path / "bin", net_dir=tmp_path / "net.d", plugin_source=None,
                             entry={"type": "ambient-cni", "enrollment": "agent"})
    install_plugin(host)
    first = (host.bin_dir / "ambient-cni").read_bytes()
    install_plugin(host)  # idempotent
    assert (host.bin_dir / "ambient-cni").read_bytes() == first
    assert sorted(p.name for p in host.bin_dir.iterdir()) == ["ambient-cni"]  # no temp files left
    assert os.access(host.bin_dir / "ambient-cni", os.X_OK)
    return host.bin_dir / "ambient-cni"


def run_on_host(exe: Path, env: dict[str, str], stdin: bytes = b"", path: str = "/usr/bin:/bin") -> tuple[Any, int]:
    """The executable with only the runtime's variables and a system PATH (``env -i``): no venv, no PYTHON*."""
    proc = subprocess.run([str(exe)], input=stdin, env={"PATH": path, **env}, capture_output=True, timeout=30,
                          check=False)
    return (json.loads(proc.stdout) if proc.stdout else None), proc.returncode


@needs_system_python
def test_the_installed_plugin_passes_an_enrolled_pod_the_agent_captured(installed: Path, agent_at: Any) -> None:
    agent = agent_at(EventReply(ok=True, captured=True, enrolled=True))
    assert run_on_host(installed, cni_env(), conf(str(agent.path))) == (PREV, 0)
    assert decode_event(agent.lines[0]).agent_decides is True


HOST_FAILURES = [
    ("an agent that could not capture an enrolled pod fails it with 100",
     EventReply(ok=False, error="redirection failed", enrolled=True), 100),
    ("an agent that could not decide fails the pod with 11", EventReply(ok=False, error="api down"), 11),
]


@needs_system_python
@pytest.mark.parametrize(("reply", "code"), [c[1:] for c in HOST_FAILURES], ids=[c[0] for c in HOST_FAILURES])
def test_the_installed_plugin_fails_as_the_venv_plugin(installed: Path, agent_at: Any, reply: EventReply,
                                                       code: int) -> None:
    agent = agent_at(reply)
    doc, status = run_on_host(installed, cni_env(), conf(str(agent.path)))
    assert status == 1 and doc["code"] == code
    assert doc == json.loads(plugin.run(cni_env(), conf(str(agent.path)))[0])


@needs_system_python
def test_the_installed_plugin_without_an_agent_fails_the_add(installed: Path, tmp_path: Path) -> None:
    doc, status = run_on_host(installed, cni_env(), conf(str(tmp_path / "none.sock")))
    assert status == 1 and doc["code"] == 11 and "no such socket" in doc["msg"]


@needs_system_python
def test_the_installed_plugin_answers_version_and_del(installed: Path, tmp_path: Path) -> None:
    doc, status = run_on_host(installed, cni_env("VERSION"))
    assert status == 0 and doc["supportedVersions"] == list(hostplugin.SUPPORTED_CNI_VERSIONS)
    assert run_on_host(installed, cni_env("DEL"), conf(str(tmp_path / "none.sock"))) == (None, 0)


def test_a_host_without_python3_gets_a_cni_error_naming_the_requirement(tmp_path: Path) -> None:
    # The preamble as installed, with candidates no host has: what a node without python3 runs.
    shim = _HOST_SHIM.replace("python3 /usr/bin/python3 /usr/local/bin/python3 /bin/python3", "no-such-python3")
    assert shim != _HOST_SHIM
    exe = tmp_path / "ambient-cni"
    exe.write_text(shim)
    sh = shutil.which("sh") or "/bin/sh"
    proc = subprocess.run([sh, str(exe)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=30,
                          check=False)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and set(doc) == {"cniVersion", "code", "msg", "details"}
    assert doc["msg"].startswith(HOST_PYTHON_MISSING)


def test_the_host_plugin_is_python_3_8_with_the_standard_library_only() -> None:
    source = Path(hostplugin.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {alias.name.partition(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").partition(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"json", "os", "socket", "sys", "time", "typing"}
    # the installed file puts the shell preamble's string first: a __future__ import would not compile
    assert "__future__" not in imported
    compile(_HOST_SHIM + source, "ambient-cni", "exec")


def test_the_agents_host_install_writes_the_host_plugin_unless_told_otherwise(tmp_path: Path) -> None:
    env = {"MOUNTED_CNI_NET_DIR": str(tmp_path / "net.d"), "MOUNTED_CNI_BIN_DIR": str(tmp_path / "bin")}
    got = host_install_from_env(tmp_path / "pluginevent.sock", env)
    assert got is not None and got.plugin_source is None
    assert host_plugin_executable().startswith(b"#!/bin/sh\n")
    told = host_install_from_env(tmp_path / "pluginevent.sock", {**env, "CNI_PLUGIN_SOURCE": "/opt/ambient-cni"})
    assert told is not None and told.plugin_source == Path("/opt/ambient-cni")

"""The local cluster's container runtime side of CNI: it calls the node's CNI plugins as a kubelet does.

Each node has a CNI configuration directory (``<cluster dir>/nodes/<node>/net.d``, the node's
``/etc/cni/net.d``); the first ``*.conflist`` there (lexical order, as libcni picks) is the node's
network. The cluster's own veth plumbing plays the primary plugin: its outcome (interface, /32
address, gateway, routes) becomes the ``prevResult`` handed to the first listed plugin, whose result
feeds the next, and so on (CNI spec 1.0.0 chaining). ADD runs after the pod's netns exists and before
its process starts; DEL runs in reverse order before the netns is deleted and never fails the caller.
No conflist on a node: nothing to call (a cluster without the mesh). The pure pieces (``prev_result``,
``plugin_env``, ``plugin_stdin``, ``parse_result``) are table-tested; ``CniRuntime`` runs binaries
found on the CNI path (``$CNI_PATH``, else next to this Python, then /opt/cni/bin) with a deadline, each
call a fresh process as a kubelet's is (so what the plugin imports is paid per pod). Must not: decide anything about enrollment (the plugin does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import structlog

from .errors import ClusterError
from .state import PodRecord

log = structlog.get_logger("ambientctl.cluster.cni")

CNI_VERSION = "1.0.0"
CONF_DIR = "net.d"
POD_IFNAME = "eth0"
PLUGIN_TIMEOUT_S = 60.0
DEFAULT_CNI_BIN_DIRS = ("/opt/cni/bin",)
CNI_PATH_ENV = "CNI_PATH"  # the runtime's own setting, read by default_cni_path

Command = Literal["ADD", "DEL", "CHECK"]


class CniConfigInvalid(ClusterError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"CNI configuration {path}: {reason} (fix or remove the file)")


class CniPluginFailed(ClusterError):
    """A plugin refused or crashed; the pod is not started (the kubelet retries it)."""

    def __init__(self, plugin: str, command: str, pod: str, reason: str) -> None:
        super().__init__(f"CNI plugin {plugin} {command} for pod {pod} failed: {reason}")
        self.plugin = plugin
        self.command = command
        self.pod = pod
        self.reason = reason


class Conflist(msgspec.Struct, frozen=True, kw_only=True):
    """A network configuration list; each plugin entry is kept as given (plugins may have any keys)."""

    cni_version: str = msgspec.field(name="cniVersion")
    name: str
    plugins: list[dict[str, Any]]


# --- pure -----------------------------------------------------------------------------------------------


def node_conf_dir(nodes_dir: Path, node: str) -> Path:
    return nodes_dir / node / CONF_DIR


def build_conflist(name: str, plugins: Sequence[Mapping[str, Any]]) -> bytes:
    """A conflist's JSON text (what the mesh writes into a node's configuration directory)."""
    doc = {"cniVersion": CNI_VERSION, "name": name, "plugins": [dict(p) for p in plugins]}
    return json.dumps(doc, indent=2).encode() + b"\n"


def decode_conflist(data: bytes, path: str) -> Conflist:
    try:
        conflist = msgspec.json.decode(data, type=Conflist)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CniConfigInvalid(path, str(e)) from None
    if not conflist.plugins:
        raise CniConfigInvalid(path, "no plugins listed")
    for i, plugin in enumerate(conflist.plugins):
        kind = plugin.get("type")
        if not isinstance(kind, str) or not kind or "/" in kind:
            raise CniConfigInvalid(path, f"plugins[{i}].type must be a binary name, got {kind!r}")
    return conflist


def prev_result(record: PodRecord, netns_path: str, cni_version: str = CNI_VERSION) -> dict[str, Any]:
    """The primary network's result for a pod of the local cluster (CNI 1.0.0 result format)."""
    gateway = _gateway(record)
    return {
        "cniVersion": cni_version,
        "interfaces": [{"name": POD_IFNAME, "sandbox": netns_path}],
        "ips": [{"address": f"{record.ip}/32", "gateway": gateway, "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
        "dns": {},
    }


def _gateway(record: PodRecord) -> str:
    # The pod's default gateway is the first host of its node's /24 (see plan.py).
    a, b, c, _ = record.ip.split(".")
    return f"{a}.{b}.{c}.1"


def container_id(record: PodRecord, netns_path: str) -> str:
    """A sandbox id, unique while the pod's netns exists (its inode), stable between ADD and DEL."""
    try:
        inode = os.stat(netns_path).st_ino
    except OSError:
        inode = 0
    return f"{record.netns}-{inode}"


def plugin_env(
    command: Command,
    *,
    container: str,
    netns_path: str,
    namespace: str,
    name: str,
    cni_path: Sequence[str],
    base: Mapping[str, str],
    pod_uid: str = "",
    ifname: str = POD_IFNAME,
) -> dict[str, str]:
    """The environment of one plugin call (CNI spec §"Parameters"; CNI_ARGS as kubelet/CRI sets it)."""
    args = [
        "IgnoreUnknown=1",
        f"K8S_POD_NAMESPACE={namespace}",
        f"K8S_POD_NAME={name}",
        f"K8S_POD_INFRA_CONTAINER_ID={container}",
    ]
    if pod_uid:
        args.append(f"K8S_POD_UID={pod_uid}")
    return {
        **base,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns_path,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": ";".join(args),
        "CNI_PATH": os.pathsep.join(cni_path),
    }


def plugin_stdin(conflist: Conflist, plugin: Mapping[str, Any], previous: Mapping[str, Any] | None) -> bytes:
    """One plugin's network config: its entry plus the list's name and version, plus ``prevResult``."""
    doc = {**plugin, "cniVersion": conflist.cni_version, "name": conflist.name}
    if previous is not None:
        doc["prevResult"] = dict(previous)
    return json.dumps(doc).encode()


def parse_result(stdout: bytes, returncode: int) -> dict[str, Any]:
    """The plugin's result (success), or the reason it gives (``ValueError``) as CNI error JSON says it."""
    text = stdout.strip()
    doc: Any = None
    if text:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
    if returncode != 0:
        if isinstance(doc, dict) and "msg" in doc:
            reason = f"{doc['msg']} (code {doc.get('code', '?')})"
            if doc.get("details"):
                reason += f": {doc['details']}"
            raise ValueError(reason)
        raise ValueError(
            f"exit status {returncode}" + (f": {text[:500].decode(errors='replace')}" if text else "")
        )
    if not isinstance(doc, dict):
        return {}
    return doc


# --- running plugins ------------------------------------------------------------------------------------


def default_cni_path(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Where plugin binaries are looked up: the directories of ``$CNI_PATH`` when it is set (the CNI
    spec's name for the plugin search path; the kubelet's ``--cni-bin-dir``), else next to this Python
    (the console scripts), then /opt/cni/bin."""
    listed = [d for d in environ.get(CNI_PATH_ENV, "").split(os.pathsep) if d]
    return listed or [os.path.dirname(sys.executable), *DEFAULT_CNI_BIN_DIRS]


class CniRuntime:
    """Calls the plugins of a node's conflist for a pod (ADD in order, DEL in reverse)."""

    def __init__(
        self,
        nodes_dir: Path,
        *,
        cni_path: Sequence[str] | None = None,
        timeout: float = PLUGIN_TIMEOUT_S,
    ) -> None:
        self.nodes_dir = nodes_dir
        self.cni_path = list(cni_path) if cni_path is not None else default_cni_path()
        self.timeout = timeout

    def conflist(self, node: str) -> Conflist | None:
        """The node's network configuration, or None when its directory has no conflist."""
        directory = node_conf_dir(self.nodes_dir, node)
        try:
            candidates = sorted(p for p in directory.iterdir() if p.suffix == ".conflist")
        except OSError:
            return None
        if not candidates:
            return None
        path = candidates[0]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CniConfigInvalid(str(path), f"unreadable: {e.strerror}") from None
        return decode_conflist(data, str(path))

    def add(self, record: PodRecord, netns_path: str, pod_uid: str = "") -> dict[str, Any] | None:
        """Run ADD through the chain; the last result, or None when the node has no conflist."""
        conflist = self.conflist(record.spec.node)
        if conflist is None:
            return None
        container = container_id(record, netns_path)
        result: dict[str, Any] = prev_result(record, netns_path, conflist.cni_version)
        for plugin in conflist.plugins:
            out = self._call("ADD", conflist, plugin, result, record, netns_path, container, pod_uid)
            result = out or result
        return result

    def delete(self, record: PodRecord, netns_path: str, pod_uid: str = "") -> list[str]:
        """Run DEL through the chain in reverse; returns the failures (logged, never raised)."""
        try:
            conflist = self.conflist(record.spec.node)
        except CniConfigInvalid as e:
            log.warning("CNI DEL skipped", pod=f"{record.spec.namespace}/{record.spec.name}", error=str(e))
            return [str(e)]
        if conflist is None:
            return []
        container = container_id(record, netns_path)
        previous = prev_result(record, netns_path, conflist.cni_version)
        problems = []
        for plugin in reversed(conflist.plugins):
            try:
                self._call("DEL", conflist, plugin, previous, record, netns_path, container, pod_uid)
            except CniPluginFailed as e:
                log.warning("CNI DEL failed", error=str(e))
                problems.append(str(e))
        return problems

    def _call(
        self,
        command: Command,
        conflist: Conflist,
        plugin: Mapping[str, Any],
        previous: Mapping[str, Any],
        record: PodRecord,
        netns_path: str,
        container: str,
        pod_uid: str,
    ) -> dict[str, Any]:
        kind = str(plugin["type"])
        pod = f"{record.spec.namespace}/{record.spec.name}"
        binary = self._find(kind)
        if binary is None:
            raise CniPluginFailed(
                kind, command, pod, f"no executable {kind!r} in the CNI path {os.pathsep.join(self.cni_path)}"
            )
        env = plugin_env(
            command,
            container=container,
            netns_path=netns_path,
            namespace=record.spec.namespace,
            name=record.spec.name,
            cni_path=self.cni_path,
            base={"PATH": os.environ.get("PATH", os.defpath)},
            pod_uid=pod_uid,
        )
        try:
            done = subprocess.run(
                [binary],
                input=plugin_stdin(conflist, plugin, previous),
                capture_output=True,
                env=env,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            raise CniPluginFailed(kind, command, pod, f"no answer within {self.timeout:g} s") from None
        except OSError as e:
            raise CniPluginFailed(kind, command, pod, f"cannot run {binary}: {e.strerror or e}") from None
        if done.stderr:
            log.debug(
                "CNI plugin stderr",
                plugin=kind,
                command=command,
                pod=pod,
                stderr=done.stderr.decode(errors="replace")[-2000:],
            )
        try:
            result = parse_result(done.stdout, done.returncode)
        except ValueError as e:
            raise CniPluginFailed(kind, command, pod, str(e)) from None
        log.info("CNI plugin called", plugin=kind, command=command, pod=pod)
        return result

    def _find(self, kind: str) -> str | None:
        for directory in self.cni_path:
            candidate = os.path.join(directory, kind)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        return None

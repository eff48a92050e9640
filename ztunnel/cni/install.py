"""The node agent's host install: ``ambient-cni`` and its chained conflist entry in the host's CNI directories,
and their removal when the mesh is uninstalled from the node (not when the agent merely restarts).

Role: on Kubernetes the node agent DaemonSet mounts the host's CNI directories (``MOUNTED_CNI_BIN_DIR``,
``MOUNTED_CNI_NET_DIR``). At start ``install_plugin`` writes the plugin into the bin directory (the host
plugin, ``hostplugin.py`` behind a ``/bin/sh`` preamble, which needs only the host's python3: the runtime runs
it on the host, without the image's venv; or the executable ``CNI_PLUGIN_SOURCE`` names) and chains our entry last into the node's primary conflist (the first ``*.conflist``/``*.conf`` in lexical
order, the one libcni loads; the entry says ``"enrollment": "agent"``: the node has no embedded store, so
the plugin leaves the enrolment decision to this agent); at SIGTERM ``should_clean_up`` decides, and ``uninstall_plugin`` removes
both again. The local cluster does none of this (its conflist is written by ``ambientctl``).

How the agent tells uninstall from restart (Istio's istio-cni does the same since 1.25): on SIGTERM it
reads its own DaemonSet. Gone (404), or carrying ``metadata.deletionTimestamp``: the DaemonSet is being
deleted, this is an uninstall: remove. Present and not deleting: a restart, rollout or upgrade: keep the
plugin and conflist, so pods starting meanwhile still wait for capture (fail closed) and the next agent
takes over. The DaemonSet cannot be read (API down, RBAC): keep, and log why: a left-over entry blocks
new pods on that node until an agent runs again, while a wrong removal lets enrolled pods start with no
redirection (plaintext). ``CNI_UNINSTALL_ON_STOP=always|never`` overrides the decision.

Invariants: every file write is atomic (temporary file in the same directory, fsync, rename), so the
runtime never reads half a conflist; install and uninstall are idempotent; other plugins' entries and
every other key of the conflist are kept as they were; a conflist that does not parse is refused with its
path, never rewritten. A single-plugin ``.conf`` is refused (convert it to a conflist first): rewriting it
under another name would change which file libcni loads.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

log = structlog.get_logger("ztunnel.cni.install")

PLUGIN_TYPE = "ambient-cni"
MOUNTED_CNI_BIN_DIR = "MOUNTED_CNI_BIN_DIR"  # the host's /opt/cni/bin, as mounted into the agent
MOUNTED_CNI_NET_DIR = "MOUNTED_CNI_NET_DIR"  # the host's /etc/cni/net.d (Istio's variable name)
CNI_PLUGIN_SOURCE = "CNI_PLUGIN_SOURCE"  # an executable to copy instead of the host plugin (hostplugin.py)
HOST_PYTHON_MISSING = "ambient-cni needs python3 on the node's host"
CNI_UNINSTALL_ON_STOP = "CNI_UNINSTALL_ON_STOP"  # auto (default) | always | never
DAEMONSET_NAME = "DAEMONSET_NAME"
POD_NAMESPACE = "POD_NAMESPACE"
DAEMONSET_VERBS: tuple[str, ...] = ("get",)  # apps/daemonsets in the agent's namespace: the only API call here


class InstallError(Exception):
    """The host's CNI directories cannot be changed as needed; the message names the file and the fix."""


class UninstallMode(enum.StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class HostInstallConfig:
    bin_dir: Path
    net_dir: Path
    plugin_source: Path | None  # None: the host plugin built from the package (host_plugin_executable)
    entry: Mapping[str, Any]  # our conflist entry (without cniVersion: the conflist's own applies)
    daemonset: str = "istio-cni"
    namespace: str = "istio-system"
    on_stop: UninstallMode = UninstallMode.AUTO


def parse_host_install(env: Mapping[str, str], entry: Mapping[str, Any],
                       default_source: Path | None = None) -> HostInstallConfig | None:
    """The host install settings, or None when the CNI directories are not mounted (the local cluster)."""
    bin_raw, net_raw = env.get(MOUNTED_CNI_BIN_DIR, "").strip(), env.get(MOUNTED_CNI_NET_DIR, "").strip()
    if not bin_raw and not net_raw:
        return None
    if not bin_raw or not net_raw:
        missing = MOUNTED_CNI_BIN_DIR if not bin_raw else MOUNTED_CNI_NET_DIR
        raise InstallError(f"{missing} is not set: the host install needs both {MOUNTED_CNI_BIN_DIR} and "
                           f"{MOUNTED_CNI_NET_DIR} (the host's /opt/cni/bin and /etc/cni/net.d as mounted)")
    try:
        mode = UninstallMode(env.get(CNI_UNINSTALL_ON_STOP, "auto").strip().lower() or "auto")
    except ValueError:
        raise InstallError(f"{CNI_UNINSTALL_ON_STOP}={env[CNI_UNINSTALL_ON_STOP]!r}: expected auto, always or never") \
            from None
    source = env.get(CNI_PLUGIN_SOURCE, "").strip()
    return HostInstallConfig(
        bin_dir=Path(bin_raw), net_dir=Path(net_raw), plugin_source=Path(source) if source else default_source,
        entry=dict(entry), daemonset=env.get(DAEMONSET_NAME, "").strip() or "istio-cni",
        namespace=env.get(POD_NAMESPACE, "").strip() or "istio-system", on_stop=mode,
    )


# -- the decision ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CleanupDecision:
    remove: bool
    reason: str


def should_clean_up(daemonset: Mapping[str, Any] | None, *, lookup_error: str | None = None,
                    mode: UninstallMode = UninstallMode.AUTO) -> CleanupDecision:
    """Whether a stopping agent removes the plugin and its conflist entry (see the module doc; pure).

    ``daemonset`` is the agent's own DaemonSet as read from the API server (None: 404, it is gone);
    ``lookup_error`` says why it could not be read at all."""
    if mode is UninstallMode.ALWAYS:
        return CleanupDecision(True, f"{CNI_UNINSTALL_ON_STOP}=always")
    if mode is UninstallMode.NEVER:
        return CleanupDecision(False, f"{CNI_UNINSTALL_ON_STOP}=never")
    if lookup_error is not None:
        return CleanupDecision(False, f"own DaemonSet could not be read ({lookup_error}); keeping the plugin "
                                      "(fail closed: new pods wait for the next agent)")
    if daemonset is None:
        return CleanupDecision(True, "own DaemonSet is gone: the mesh is being uninstalled from this node")
    meta = daemonset.get("metadata")
    if isinstance(meta, Mapping) and meta.get("deletionTimestamp"):
        return CleanupDecision(True, "own DaemonSet is being deleted: the mesh is being uninstalled from this node")
    return CleanupDecision(False, "own DaemonSet remains: a restart or upgrade, the next agent takes over")


# -- the files -------------------------------------------------------------------------------------------

# The installed file is a /bin/sh script and a Python module at once. sh runs the first word (the quotes
# around ':' leave the no-op command ``:``), finds python3 and execs it isolated on this same file, or prints
# a CNI error JSON naming the requirement and exits 1; Python reads the shell part as a string statement and
# runs the module after it. The shell part has no backslash and no three quotes in a row.
_HOST_SHIM = (
    "#!/bin/sh\n"
    "''':'\n"
    "for py in python3 /usr/bin/python3 /usr/local/bin/python3 /bin/python3; do\n"
    '  if command -v "$py" >/dev/null 2>&1; then exec "$py" -I -S "$0" "$@"; fi\n'
    "done\n"
    "printf '%s' '{\"cniVersion\":\"1.0.0\",\"code\":5,\"msg\":\"MISSING (none found on PATH, in /usr/bin, "
    "/usr/local/bin or /bin)\",\"details\":\"install python3 (3.8 or newer) on the node, or set "
    "CNI_PLUGIN_SOURCE to a plugin built for it\"}'\n"
    "exit 1\n"
    "'''\n"
).replace("MISSING", HOST_PYTHON_MISSING.replace("'", "'\"'\"'"))


def host_plugin_executable() -> bytes:
    """The ``ambient-cni`` a node's host runs: the shell preamble and ``hostplugin.py``'s source, read from the
    installed package (no network); it needs only the host's python3 (>= 3.8, standard library)."""
    from ztunnel.cni import hostplugin

    try:
        source = Path(hostplugin.__file__).read_bytes()
    except OSError as e:
        raise InstallError(f"cannot read the host plugin's source {hostplugin.__file__}: {e.strerror} "
                           "(is the image's ztunnel package complete?)") from e
    return _HOST_SHIM.encode() + source



@dataclass(frozen=True, slots=True)
class InstallResult:
    plugin: Path
    conflist: Path | None  # None: no primary conflist on the node yet (the pod network is not installed)


def primary_config(net_dir: Path) -> Path | None:
    """The file libcni loads for pods: the first ``*.conf``/``*.conflist``/``*.json`` in lexical order."""
    try:
        names = sorted(p.name for p in net_dir.iterdir() if p.suffix in (".conf", ".conflist", ".json") and p.is_file())
    except OSError as e:
        raise InstallError(f"cannot list the CNI config directory {net_dir}: {e.strerror}") from e
    return net_dir / names[0] if names else None


def install_plugin(config: HostInstallConfig) -> InstallResult:
    """Copy the plugin into the bin directory and chain our entry last in the primary conflist (idempotent)."""
    plugin = config.bin_dir / PLUGIN_TYPE
    if config.plugin_source is None:
        data = host_plugin_executable()
    else:
        try:
            data = config.plugin_source.read_bytes()
        except OSError as e:
            raise InstallError(f"cannot read the plugin {config.plugin_source}: {e.strerror} "
                               f"(unset {CNI_PLUGIN_SOURCE} to install the built-in host plugin)") from e
    _atomic_write(plugin, data, 0o755)
    primary = primary_config(config.net_dir)
    if primary is None:
        log.warning("no CNI config on this node yet; the plugin is not chained (is the pod network installed?)",
                    dir=str(config.net_dir))
        return InstallResult(plugin, None)
    conflist = _read_conflist(primary)
    plugins = [p for p in conflist["plugins"] if not _ours(p)]
    conflist["plugins"] = [*plugins, {"type": PLUGIN_TYPE, **{k: v for k, v in config.entry.items() if k != "type"}}]
    _atomic_write(primary, (json.dumps(conflist, indent=2) + "\n").encode(), 0o644)
    log.info("CNI plugin installed and chained", plugin=str(plugin), conflist=str(primary))
    return InstallResult(plugin, primary)


def uninstall_plugin(config: HostInstallConfig) -> list[Path]:
    """Remove our entry from every conflist that has it and the plugin executable; the paths changed."""
    changed: list[Path] = []
    try:
        files = sorted(p for p in config.net_dir.iterdir() if p.suffix in (".conflist", ".json") and p.is_file())
    except FileNotFoundError:
        files = []
    except OSError as e:
        raise InstallError(f"cannot list the CNI config directory {config.net_dir}: {e.strerror}") from e
    for path in files:
        try:
            conflist = _read_conflist(path)
        except InstallError as e:  # not ours to repair: say so and carry on with the rest
            log.warning("CNI config left as it is", error=str(e))
            continue
        kept = [p for p in conflist["plugins"] if not _ours(p)]
        if len(kept) != len(conflist["plugins"]):
            conflist["plugins"] = kept
            _atomic_write(path, (json.dumps(conflist, indent=2) + "\n").encode(), 0o644)
            changed.append(path)
    plugin = config.bin_dir / PLUGIN_TYPE
    try:
        plugin.unlink()
        changed.append(plugin)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise InstallError(f"cannot remove {plugin}: {e.strerror}") from e
    log.info("CNI plugin uninstalled", changed=[str(p) for p in changed])
    return changed


def _ours(plugin: Any) -> bool:
    return isinstance(plugin, Mapping) and plugin.get("type") == PLUGIN_TYPE


def _read_conflist(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except OSError as e:
        raise InstallError(f"cannot read the CNI config {path}: {e.strerror}") from e
    except ValueError as e:
        raise InstallError(f"CNI config {path} is not JSON ({e}); fix or remove it") from e
    if not isinstance(doc, dict):
        raise InstallError(f"CNI config {path} is not a JSON object")
    if not isinstance(doc.get("plugins"), list):
        raise InstallError(f"CNI config {path} has no plugins list (a single-plugin .conf); convert it to a "
                           "conflist so ambient-cni can be chained after the pod network")
    return doc


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise InstallError(f"cannot write in {path.parent}: {e.strerror} (is the host directory mounted writable?)") \
            from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InstallError(f"cannot write {path}: {e.strerror}") from e


# -- at SIGTERM ------------------------------------------------------------------------------------------


async def read_own_daemonset(api: ApiClient, namespace: str, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(daemonset, None)``; ``(None, None)`` when it is gone (404); ``(None, why)`` when it cannot be read."""
    from meshcore.store.errors import StoreUnavailable
    from meshcore.store.kubernetes import ApiFailure, api_call

    try:
        return await api_call(api, "GET", f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}",
                              request_timeout=5.0), None
    except ApiFailure as e:
        if e.status == 404:
            return None, None
        hint = " (RBAC: the node agent needs get on daemonsets in its namespace)" if e.status == 403 else ""
        return None, f"{e}{hint}"
    except StoreUnavailable as e:
        return None, str(e)


async def clean_up_on_stop(config: HostInstallConfig, api: ApiClient | None) -> CleanupDecision:
    """At SIGTERM: decide (reading the own DaemonSet unless the mode says) and uninstall when it is an uninstall."""
    daemonset: dict[str, Any] | None = None
    error: str | None = None
    if config.on_stop is UninstallMode.AUTO:
        if api is None:
            error = "no Kubernetes API configuration"
        else:
            daemonset, error = await read_own_daemonset(api, config.namespace, config.daemonset)
    decision = should_clean_up(daemonset, lookup_error=error, mode=config.on_stop)
    log.info("node agent stopping", remove_cni_plugin=decision.remove, reason=decision.reason)
    if decision.remove:
        try:
            uninstall_plugin(config)
        except InstallError as e:  # the agent is stopping anyway: say what is left on the node
            log.error("CNI plugin not fully removed; remove it by hand", error=str(e))
    return decision


async def clean_up_in_cluster(config: HostInstallConfig) -> CleanupDecision:
    """``clean_up_on_stop`` with the pod's in-cluster API configuration (its service-account token)."""
    from kubernetes_asyncio.client import ApiClient

    from meshcore.store.errors import StoreUnavailable
    from meshcore.store.kubernetes import load_configuration

    try:
        configuration = load_configuration()
    except StoreUnavailable as e:
        log.warning("no Kubernetes API to read the own DaemonSet", error=str(e))
        return await clean_up_on_stop(config, None)
    async with ApiClient(configuration) as api:
        return await clean_up_on_stop(config, api)


def host_install_from_env(event_socket: Path, env: Mapping[str, str] | None = None) -> HostInstallConfig | None:
    """The node agent's host install settings from its environment (None on the local cluster)."""
    # enrollment "agent": a Kubernetes node has no embedded store for the plugin to read; the agent decides.
    entry = {"type": PLUGIN_TYPE, "cni_event_address": str(event_socket), "enrollment": "agent"}
    return parse_host_install(os.environ if env is None else env, entry, None)

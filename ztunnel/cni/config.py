"""Settings of the CNI plugin (its network config JSON on stdin) and of the node agent (environment/flags).

Plugin: ``decode_plugin_config(stdin)`` -> ``PluginConfig``, defined in ``plugin_config`` (which the
plugin, a process per pod, imports without this module and its ``ztunnel.config`` parsers) and
re-exported here. Agent: ``parse_config(env, flags)`` -> ``NodeAgentConfig``; flags win over the
environment, which wins over the defaults; a bad value raises ``ConfigError`` naming the variable. ``INPOD_UDS`` is
the ZDS socket path ztunnel connects to (Istio's name and default). ``STORE`` picks where the agent reads
pods and namespaces, with istiod-lite's setting name and values: ``sqlite`` (the embedded store in
``AMBIENT_STATE_DIR``, the default) or ``kubernetes`` (the API server: in-cluster config in a pod, else
``KUBECONFIG``/``KUBE_CONTEXT``). Two HTTP listeners: ``MONITORING_ADDR`` (``/metrics``, ``/readyz``;
istio-cni's 0.0.0.0:15014) and ``ADMIN_ADDR`` (``/debug/pods``: every captured pod's netns path and
redirection state; 127.0.0.1:15015). The admin address follows the project's rule for admin ports
(``meshcore.config.parse_admin_address``, as ztunnel's and the waypoint's): a non-loopback bind is refused
unless ``ADMIN_ALLOW_REMOTE=true``, since on Kubernetes the agent runs on the host network. Pure: reads only
what it is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from meshcore.config import parse_admin_address
from ztunnel.cni.errors import ConfigError

# The plugin's settings, re-exported: the plugin itself imports ``plugin_config`` alone (see there).
from ztunnel.cni.plugin_config import DEFAULT_EVENT_SOCKET as DEFAULT_EVENT_SOCKET
from ztunnel.cni.plugin_config import DEFAULT_EVENT_TIMEOUT as DEFAULT_EVENT_TIMEOUT
from ztunnel.cni.plugin_config import SUPPORTED_CNI_VERSIONS as SUPPORTED_CNI_VERSIONS
from ztunnel.cni.plugin_config import PluginConfig as PluginConfig
from ztunnel.cni.plugin_config import decode_plugin_config as decode_plugin_config
from ztunnel.config import ConfigError as ZtunnelConfigError
from ztunnel.config import (
    HostPort,
    parse_bool,
    parse_duration,
    parse_host_port,
    parse_log_format,
    parse_log_level,
    parse_positive_int,
)

if TYPE_CHECKING:
    from ztunnel.redirect import RedirectOptions


def _redirect_options(*, ipv6: bool = False, dns_capture: bool = False) -> RedirectOptions:
    # Imported when an agent's settings are made, never for the plugin: ``ztunnel.redirect`` loads the
    # kernel side (pyroute2), a third of the plugin's start-up, and the plugin runs once per pod.
    from ztunnel.redirect import RedirectOptions

    return RedirectOptions(ipv6=ipv6, dns_capture=dns_capture)


# -- the node agent ----------------------------------------------------------------------------------------

NODE_NAME = "NODE_NAME"
STATE_DIR = "AMBIENT_STATE_DIR"  # as meshcore.store.paths
INPOD_UDS = "INPOD_UDS"  # Istio's name (ztunnel env / istio-cni flag ztunnel-uds-address)
CNI_EVENT_ADDRESS = "CNI_EVENT_ADDRESS"
NETNS_MAP_PATH = "NETNS_MAP_PATH"
MONITORING_ADDR = "MONITORING_ADDR"
ADMIN_ADDR = "ADMIN_ADDR"  # as ztunnel's and the waypoint's
ADMIN_ALLOW_REMOTE = "ADMIN_ALLOW_REMOTE"
ZDS_ACK_TIMEOUT = "ZDS_ACK_TIMEOUT"
RETRY_INITIAL = "RETRY_INITIAL"
RETRY_MAX = "RETRY_MAX"
MAX_PARALLEL = "MAX_PARALLEL"
AMBIENT_IPV6 = "AMBIENT_IPV6"  # istio-cni's values.ambient.ipv6
AMBIENT_DNS_CAPTURE = "AMBIENT_DNS_CAPTURE"  # istio-cni's values.ambient.dnsCapture
NFT_PATH = "NFT_PATH"
PROC_ROOT = "PROC_ROOT"
LOG_LEVEL = "LOG_LEVEL"
LOG_FORMAT = "LOG_FORMAT"
STORE = "STORE"  # as istiod_lite.config: "sqlite" (embedded, default) or "kubernetes" (the API server)
STORE_BACKENDS = ("sqlite", "kubernetes")
KUBECONFIG = "KUBECONFIG"
KUBE_CONTEXT = "KUBE_CONTEXT"

DEFAULT_INPOD_UDS = "/var/run/ztunnel/ztunnel.sock"
DEFAULT_NETNS_MAP = "/var/run/ambient-cni/pods.json"  # tmpfs: netns paths do not survive a reboot either
DEFAULT_MONITORING_PORT = 15014  # istio-cni's monitoring port
# The debug endpoints' port, on loopback. Not 15000: on the local cluster (the node's netns) and on
# Kubernetes (host network) the agent may share a network namespace with a ztunnel's admin port; 15015 is
# used by no Istio component nor by ztunnel (docs/kubernetes.md lists the node's ports).
DEFAULT_ADMIN_PORT = 15015
DEFAULT_MONITORING_ADDR = HostPort("0.0.0.0", DEFAULT_MONITORING_PORT)
DEFAULT_ADMIN_ADDR = HostPort("127.0.0.1", DEFAULT_ADMIN_PORT)


@dataclass(frozen=True, slots=True)
class NodeAgentConfig:
    """Everything the node agent needs; built by ``parse_config`` (or directly, in tests)."""

    # Pods with spec.nodeName == node_name are this agent's.
    node_name: str
    # The embedded store's state directory; None: meshcore.store's default resolution.
    state_dir: Path | None = None
    # ZDS: the agent listens here, ztunnel connects (SOCK_SEQPACKET, 0600).
    zds_socket: Path = Path(DEFAULT_INPOD_UDS)
    # Plugin -> agent events (SOCK_STREAM, 0600).
    event_socket: Path = Path(DEFAULT_EVENT_SOCKET)
    # Where pod -> netns paths learnt from CNI events are kept across agent restarts.
    netns_map_path: Path = Path(DEFAULT_NETNS_MAP)
    # /metrics and /readyz; None: no HTTP endpoint.
    monitoring_addr: HostPort | None = DEFAULT_MONITORING_ADDR
    # /debug/pods (pods' netns paths and rules: not for the network); loopback unless ADMIN_ALLOW_REMOTE.
    # None: no admin endpoint.
    admin_addr: HostPort | None = DEFAULT_ADMIN_ADDR
    # How long ztunnel gets to acknowledge one ZDS message (istio-cni uses 5 s deadlines).
    zds_ack_timeout: float = 5.0
    # A failed pod is retried after retry_initial, doubling up to retry_max.
    retry_initial: float = 0.5
    retry_max: float = 30.0
    # Pods whose redirection is installed or removed at the same time (the kernel step; the ZDS hand-off
    # and the annotation are not bounded by it).
    max_parallel: int = 16
    redirect: RedirectOptions = field(default_factory=_redirect_options)
    # None: nftables through libnftables in-process (the `nft` binary where the library is missing);
    # a path (NFT_PATH): always run that nft binary.
    nft: str | None = None
    # Scanned for a pod's processes when no CNI event told us its netns.
    proc_root: Path = Path("/proc")
    log_level: str = "info"
    log_format: str = "console"
    # "sqlite" (the embedded store in state_dir) or "kubernetes" (this node's pods from the API server);
    # with kubernetes, the kubeconfig file and context (None: in-cluster config in a pod, else the
    # kubeconfig's defaults).
    store: str = "sqlite"
    kubeconfig: str | None = None
    kube_context: str | None = None


T = TypeVar("T")


def _setting(parse: Callable[[str, str], T], value: str, variable: str) -> T:
    """``parse`` (one of ztunnel's setting parsers), its error raised as the node agent's."""
    try:
        return parse(value, variable)
    except ZtunnelConfigError as e:
        raise ConfigError(variable, e.detail) from None


def _seconds(value: str, variable: str) -> float:
    seconds = _setting(parse_duration, value, variable)
    if seconds <= 0:
        raise ConfigError(variable, f"{value!r} must be more than zero")
    return seconds


def _path(value: str, variable: str) -> Path:
    if not value.strip():
        raise ConfigError(variable, "must be a path, got an empty value")
    return Path(value).expanduser()


def _no_shared_port(monitoring: HostPort | None, admin: HostPort | None) -> None:
    """Two listeners on one port of overlapping addresses cannot both bind: say so before starting."""
    if monitoring is None or admin is None or monitoring.port != admin.port or admin.port == 0:
        return
    wildcard = {"0.0.0.0", "::"}
    if monitoring.host == admin.host or monitoring.host in wildcard or admin.host in wildcard:
        raise ConfigError(
            ADMIN_ADDR, f"{admin} shares port {admin.port} with {MONITORING_ADDR} ({monitoring}); pick another port"
        )


def parse_config(
    env: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None
) -> NodeAgentConfig:
    """The agent's configuration from ``flags`` over ``env`` (``os.environ`` by default) over defaults."""
    source = {**(os.environ if env is None else env), **(flags or {})}

    def get(name: str) -> str | None:
        value = source.get(name)
        return None if value is None else str(value)

    node = (get(NODE_NAME) or "").strip()
    if not node:
        raise ConfigError(
            NODE_NAME, "required: the name of the node this agent serves (spec.nodeName of its pods)"
        )
    kwargs: dict[str, Any] = {"node_name": node}
    if (v := get(STATE_DIR)) is not None and v.strip():
        kwargs["state_dir"] = _path(v, STATE_DIR)
    for var, key in (
        (INPOD_UDS, "zds_socket"),
        (CNI_EVENT_ADDRESS, "event_socket"),
        (NETNS_MAP_PATH, "netns_map_path"),
        (PROC_ROOT, "proc_root"),
    ):
        if (v := get(var)) is not None:
            kwargs[key] = _path(v, var)
    if (v := get(MONITORING_ADDR)) is not None:
        listen = partial(parse_host_port, default_host="0.0.0.0")
        kwargs["monitoring_addr"] = _setting(listen, v, MONITORING_ADDR) if v.strip() else None
    allow_remote = _setting(parse_bool, get(ADMIN_ALLOW_REMOTE) or "false", ADMIN_ALLOW_REMOTE)
    admin = get(ADMIN_ADDR)
    if admin is None or admin.strip():
        admin_listen = partial(
            parse_admin_address,
            allow_remote=allow_remote,
            allow_variable=ADMIN_ALLOW_REMOTE,
            exposes="shows every captured pod's network namespace and redirection rules",
        )
        kwargs["admin_addr"] = _setting(admin_listen, admin or str(DEFAULT_ADMIN_ADDR), ADMIN_ADDR)
    else:
        kwargs["admin_addr"] = None
    _no_shared_port(kwargs.get("monitoring_addr", DEFAULT_MONITORING_ADDR), kwargs["admin_addr"])
    for var, key in (
        (ZDS_ACK_TIMEOUT, "zds_ack_timeout"),
        (RETRY_INITIAL, "retry_initial"),
        (RETRY_MAX, "retry_max"),
    ):
        if (v := get(var)) is not None:
            kwargs[key] = _seconds(v, var)
    if kwargs.get("retry_initial", 0.5) > kwargs.get("retry_max", 30.0):
        raise ConfigError(RETRY_INITIAL, "must not be longer than RETRY_MAX")
    if (v := get(MAX_PARALLEL)) is not None:
        kwargs["max_parallel"] = _setting(parse_positive_int, v, MAX_PARALLEL)
    ipv6 = _setting(parse_bool, get(AMBIENT_IPV6) or "false", AMBIENT_IPV6)
    dns = _setting(parse_bool, get(AMBIENT_DNS_CAPTURE) or "false", AMBIENT_DNS_CAPTURE)
    kwargs["redirect"] = _redirect_options(ipv6=ipv6, dns_capture=dns)
    if (v := get(NFT_PATH)) is not None:
        if not v.strip():
            raise ConfigError(NFT_PATH, "must name the nft binary, got an empty value")
        kwargs["nft"] = v.strip()
    kwargs["log_level"] = _setting(parse_log_level, get(LOG_LEVEL) or "info", LOG_LEVEL)
    kwargs["log_format"] = _setting(parse_log_format, get(LOG_FORMAT) or "console", LOG_FORMAT)
    backend = (get(STORE) or "").strip().lower() or "sqlite"
    if backend not in STORE_BACKENDS:
        raise ConfigError(STORE, f"{get(STORE)!r}: expected one of {', '.join(STORE_BACKENDS)}")
    kwargs["store"] = backend
    if backend == "kubernetes" and any(c in node for c in ",=!\\"):
        raise ConfigError(NODE_NAME, f"{node!r} is not a Kubernetes node name (it selects this node's pods)")
    kwargs["kubeconfig"] = (get(KUBECONFIG) or "").strip() or None
    kwargs["kube_context"] = (get(KUBE_CONTEXT) or "").strip() or None
    return NodeAgentConfig(**kwargs)

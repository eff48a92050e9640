"""istiod_lite's configuration: one frozen object built from environment variables and flags.

Environment variable names are the constants below (Istio's names where Istio has one). Flags override
the environment; the environment overrides defaults. ``parse_config`` validates everything up front and
raises ``ConfigError`` with the variable or flag to fix, so a bad setting stops the process at start with a
clear message instead of failing later. ``check_store_state`` is the one start-up check on the state
directory's contents: a missing or emptied ``store.db`` beside an existing CA root means this mesh had
state, and starting empty would drop every policy, so it needs ``--allow-empty-store``. ``STORE`` picks
the cluster-state backend: ``sqlite`` (the embedded store in the state directory, the default) or
``kubernetes`` (the API server: in-cluster config in a pod, else ``KUBECONFIG``/``KUBE_CONTEXT``);
``open_store`` opens the chosen one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshcore.store.base import Store
from meshcore.store.paths import STATE_DIR_ENV, resolve_state_dir

XDS_ADDRESS = "ISTIOD_XDS_ADDRESS"
MONITORING_ADDRESS = "ISTIOD_MONITORING_ADDRESS"
TRUST_DOMAIN = "TRUST_DOMAIN"
CLUSTER_ID = "CLUSTER_ID"
ROOT_NAMESPACE = "ROOT_NAMESPACE"
DEBOUNCE_AFTER = "PILOT_DEBOUNCE_AFTER"
DEFAULT_WORKLOAD_CERT_TTL = "DEFAULT_WORKLOAD_CERT_TTL"
MAX_WORKLOAD_CERT_TTL = "MAX_WORKLOAD_CERT_TTL"
CA_TRUSTED_NODE_ACCOUNTS = "CA_TRUSTED_NODE_ACCOUNTS"
CA_CERT_FILE = "CA_CERT_FILE"
CA_KEY_FILE = "CA_KEY_FILE"
CA_CERT_CHAIN_FILE = "CA_CERT_CHAIN_FILE"
CA_ROOT_CERT_FILE = "CA_ROOT_CERT_FILE"
LOG_LEVEL = "LOG_LEVEL"
LOG_FORMAT = "LOG_FORMAT"
# Where the waypoint controller's pods reach istiod: XDS_ADDRESS (mTLS with their own certificate) and
# CA_ADDRESS (the token CA port: they have no certificate yet). The CA default is the xDS host on 15011.
WAYPOINT_XDS_ADDRESS = "WAYPOINT_XDS_ADDRESS"
DEFAULT_WAYPOINT_XDS_ADDRESS = "istiod.istio-system.svc:15012"
WAYPOINT_CA_ADDRESS = "WAYPOINT_CA_ADDRESS"
# The container image of waypoint pods (their Deployment's template); "" = none (the local cluster runs the
# command itself; on Kubernetes a container needs one, so the manifests set it).
WAYPOINT_IMAGE = "WAYPOINT_IMAGE"
# The CA for bearer-token callers (server-authenticated TLS, no client certificate): HOST:PORT or "off".
TOKEN_CA_ADDRESS = "ISTIOD_TOKEN_CA_ADDRESS"
# The cluster-state backend: "sqlite" (embedded, default) or "kubernetes" (the API server).
STORE = "STORE"
STORE_BACKENDS = ("sqlite", "kubernetes")
KUBECONFIG = "KUBECONFIG"
KUBE_CONTEXT = "KUBE_CONTEXT"

DEFAULT_XDS_PORT = 15012
DEFAULT_TOKEN_CA_PORT = 15011
DEFAULT_MONITORING_PORT = 15014


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable or flag."""


@dataclass(frozen=True, slots=True)
class IstiodConfig:
    state_dir: Path
    xds_host: str = "0.0.0.0"
    xds_port: int = DEFAULT_XDS_PORT
    monitoring_host: str = "0.0.0.0"
    monitoring_port: int = DEFAULT_MONITORING_PORT
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    root_namespace: str = "istio-system"
    debounce_seconds: float = 0.1
    default_cert_ttl: int = 24 * 3600
    max_cert_ttl: int = 90 * 24 * 3600
    trusted_node_accounts: tuple[str, ...] = ("istio-system/ztunnel",)
    ca_cert_file: Path | None = None
    ca_key_file: Path | None = None
    ca_chain_file: Path | None = None
    ca_root_file: Path | None = None
    log_level: str = "info"
    log_format: str = "console"
    # Start even if store.db is missing or empty while ca/ holds a root (--allow-empty-store).
    allow_empty_store: bool = False
    waypoint_xds_address: str = DEFAULT_WAYPOINT_XDS_ADDRESS
    waypoint_ca_address: str = f"istiod.istio-system.svc:{DEFAULT_TOKEN_CA_PORT}"
    waypoint_image: str = ""
    # The token CA port (``--token-ca-address``). None: not served. The dataclass default is None so
    # that code embedding a ControlPlane opts in; ``parse_config`` (the binary) defaults to <xds host>:15011.
    token_ca_host: str = "0.0.0.0"
    token_ca_port: int | None = None
    # STORE: "sqlite" or "kubernetes"; with kubernetes, the kubeconfig file and context (None: in-cluster
    # config when running in a pod, else the kubeconfig's defaults).
    store: str = "sqlite"
    kubeconfig: str | None = None
    kube_context: str | None = None


def open_store(config: IstiodConfig) -> Store:
    """The store ``config.store`` names (the Kubernetes client is imported only when it is chosen)."""
    if config.store == "kubernetes":
        from meshcore.store.kubernetes import KubernetesStore

        return KubernetesStore.connect(kubeconfig=config.kubeconfig, context=config.kube_context)
    from meshcore.store.paths import store_path
    from meshcore.store.sqlite import SqliteStore

    return SqliteStore(store_path(config.state_dir))


class EmptyStoreRefused(ConfigError):
    """``store.db`` is missing or empty but the state dir's CA root shows this mesh had state."""


def check_store_state(config: IstiodConfig) -> bool:
    """Refuse a missing/empty store beside an existing CA root unless ``allow_empty_store``.

    Returns True when the store is missing or empty while a root exists and the flag allowed it (the
    caller logs that), False when nothing is unusual. A store file of zero bytes counts as empty:
    SQLite would silently initialise it. Runs before the store is opened (opening creates it).
    """
    from istiod_lite.ca.storage import CA_DIR, ROOT_CERT_FILE, ROOT_KEY_FILE
    from meshcore.store.paths import store_path

    if config.store != "sqlite":
        return False  # the cluster's state lives in the API server, not in the state directory
    store = store_path(config.state_dir)
    ca_dir = config.state_dir / CA_DIR
    if not any((ca_dir / name).exists() for name in (ROOT_KEY_FILE, ROOT_CERT_FILE)):
        return False
    try:
        state = "is empty (0 bytes)" if store.stat().st_size == 0 else ""
    except FileNotFoundError:
        state = "is missing"
    if not state:
        return False
    if config.allow_empty_store:
        return True
    raise EmptyStoreRefused(
        f"{store} {state} but {ca_dir} holds this mesh's CA root, so this mesh had state; starting empty "
        "would drop every namespace, pod, service and policy (and workloads would lose their certificates "
        f"at renewal). Restore {store} from a backup, or start with --allow-empty-store to begin with an "
        "empty store on purpose"
    )


def _addr(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}={value!r}: expected HOST:PORT, e.g. 0.0.0.0:15012")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _duration(value: str, what: str) -> int:
    """Seconds from '3600', '3600s', '90m', '24h' or '90d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    v = value.strip()
    mult = units.get(v[-1:], None)
    num = v[:-1] if mult else v
    try:
        seconds = int(float(num) * (mult or 1))
    except ValueError:
        raise ConfigError(f"{what}={value!r}: expected a duration like 3600, 90m, 24h or 90d") from None
    if seconds <= 0:
        raise ConfigError(f"{what}={value!r}: must be positive")
    return seconds


def parse_config(
    *,
    state_dir: str | None = None,
    xds_address: str | None = None,
    monitoring_address: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    allow_empty_store: bool = False,
    token_ca_address: str | None = None,
    env: Mapping[str, str] | None = None,
) -> IstiodConfig:
    """Build the config from flags (arguments) over environment over defaults."""
    e = os.environ if env is None else env
    if state_dir is None and STATE_DIR_ENV in e:
        state_dir = e[STATE_DIR_ENV]
    xds_host, xds_port = _addr(xds_address or e.get(XDS_ADDRESS, f"0.0.0.0:{DEFAULT_XDS_PORT}"), XDS_ADDRESS)
    mon_host, mon_port = _addr(
        monitoring_address or e.get(MONITORING_ADDRESS, f"0.0.0.0:{DEFAULT_MONITORING_PORT}"), MONITORING_ADDRESS
    )
    try:
        debounce = float(e.get(DEBOUNCE_AFTER, "0.1").rstrip("s"))
    except ValueError:
        raise ConfigError(f"{DEBOUNCE_AFTER}: expected seconds, e.g. 0.1") from None
    default_ttl = _duration(e.get(DEFAULT_WORKLOAD_CERT_TTL, "24h"), DEFAULT_WORKLOAD_CERT_TTL)
    max_ttl = _duration(e.get(MAX_WORKLOAD_CERT_TTL, "90d"), MAX_WORKLOAD_CERT_TTL)
    if default_ttl > max_ttl:
        raise ConfigError(f"{DEFAULT_WORKLOAD_CERT_TTL} is longer than {MAX_WORKLOAD_CERT_TTL}")
    accounts = tuple(a.strip() for a in e.get(CA_TRUSTED_NODE_ACCOUNTS, "istio-system/ztunnel").split(",") if a.strip())
    for a in accounts:
        if a.count("/") != 1:
            raise ConfigError(f"{CA_TRUSTED_NODE_ACCOUNTS}: {a!r} is not NAMESPACE/SERVICEACCOUNT")
    ca_cert, ca_key = e.get(CA_CERT_FILE), e.get(CA_KEY_FILE)
    if bool(ca_cert) != bool(ca_key):
        raise ConfigError(f"set both {CA_CERT_FILE} and {CA_KEY_FILE} to plug in a CA, or neither")
    level = (log_level or e.get(LOG_LEVEL, "info")).lower()
    fmt = (log_format or e.get(LOG_FORMAT, "console")).lower()
    # Default: beside xDS, on the xDS host (an istiod bound to one address serves both there).
    token_default = f"{_bracket(xds_host)}:{DEFAULT_TOKEN_CA_PORT}"
    token_raw = (token_ca_address or e.get(TOKEN_CA_ADDRESS, token_default)).strip()
    token_host, token_port = (xds_host, None) if token_raw.lower() in ("", "off") else _addr(token_raw, TOKEN_CA_ADDRESS)
    waypoint_xds = _checked_host_port(
        e.get(WAYPOINT_XDS_ADDRESS, DEFAULT_WAYPOINT_XDS_ADDRESS), WAYPOINT_XDS_ADDRESS, DEFAULT_WAYPOINT_XDS_ADDRESS
    )
    waypoint_ca_default = f"{waypoint_xds.rpartition(':')[0]}:{token_port or DEFAULT_TOKEN_CA_PORT}"
    waypoint_image = e.get(WAYPOINT_IMAGE, "").strip()
    if any(c.isspace() for c in waypoint_image):
        raise ConfigError(f"{WAYPOINT_IMAGE}={waypoint_image!r}: expected an image reference such as ambient-mesh:0.1.0")
    backend = e.get(STORE, "sqlite").strip().lower() or "sqlite"
    if backend not in STORE_BACKENDS:
        raise ConfigError(f"{STORE}={e[STORE]!r}: expected one of {', '.join(STORE_BACKENDS)}")
    return IstiodConfig(
        state_dir=resolve_state_dir(state_dir),
        xds_host=xds_host,
        xds_port=xds_port,
        monitoring_host=mon_host,
        monitoring_port=mon_port,
        trust_domain=e.get(TRUST_DOMAIN, "cluster.local"),
        cluster_id=e.get(CLUSTER_ID, "Kubernetes"),
        root_namespace=e.get(ROOT_NAMESPACE, "istio-system"),
        debounce_seconds=debounce,
        default_cert_ttl=default_ttl,
        max_cert_ttl=max_ttl,
        trusted_node_accounts=accounts,
        ca_cert_file=Path(ca_cert) if ca_cert else None,
        ca_key_file=Path(ca_key) if ca_key else None,
        ca_chain_file=Path(e[CA_CERT_CHAIN_FILE]) if e.get(CA_CERT_CHAIN_FILE) else None,
        ca_root_file=Path(e[CA_ROOT_CERT_FILE]) if e.get(CA_ROOT_CERT_FILE) else None,
        log_level=level,
        log_format=fmt,
        allow_empty_store=allow_empty_store,
        waypoint_xds_address=waypoint_xds,
        waypoint_ca_address=_checked_host_port(
            e.get(WAYPOINT_CA_ADDRESS, waypoint_ca_default), WAYPOINT_CA_ADDRESS, waypoint_ca_default
        ),
        waypoint_image=waypoint_image,
        token_ca_host=token_host,
        token_ca_port=token_port,
        store=backend,
        kubeconfig=e.get(KUBECONFIG) or None,
        kube_context=e.get(KUBE_CONTEXT) or None,
    )


def _checked_host_port(value: str, what: str, example: str) -> str:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{what}={value!r}: expected HOST:PORT, e.g. {example}")
    return value.strip()

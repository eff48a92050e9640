"""ztunnel's configuration: one frozen ``ZtunnelConfig`` built from environment variables and flags.

Variable names are the constants below, Istio's where Istio has one (``XDS_ADDRESS``, ``CA_ADDRESS``,
``NODE_NAME``, ``CLUSTER_ID``, ``FAKE_CA``, ``LOCAL_XDS_PATH``, ``PROXY_MODE``, ``SECRET_TTL``,
``POOL_MAX_STREAMS_PER_CONNECTION``, ...). Flags arrive as a mapping keyed by the same names and win over
the environment, which wins over the defaults, so there is one parsing path for both. ``parse_config``
checks everything up front and raises ``ConfigError`` naming the variable to fix: a bad setting stops
the process at start with one clear line, never later on the data path. Pure: reads only the mapping it
is given (``os.environ`` by default), never files or sockets. The ``parse_*`` helpers (one setting each)
are the node agent's too (``ztunnel.cni.config``).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshcore.config import (
    ConfigError,
    HostPort,
    parse_admin_address,
    parse_bool,
    parse_duration,
    parse_grpc_target,
    parse_host_port,
    parse_log_format,
    parse_log_level,
    parse_positive_int,
)
from meshcore.config import parse_port as _port
from meshcore.identity import InvalidSpiffeId, SpiffeId

PROXY_MODE = "PROXY_MODE"
NODE_NAME = "NODE_NAME"
CLUSTER_ID = "CLUSTER_ID"
TRUST_DOMAIN = "TRUST_DOMAIN"
XDS_ADDRESS = "XDS_ADDRESS"
CA_ADDRESS = "CA_ADDRESS"
FAKE_CA = "FAKE_CA"
FAKE_CA_DIR = "FAKE_CA_DIR"
LOCAL_XDS_PATH = "LOCAL_XDS_PATH"
NODE_CREDENTIAL_DIR = "NODE_CREDENTIAL_DIR"
CA_AUTH = "CA_AUTH"  # ours: how ztunnel authenticates to the CA (node-credential | token)
ISTIO_TOKEN_PATH = "ISTIO_TOKEN_PATH"  # the projected service-account token (audience istio-ca)
CA_ROOT_CA = "CA_ROOT_CA"  # Istio's name: the mesh root that verifies istiod (token mode)
POD_NAMESPACE = "POD_NAMESPACE"  # Istio's names: ztunnel's own pod namespace and service account
SERVICE_ACCOUNT = "SERVICE_ACCOUNT"
ADMIN_ADDR = "ADMIN_ADDR"
ADMIN_ALLOW_REMOTE = "ADMIN_ALLOW_REMOTE"
STATS_ADDR = "STATS_ADDR"
READINESS_ADDR = "READINESS_ADDR"
SOCKS5_ADDR = "SOCKS5_ADDR"
HBONE_PORT = "HBONE_PORT"
INBOUND_PLAINTEXT_PORT = "INBOUND_PLAINTEXT_PORT"
INBOUND_PLAINTEXT_TARGET_PORT = "INBOUND_PLAINTEXT_TARGET_PORT"
DRAIN_DURATION = "DRAIN_DURATION"
CONNECTION_TERMINATION_DEADLINE = "CONNECTION_TERMINATION_DEADLINE"  # Istio's name for the drain deadline
SECRET_TTL = "SECRET_TTL"
POOL_MAX_STREAMS_PER_CONNECTION = "POOL_MAX_STREAMS_PER_CONNECTION"
POOL_UNUSED_RELEASE_TIMEOUT = "POOL_UNUSED_RELEASE_TIMEOUT"
LOG_LEVEL = "LOG_LEVEL"
LOG_FORMAT = "LOG_FORMAT"
INPOD_UDS = "INPOD_UDS"  # shared mode: the node agent's ZDS socket (Istio's name)

# Ports as in ztunnel's ARCHITECTURE.md (reference §1).
DEFAULT_XDS_ADDRESS = "localhost:15012"
DEFAULT_ADMIN_PORT = 15000
DEFAULT_STATS_PORT = 15020
DEFAULT_READINESS_PORT = 15021
DEFAULT_SOCKS5_PORT = 15080
DEFAULT_HBONE_PORT = 15008
DEFAULT_INBOUND_PLAINTEXT_PORT = 15006
DEFAULT_INPOD_UDS = "/var/run/ztunnel/ztunnel.sock"
DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/istio-token"  # Istio's path for the projected token
DEFAULT_CA_ROOT_CA = "/var/run/secrets/istio/root-cert.pem"  # Istio's (the istio-ca-root-cert ConfigMap)
TOKEN_CA_PORT_HINT = "istiod.istio-system.svc:15011"


class CaAuth(enum.StrEnum):
    """How ztunnel proves it is the node agent of its node to istiod_lite.

    ``node-credential``: a certificate istiod_lite issued for this node (``NODE_CREDENTIAL_DIR``), presented
    as the TLS client certificate on 15012 (the local cluster). ``token``: the pod's projected
    service-account token (``ISTIO_TOKEN_PATH``, audience istio-ca), re-read at every call, sent as
    ``authorization: Bearer`` to the token CA port (``CA_ADDRESS``), which binds it to this node through the
    token's pod claims (Kubernetes, as Istio's ztunnel); ztunnel then fetches its own certificate there for
    the xDS connection on 15012."""

    NODE_CREDENTIAL = "node-credential"
    TOKEN = "token"



class ProxyMode(enum.StrEnum):
    """``dedicated``: serve the workloads of this node from ztunnel's own network namespace (SOCKS5
    outbound, per-workload inbound listeners on the workload IPs). ``shared``: Istio's in-pod mode, with
    listeners inside each pod's namespace (handed over by the node agent)."""

    DEDICATED = "dedicated"
    SHARED = "shared"


@dataclass(frozen=True, slots=True)
class ZtunnelConfig:
    """Everything ztunnel needs to start; built by ``parse_config`` (or directly, in tests)."""

    # The node whose workloads this ztunnel serves (Workload.node == node_name).
    node_name: str
    proxy_mode: ProxyMode = ProxyMode.DEDICATED
    cluster_id: str = "Kubernetes"
    trust_domain: str = "cluster.local"
    # gRPC targets (host:port) of the control plane; None: no xDS / no CA over the network.
    xds_address: str | None = None
    ca_address: str | None = None
    # Sign workload certificates in-process (tests, local runs). With fake_ca_dir, every ztunnel pointed
    # at the same directory shares one root, so separate processes trust each other.
    fake_ca: bool = False
    fake_ca_dir: Path | None = None
    # A YAML file of workloads, services and policies loaded instead of (or before) xDS.
    local_xds_path: Path | None = None
    # key.pem, cert-chain.pem, root-cert.pem: this node's credential for xDS and the CA.
    node_credential_dir: Path | None = None
    # CA_AUTH=token: the token file, the root that verifies istiod, and ztunnel's own identity (its pod's).
    ca_auth: CaAuth = CaAuth.NODE_CREDENTIAL
    token_path: Path = Path(DEFAULT_TOKEN_PATH)
    ca_root_path: Path = Path(DEFAULT_CA_ROOT_CA)
    pod_namespace: str = "istio-system"
    service_account: str = "ztunnel"
    admin_addr: HostPort = HostPort("127.0.0.1", DEFAULT_ADMIN_PORT)
    stats_addr: HostPort = HostPort("0.0.0.0", DEFAULT_STATS_PORT)
    readiness_addr: HostPort = HostPort("0.0.0.0", DEFAULT_READINESS_PORT)
    # The SOCKS5 outbound listener (dedicated mode); None disables it.
    socks5_addr: HostPort | None = HostPort("127.0.0.1", DEFAULT_SOCKS5_PORT)
    # Where HBONE is served on each workload IP, and dialled on peers' workload IPs.
    hbone_port: int = DEFAULT_HBONE_PORT
    inbound_plaintext_port: int = DEFAULT_INBOUND_PLAINTEXT_PORT
    # Dedicated mode has no original destination: plaintext arriving on <workload ip>:15006 goes to
    # <workload ip>:<this port>. None: no plaintext inbound listener in dedicated mode.
    inbound_plaintext_target_port: int | None = None
    # Seconds live connections get to finish after SIGTERM before they are closed.
    drain_duration: float = 5.0
    secret_ttl_seconds: int = 24 * 3600
    pool_max_streams: int = 100
    pool_idle_timeout: float = 300.0
    log_level: str = "info"
    log_format: str = "console"
    # Shared (in-pod) mode: the unix socket where the node agent hands pods over (ZDS).
    inpod_uds: str = DEFAULT_INPOD_UDS


# ------------------------------------------------------------------------------------------- helpers


def _socket_path(value: str, variable: str) -> str:
    path = value.strip()
    if not path:
        raise ConfigError(variable, f"is empty; the node agent's socket is usually {DEFAULT_INPOD_UDS}")
    if len(path.encode()) > 107:  # sun_path holds 108 bytes with the terminating NUL
        raise ConfigError(variable, f"{path!r} is longer than a unix socket path may be (107 bytes)")
    return path


# ------------------------------------------------------------------------------------------- parsing


def parse_config(env: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None) -> ZtunnelConfig:
    """Build the config from ``flags`` over ``env`` (default ``os.environ``) over the defaults.

    Raises ``ConfigError`` naming the first variable that cannot be used.
    """
    e: dict[str, str] = dict(os.environ if env is None else env)
    e.update({k: v for k, v in (flags or {}).items() if v is not None})

    node = e.get(NODE_NAME, "").strip()
    if not node:
        raise ConfigError(
            NODE_NAME, "not set; ztunnel serves the workloads of one node (set it from the pod's spec.nodeName)"
        )
    try:
        mode = ProxyMode(e.get(PROXY_MODE, ProxyMode.DEDICATED.value).strip().lower())
    except ValueError:
        raise ConfigError(PROXY_MODE, f"{e[PROXY_MODE]!r} is not one of dedicated, shared") from None

    trust_domain = e.get(TRUST_DOMAIN, "cluster.local").strip()
    try:
        SpiffeId(trust_domain, "default", "default")
    except InvalidSpiffeId as exc:
        raise ConfigError(TRUST_DOMAIN, str(exc)) from None

    local_path = Path(e[LOCAL_XDS_PATH]) if e.get(LOCAL_XDS_PATH, "").strip() else None
    xds_raw = e.get(XDS_ADDRESS)
    if xds_raw is None:  # unset: the default control plane, unless a local config file replaces it
        xds_address = None if local_path is not None else DEFAULT_XDS_ADDRESS
    elif not xds_raw.strip():  # set to "": explicitly no control plane (Istio's convention)
        xds_address = None
    else:
        if local_path is not None:
            raise ConfigError(
                XDS_ADDRESS, f"set together with {LOCAL_XDS_PATH}; use one source of configuration"
            )
        xds_address = parse_grpc_target(xds_raw, XDS_ADDRESS)
    if xds_address is None and local_path is None:
        raise ConfigError(
            XDS_ADDRESS, f"is empty and {LOCAL_XDS_PATH} is not set; ztunnel needs one source of configuration"
        )

    fake_ca = parse_bool(e.get(FAKE_CA, "false"), FAKE_CA)
    fake_ca_dir = Path(e[FAKE_CA_DIR]) if e.get(FAKE_CA_DIR, "").strip() else None
    if fake_ca_dir is not None and not fake_ca:
        raise ConfigError(FAKE_CA_DIR, f"only makes sense with {FAKE_CA}=true")
    ca_raw = e.get(CA_ADDRESS)
    if fake_ca:
        ca_address = None
    elif ca_raw is not None and ca_raw.strip():
        ca_address = parse_grpc_target(ca_raw, CA_ADDRESS)
    elif ca_raw is None and xds_address is not None:
        ca_address = xds_address  # Istio's default: the CA lives with the control plane
    else:
        raise ConfigError(CA_ADDRESS, f"no CA: set {CA_ADDRESS} (or {XDS_ADDRESS}), or {FAKE_CA}=true for tests")

    try:
        ca_auth = CaAuth(e.get(CA_AUTH, CaAuth.NODE_CREDENTIAL.value).strip().lower())
    except ValueError:
        raise ConfigError(CA_AUTH, f"{e[CA_AUTH]!r} is not one of node-credential, token") from None
    cred_raw = e.get(NODE_CREDENTIAL_DIR, "").strip()
    cred_dir = Path(cred_raw) if cred_raw else None
    own_namespace = e.get(POD_NAMESPACE, "istio-system").strip()
    own_account = e.get(SERVICE_ACCOUNT, "ztunnel").strip()
    if ca_auth is CaAuth.TOKEN:
        if cred_dir is not None:
            raise ConfigError(NODE_CREDENTIAL_DIR, f"set together with {CA_AUTH}=token; use one credential")
        if fake_ca:
            raise ConfigError(CA_AUTH, f"token needs istiod's CA; unset {FAKE_CA} or use {CA_AUTH}=node-credential")
        if ca_raw is None or not ca_raw.strip():
            raise ConfigError(
                CA_ADDRESS, f"not set; with {CA_AUTH}=token it is istiod's token CA port (e.g. {TOKEN_CA_PORT_HINT})"
            )
        for variable, value in ((ISTIO_TOKEN_PATH, e.get(ISTIO_TOKEN_PATH, DEFAULT_TOKEN_PATH)),
                                (CA_ROOT_CA, e.get(CA_ROOT_CA, DEFAULT_CA_ROOT_CA))):
            if not value.strip():
                raise ConfigError(variable, f"is empty; {CA_AUTH}=token needs it (Istio's default is under "
                                            "/var/run/secrets)")
        try:
            SpiffeId(trust_domain, own_namespace, own_account)
        except InvalidSpiffeId as exc:
            raise ConfigError(SERVICE_ACCOUNT, f"{POD_NAMESPACE}/{SERVICE_ACCOUNT}: {exc}") from None
    elif cred_dir is None and (xds_address is not None or ca_address is not None):
        raise ConfigError(
            NODE_CREDENTIAL_DIR,
            "not set; the xDS and CA connections authenticate with this node's credential (key.pem, "
            "cert-chain.pem, root-cert.pem; write one with `istiod-lite node-credential NODE --out DIR`)",
        )

    socks_raw = e.get(SOCKS5_ADDR)
    socks5 = (
        None
        if socks_raw is not None and not socks_raw.strip()
        else parse_host_port(socks_raw or f"127.0.0.1:{DEFAULT_SOCKS5_PORT}", SOCKS5_ADDR, default_host="127.0.0.1")
    )
    target_raw = e.get(INBOUND_PLAINTEXT_TARGET_PORT, "").strip()

    drain_raw = e.get(DRAIN_DURATION) or e.get(CONNECTION_TERMINATION_DEADLINE) or "5s"
    drain_var = DRAIN_DURATION if e.get(DRAIN_DURATION) else CONNECTION_TERMINATION_DEADLINE
    ttl = parse_duration(e.get(SECRET_TTL, "24h"), SECRET_TTL)
    if ttl < 1:
        raise ConfigError(SECRET_TTL, "must be at least 1s")
    idle = parse_duration(e.get(POOL_UNUSED_RELEASE_TIMEOUT, "5m"), POOL_UNUSED_RELEASE_TIMEOUT)

    level = parse_log_level(e.get(LOG_LEVEL, "info"), LOG_LEVEL)
    fmt = parse_log_format(e.get(LOG_FORMAT, "console"), LOG_FORMAT)

    return ZtunnelConfig(
        node_name=node,
        proxy_mode=mode,
        cluster_id=e.get(CLUSTER_ID, "Kubernetes").strip() or "Kubernetes",
        trust_domain=trust_domain,
        xds_address=xds_address,
        ca_address=ca_address,
        fake_ca=fake_ca,
        fake_ca_dir=fake_ca_dir,
        local_xds_path=local_path,
        node_credential_dir=cred_dir,
        ca_auth=ca_auth,
        token_path=Path(e.get(ISTIO_TOKEN_PATH, DEFAULT_TOKEN_PATH).strip()),
        ca_root_path=Path(e.get(CA_ROOT_CA, DEFAULT_CA_ROOT_CA).strip()),
        pod_namespace=own_namespace,
        service_account=own_account,
        admin_addr=parse_admin_address(
            e.get(ADMIN_ADDR, f"127.0.0.1:{DEFAULT_ADMIN_PORT}"), ADMIN_ADDR,
            allow_remote=parse_bool(e.get(ADMIN_ALLOW_REMOTE, ""), ADMIN_ALLOW_REMOTE),
            allow_variable=ADMIN_ALLOW_REMOTE,
        ),
        stats_addr=parse_host_port(
            e.get(STATS_ADDR, f"0.0.0.0:{DEFAULT_STATS_PORT}"), STATS_ADDR, default_host="0.0.0.0"
        ),
        readiness_addr=parse_host_port(
            e.get(READINESS_ADDR, f"0.0.0.0:{DEFAULT_READINESS_PORT}"), READINESS_ADDR, default_host="0.0.0.0"
        ),
        socks5_addr=socks5,
        hbone_port=_port(e.get(HBONE_PORT, str(DEFAULT_HBONE_PORT)), HBONE_PORT),
        inbound_plaintext_port=_port(
            e.get(INBOUND_PLAINTEXT_PORT, str(DEFAULT_INBOUND_PLAINTEXT_PORT)), INBOUND_PLAINTEXT_PORT
        ),
        inbound_plaintext_target_port=_port(target_raw, INBOUND_PLAINTEXT_TARGET_PORT) if target_raw else None,
        drain_duration=parse_duration(drain_raw, drain_var),
        secret_ttl_seconds=int(ttl),
        pool_max_streams=parse_positive_int(
            e.get(POOL_MAX_STREAMS_PER_CONNECTION, "100"), POOL_MAX_STREAMS_PER_CONNECTION
        ),
        pool_idle_timeout=idle,
        log_level=level,
        log_format=fmt,
        inpod_uds=_socket_path(e.get(INPOD_UDS, DEFAULT_INPOD_UDS), INPOD_UDS),
    )

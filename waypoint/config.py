"""The waypoint's settings: environment variables (Istio's names where Istio has one), flags over them.

| variable | default | meaning |
|---|---|---|
| ``POD_NAME``, ``POD_NAMESPACE`` | required | this waypoint pod (the Kubernetes downward API sets them) |
| ``SERVICE_ACCOUNT`` | ``GATEWAY_NAME`` | its service account: its identity is ``spiffe://<td>/ns/<ns>/sa/<sa>`` |
| ``GATEWAY_NAME`` | ``SERVICE_ACCOUNT`` | the waypoint Gateway it serves (what policies' targetRefs name) |
| ``POD_IP`` | ``0.0.0.0`` | the address HBONE is served on (and the source of upstream tunnels) |
| ``TRUST_DOMAIN`` / ``CLUSTER_ID`` / ``NETWORK`` | ``cluster.local`` / ``Kubernetes`` / empty | mesh facts |
| ``XDS_ADDRESS`` | ``istiod.istio-system.svc:15012`` | delta ADS (mTLS with the waypoint's own certificate) |
| ``CA_ADDRESS`` | ``XDS_ADDRESS`` | the CA |
| ``ISTIO_TOKEN_PATH`` | ``/var/run/secrets/tokens/istio-token`` | the service-account token the CA authenticates |
| ``ISTIO_ROOT_CERT_PATH`` | ``/var/run/secrets/istio/root-cert.pem`` | the mesh root, to verify istiod |
| ``FAKE_CA`` / ``FAKE_CA_DIR`` | off | sign certificates in-process (tests only) |
| ``HBONE_PORT`` | 15008 | HBONE listener |
| ``ADMIN_ADDR`` | ``127.0.0.1:15000`` | admin (``/config_dump``, ``/logging``, ``/quitquitquit``); loopback only unless ``ADMIN_ALLOW_REMOTE=true`` |
| ``STATS_ADDR`` / ``READINESS_ADDR`` | ``0.0.0.0:15020`` / ``0.0.0.0:15021`` | metrics, readiness (Istio's defaults: reachable from the pod network) |
| ``DRAIN_DURATION`` | ``5s`` | how long live requests may finish on shutdown |
| ``MAX_HEADER_BYTES`` / ``MAX_HEADER_COUNT`` | 60 KiB / 100 | request head limits (431 past them) |
| ``LOG_LEVEL`` / ``LOG_FORMAT`` | ``info`` / ``console`` | logging |
Pure: ``parse_config(env, flags)`` raises ``ConfigError`` naming the variable to fix.
"""

from __future__ import annotations

import ipaddress
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
    parse_port,
    parse_positive_int,
)
from meshcore.identity import InvalidSpiffeId, SpiffeId

POD_NAME = "POD_NAME"
POD_NAMESPACE = "POD_NAMESPACE"
POD_IP = "POD_IP"
SERVICE_ACCOUNT = "SERVICE_ACCOUNT"
GATEWAY_NAME = "GATEWAY_NAME"
TRUST_DOMAIN = "TRUST_DOMAIN"
CLUSTER_ID = "CLUSTER_ID"
NETWORK = "NETWORK"
XDS_ADDRESS = "XDS_ADDRESS"
CA_ADDRESS = "CA_ADDRESS"
ISTIO_TOKEN_PATH = "ISTIO_TOKEN_PATH"
ISTIO_ROOT_CERT_PATH = "ISTIO_ROOT_CERT_PATH"
FAKE_CA = "FAKE_CA"
FAKE_CA_DIR = "FAKE_CA_DIR"
HBONE_PORT = "HBONE_PORT"
ADMIN_ADDR = "ADMIN_ADDR"
ADMIN_ALLOW_REMOTE = "ADMIN_ALLOW_REMOTE"
STATS_ADDR = "STATS_ADDR"
READINESS_ADDR = "READINESS_ADDR"
DRAIN_DURATION = "DRAIN_DURATION"
SECRET_TTL = "SECRET_TTL"
MAX_HEADER_BYTES = "MAX_HEADER_BYTES"
MAX_HEADER_COUNT = "MAX_HEADER_COUNT"
LOG_LEVEL = "LOG_LEVEL"
LOG_FORMAT = "LOG_FORMAT"

DEFAULT_XDS_ADDRESS = "istiod.istio-system.svc:15012"
DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/istio-token"
DEFAULT_ROOT_CERT_PATH = "/var/run/secrets/istio/root-cert.pem"


@dataclass(frozen=True, slots=True)
class WaypointConfig:
    pod_name: str
    namespace: str
    service_account: str
    gateway_name: str
    pod_ip: str = "0.0.0.0"
    trust_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    network: str = ""
    xds_address: str | None = DEFAULT_XDS_ADDRESS
    ca_address: str | None = DEFAULT_XDS_ADDRESS
    token_path: Path = Path(DEFAULT_TOKEN_PATH)
    root_cert_path: Path = Path(DEFAULT_ROOT_CERT_PATH)
    fake_ca: bool = False
    fake_ca_dir: Path | None = None
    hbone_port: int = 15008
    admin_addr: HostPort = HostPort("127.0.0.1", 15000)
    stats_addr: HostPort = HostPort("0.0.0.0", 15020)
    readiness_addr: HostPort = HostPort("0.0.0.0", 15021)
    drain_duration: float = 5.0
    secret_ttl_seconds: int = 24 * 3600
    max_header_bytes: int = 60 * 1024
    max_header_count: int = 100
    log_level: str = "info"
    log_format: str = "console"

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)

    @property
    def gateway(self) -> str:
        """``namespace/name`` of the Gateway this waypoint serves."""
        return f"{self.namespace}/{self.gateway_name}"


def parse_config(env: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None) -> WaypointConfig:
    """Settings from ``env`` (default: the process environment) with ``flags`` taking precedence."""
    e = {**(os.environ if env is None else env), **(flags or {})}
    name = e.get(POD_NAME, "").strip()
    namespace = e.get(POD_NAMESPACE, "").strip()
    if not name:
        raise ConfigError(POD_NAME, "is required (the pod's name; Kubernetes sets it from metadata.name)")
    if not namespace:
        raise ConfigError(POD_NAMESPACE, "is required (the pod's namespace; from metadata.namespace)")
    sa = e.get(SERVICE_ACCOUNT, "").strip()
    gateway = e.get(GATEWAY_NAME, "").strip()
    if not sa and not gateway:
        raise ConfigError(GATEWAY_NAME, "is required (the waypoint Gateway's name), or set SERVICE_ACCOUNT")
    sa, gateway = sa or gateway, gateway or sa
    trust_domain = e.get(TRUST_DOMAIN, "cluster.local").strip() or "cluster.local"
    try:
        SpiffeId(trust_domain, namespace, sa)
    except InvalidSpiffeId as exc:
        raise ConfigError(SERVICE_ACCOUNT, f"does not make a valid identity: {exc}") from None
    pod_ip = e.get(POD_IP, "0.0.0.0").strip() or "0.0.0.0"
    try:
        ipaddress.ip_address(pod_ip)
    except ValueError:
        raise ConfigError(POD_IP, f"{pod_ip!r} is not an IP address") from None
    fake_ca = parse_bool(e.get(FAKE_CA, ""), FAKE_CA)
    xds_raw = e.get(XDS_ADDRESS)
    xds = parse_grpc_target(xds_raw, XDS_ADDRESS) if xds_raw not in (None, "") else (
        DEFAULT_XDS_ADDRESS if xds_raw is None else None
    )
    ca_raw = e.get(CA_ADDRESS)
    ca = parse_grpc_target(ca_raw, CA_ADDRESS) if ca_raw else xds
    if ca is None and not fake_ca:
        raise ConfigError(CA_ADDRESS, f"no CA: set {CA_ADDRESS} (or {XDS_ADDRESS}), or {FAKE_CA}=true for tests")
    admin = parse_admin_address(
        e.get(ADMIN_ADDR, "127.0.0.1:15000"), ADMIN_ADDR,
        allow_remote=parse_bool(e.get(ADMIN_ALLOW_REMOTE, ""), ADMIN_ALLOW_REMOTE), allow_variable=ADMIN_ALLOW_REMOTE,
    )
    return WaypointConfig(
        pod_name=name,
        namespace=namespace,
        service_account=sa,
        gateway_name=gateway,
        pod_ip=pod_ip,
        trust_domain=trust_domain,
        cluster_id=e.get(CLUSTER_ID, "Kubernetes").strip() or "Kubernetes",
        network=e.get(NETWORK, "").strip(),
        xds_address=xds,
        ca_address=ca,
        token_path=Path(e.get(ISTIO_TOKEN_PATH, DEFAULT_TOKEN_PATH)),
        root_cert_path=Path(e.get(ISTIO_ROOT_CERT_PATH, DEFAULT_ROOT_CERT_PATH)),
        fake_ca=fake_ca,
        fake_ca_dir=Path(e[FAKE_CA_DIR]) if e.get(FAKE_CA_DIR) else None,
        hbone_port=parse_port(e.get(HBONE_PORT, "15008"), HBONE_PORT, allow_zero=True),
        admin_addr=admin,
        stats_addr=parse_host_port(e.get(STATS_ADDR, "0.0.0.0:15020"), STATS_ADDR, default_host="0.0.0.0"),
        readiness_addr=parse_host_port(
            e.get(READINESS_ADDR, "0.0.0.0:15021"), READINESS_ADDR, default_host="0.0.0.0"
        ),
        drain_duration=parse_duration(e.get(DRAIN_DURATION, "5s"), DRAIN_DURATION),
        secret_ttl_seconds=int(parse_duration(e.get(SECRET_TTL, "24h"), SECRET_TTL)),
        max_header_bytes=parse_positive_int(e.get(MAX_HEADER_BYTES, str(60 * 1024)), MAX_HEADER_BYTES),
        max_header_count=parse_positive_int(e.get(MAX_HEADER_COUNT, "100"), MAX_HEADER_COUNT),
        log_level=parse_log_level(e.get(LOG_LEVEL, "info"), LOG_LEVEL),
        log_format=parse_log_format(e.get(LOG_FORMAT, "console"), LOG_FORMAT),
    )

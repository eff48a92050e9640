"""Workload model: one pod (or VM) as the data plane sees it.

Frozen msgspec Structs, so snapshots built from them can be shared between the xDS writer and every
connection without copies or locks. IP addresses are kept as canonical strings (``ipaddress`` form);
conversion to and from Istio's raw-byte wire form lives in ``convert``. Enum values equal Istio's.
Structs are ``gc=False``: they hold only strings, numbers and other model values, never a reference back,
so they cannot form cycles; untracking them saves the garbage collector most of its work on big snapshots.
"""

from __future__ import annotations

import enum

import msgspec

from meshcore.identity import SpiffeId

DEFAULT_HBONE_PORT = 15008


class TunnelProtocol(enum.IntEnum):
    NONE = 0
    HBONE = 1
    LEGACY_ISTIO_MTLS = 2


class WorkloadStatus(enum.IntEnum):
    HEALTHY = 0
    UNHEALTHY = 1


class WorkloadType(enum.IntEnum):
    DEPLOYMENT = 0
    CRONJOB = 1
    POD = 2
    JOB = 3


class AppProtocol(enum.IntEnum):
    UNKNOWN = 0
    HTTP11 = 1
    HTTP2 = 2
    GRPC = 3
    TCP = 4
    TLS = 5


class NetworkAddress(msgspec.Struct, frozen=True, gc=False):
    """An IP on a named network (empty string = the default network)."""

    address: str
    network: str = ""


class NamespacedHostname(msgspec.Struct, frozen=True, gc=False):
    namespace: str
    hostname: str


class Port(msgspec.Struct, frozen=True, gc=False):
    """A service port and the workload port it maps to (0 = same as service_port)."""

    service_port: int
    target_port: int = 0
    app_protocol: AppProtocol = AppProtocol.UNKNOWN


class GatewayAddress(msgspec.Struct, frozen=True, gc=False):
    """Where a waypoint or network gateway is reached: a service hostname or an address."""

    hostname: NamespacedHostname | None = None
    address: NetworkAddress | None = None
    hbone_mtls_port: int = DEFAULT_HBONE_PORT


class Locality(msgspec.Struct, frozen=True, gc=False):
    region: str = ""
    zone: str = ""
    subzone: str = ""


class Workload(msgspec.Struct, frozen=True, gc=False):
    """A workload as pushed in ``istio.workload.Workload``; ``uid`` is its xDS resource name."""

    uid: str
    name: str
    namespace: str
    service_account: str = "default"
    trust_domain: str = "cluster.local"
    addresses: tuple[str, ...] = ()
    network: str = ""
    tunnel_protocol: TunnelProtocol = TunnelProtocol.NONE
    waypoint: GatewayAddress | None = None
    node: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: WorkloadType = WorkloadType.POD
    workload_name: str = ""
    native_tunnel: bool = False
    authorization_policies: tuple[str, ...] = ()
    status: WorkloadStatus = WorkloadStatus.HEALTHY
    cluster_id: str = "Kubernetes"
    hostname: str = ""
    # "namespace/hostname" of each service this workload backs -> the ports it serves for it.
    services: dict[str, tuple[Port, ...]] = {}
    locality: Locality | None = None

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)

    @property
    def healthy(self) -> bool:
        return self.status == WorkloadStatus.HEALTHY

    @property
    def in_mesh(self) -> bool:
        """True when peers must reach it through HBONE (captured by ztunnel)."""
        return self.tunnel_protocol == TunnelProtocol.HBONE or self.native_tunnel

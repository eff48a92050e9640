"""Service model: a virtual address (VIP) with ports, as pushed in ``istio.workload.Service``.

Endpoints are not stored on the service: each Workload lists the services it backs (as Istio's
``Workload.services`` map does), and ``meshcore.state`` indexes them. ``key`` (``namespace/hostname``)
is the xDS resource name.
"""

from __future__ import annotations

import enum

import msgspec

from meshcore.model.workload import GatewayAddress, NetworkAddress, Port


class LoadBalancingMode(enum.IntEnum):
    UNSPECIFIED_MODE = 0
    STRICT = 1
    FAILOVER = 2
    PASSTHROUGH = 3


class HealthPolicy(enum.IntEnum):
    ONLY_HEALTHY = 0
    ALLOW_ALL = 1


class LoadBalancing(msgspec.Struct, frozen=True, gc=False):
    routing_preference: tuple[int, ...] = ()
    mode: LoadBalancingMode = LoadBalancingMode.UNSPECIFIED_MODE
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY


class Service(msgspec.Struct, frozen=True, gc=False):
    name: str
    namespace: str
    hostname: str
    addresses: tuple[NetworkAddress, ...] = ()
    ports: tuple[Port, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    load_balancing: LoadBalancing | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"

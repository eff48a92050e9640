"""Data-plane models: frozen msgspec Structs for workloads, services and authorization policies.

Pure values with Istio's enum numbers; ``convert`` maps them to and from Istio's protobuf messages.
"""

from meshcore.model.authorization import (
    Action,
    Authorization,
    Clause,
    IpNet,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
)
from meshcore.model.service import HealthPolicy, LoadBalancing, LoadBalancingMode, Service
from meshcore.model.workload import (
    DEFAULT_HBONE_PORT,
    AppProtocol,
    GatewayAddress,
    Locality,
    NamespacedHostname,
    NetworkAddress,
    Port,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
    WorkloadType,
)

__all__ = [
    "DEFAULT_HBONE_PORT",
    "Action",
    "AppProtocol",
    "Authorization",
    "Clause",
    "GatewayAddress",
    "HealthPolicy",
    "IpNet",
    "LoadBalancing",
    "LoadBalancingMode",
    "Locality",
    "Match",
    "NamespacedHostname",
    "NetworkAddress",
    "Port",
    "Rule",
    "Scope",
    "Service",
    "ServiceAccountMatch",
    "StringMatch",
    "TunnelProtocol",
    "Workload",
    "WorkloadStatus",
    "WorkloadType",
]

"""Data-plane models: frozen msgspec Structs for workloads, services and authorization policies (L4,
and L7 for waypoints).

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
from meshcore.model.l7 import (
    L7Action,
    L7Authorization,
    L7Condition,
    L7ConditionKey,
    L7Operation,
    L7Rule,
    L7Source,
    L7Target,
    PathMatch,
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
    "L7Action",
    "L7Authorization",
    "L7Condition",
    "L7ConditionKey",
    "L7Operation",
    "L7Rule",
    "L7Source",
    "L7Target",
    "LoadBalancing",
    "LoadBalancingMode",
    "Locality",
    "Match",
    "NamespacedHostname",
    "NetworkAddress",
    "PathMatch",
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

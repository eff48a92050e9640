"""istiod_lite.registry: cluster resources -> Istio's workloads, services (with their waypoints) and L4 policies.

Pure code: input is ``meshcore.store.resource.Resource`` values, output is ``meshcore.model`` values
in a ``RegistrySnapshot`` plus the problems found. No I/O, no store access, no logging; the caller
(istiod_lite's app) reads the store, logs and counts problems, and pushes ``diff`` results over xDS.
"""

from istiod_lite.registry.errors import (
    InvalidPod,
    InvalidPolicy,
    InvalidService,
    Problem,
    Reason,
    RegistryError,
    Severity,
)
from istiod_lite.registry.index import (
    AUTHORIZATION,
    SERVICE,
    WORKLOAD,
    InvalidSettings,
    RegistrySnapshot,
    ScheduledPod,
    compute,
    diff,
)

__all__ = [
    "AUTHORIZATION",
    "SERVICE",
    "WORKLOAD",
    "InvalidPod",
    "InvalidPolicy",
    "InvalidService",
    "InvalidSettings",
    "Problem",
    "Reason",
    "RegistryError",
    "RegistrySnapshot",
    "ScheduledPod",
    "Severity",
    "compute",
    "diff",
]

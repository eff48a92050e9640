"""The local cluster: nodes and pods as Linux network namespaces on this machine (DESIGN.md §1).

A fabric netns holds the bridge the nodes hang off (and, later, istiod_lite on its address); each node
is a netns with a routed /24 of pods and kube-proxy-style DNAT for service VIPs; each pod is a netns
with a veth to its node and its command running inside. The topology is drawn in ``plan``; ``Cluster``
(``cluster``) is the API; ``kubelet`` mirrors pods and services into the store as a kubelet would
(``kubelet_main`` is the long-running component), calling the node's CNI plugins (``cni``); ``mesh``
starts istiod_lite, the node agents and ztunnels on it; ``testing`` is the end-to-end test kit.
Everything made is named with one prefix ("am-") so ``down`` can always remove all of it.
"""

from .cluster import (
    Cluster,
    ClusterStatus,
    DownReport,
    ExecResult,
    NodeStatus,
    PodStatus,
    ProcessStatus,
    ServiceStatus,
)
from .errors import ClusterError
from .preflight import check_host
from .spec import (
    DEFAULT_PREFIX,
    ClusterSpec,
    PodPort,
    PodSpec,
    ServicePort,
    load_cluster_spec,
    parse_cluster_spec,
)
from .state import PodRecord, ProcessRecord, ServiceRecord

__all__ = [
    "DEFAULT_PREFIX",
    "Cluster",
    "ClusterError",
    "ClusterSpec",
    "ClusterStatus",
    "DownReport",
    "ExecResult",
    "NodeStatus",
    "PodPort",
    "PodRecord",
    "PodSpec",
    "PodStatus",
    "ProcessRecord",
    "ProcessStatus",
    "ServicePort",
    "ServiceRecord",
    "ServiceStatus",
    "check_host",
    "load_cluster_spec",
    "parse_cluster_spec",
]

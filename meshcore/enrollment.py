"""Who is in the ambient mesh: the one enrollment rule shared by the control plane and the node agent.

istiod_lite uses it to give a pod's Workload tunnel HBONE; the node agent (ztunnel.cni) uses it to decide
which pods on its node to capture. Both must agree, or peers would send HBONE to a pod nobody captured
(or plaintext to one that is captured), so the rule lives here once. It follows istio-cni's selectors:
the pod's ``istio.io/dataplane-mode`` label wins (``ambient`` in, ``none`` out), else the namespace's
``istio.io/dataplane-mode=ambient``; host-network pods and pods with a sidecar are never captured.
Pure: plain label and annotation mappings in, a bool out; no store, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
DATAPLANE_MODE_AMBIENT = "ambient"
DATAPLANE_MODE_NONE = "none"
SIDECAR_STATUS_ANNOTATION = "sidecar.istio.io/status"

# Set on a pod by the node agent once it is captured (istio-cni's status-like annotation): "enabled"
# when ztunnel acknowledged the pod, "pending" when the rules are in place but ztunnel has not (yet).
REDIRECTION_ANNOTATION = "ambient.istio.io/redirection"
REDIRECTION_ENABLED = "enabled"
REDIRECTION_PENDING = "pending"


def in_ambient_mesh(
    pod_labels: Mapping[str, str],
    pod_annotations: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    *,
    host_network: bool = False,
) -> bool:
    """Whether ztunnel captures this pod's traffic (pod label wins over namespace label)."""
    if host_network or SIDECAR_STATUS_ANNOTATION in pod_annotations:
        return False
    pod_mode = pod_labels.get(DATAPLANE_MODE_LABEL)
    if pod_mode == DATAPLANE_MODE_NONE:
        return False
    if pod_mode == DATAPLANE_MODE_AMBIENT:
        return True
    return namespace_labels.get(DATAPLANE_MODE_LABEL) == DATAPLANE_MODE_AMBIENT


__all__ = [
    "DATAPLANE_MODE_AMBIENT",
    "DATAPLANE_MODE_LABEL",
    "DATAPLANE_MODE_NONE",
    "REDIRECTION_ANNOTATION",
    "REDIRECTION_ENABLED",
    "REDIRECTION_PENDING",
    "SIDECAR_STATUS_ANNOTATION",
    "in_ambient_mesh",
]

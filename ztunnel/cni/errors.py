"""Errors of the CNI plugin and the node agent. Each one concerns one pod (or one call) and says what to do.

Two families. ``CniError`` is what the plugin reports to the kubelet: it carries the CNI spec's error
``code`` (1-11 are the spec's, 100+ ours) and becomes the error JSON on stdout. ``NodeAgentError`` is the
agent's: ``PodCaptureError`` subclasses name one pod's failure and carry a ``reason`` (a short, stable
metrics label); the agent logs and counts it, retries that pod with backoff, and disturbs no other pod.
``ConfigError`` stops the agent at start with one line naming the setting to fix.
"""

from __future__ import annotations

# CNI spec 1.0 "Error" codes (https://www.cni.dev/docs/spec/#error).
CNI_INCOMPATIBLE_VERSION = 1
CNI_UNSUPPORTED_FIELD = 2
CNI_UNKNOWN_CONTAINER = 3
CNI_INVALID_ENV = 4
CNI_IO_FAILURE = 5
CNI_DECODE_FAILURE = 6
CNI_INVALID_CONFIG = 7
CNI_TRY_AGAIN_LATER = 11
CNI_ENROLL_FAILED = 100  # plugin-specific: the node agent could not capture an enrolled pod


class CniError(Exception):
    """A CNI call that failed; ``code`` and ``str(self)`` become the CNI error JSON's code and msg."""

    code = CNI_IO_FAILURE

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class CniVersionUnsupported(CniError):
    code = CNI_INCOMPATIBLE_VERSION

    def __init__(self, version: str, supported: tuple[str, ...]) -> None:
        super().__init__(
            f"CNI version {version!r} is not supported",
            f"this plugin speaks {', '.join(supported)}; set cniVersion in the network config to one of them",
        )


class CniEnvInvalid(CniError):
    """A CNI_* environment variable the command needs is missing or unusable."""

    code = CNI_INVALID_ENV

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(
            f"{variable}: {problem}", "the runtime (kubelet/containerd) must set it for this command"
        )
        self.variable = variable


class CniDecodeFailed(CniError):
    """stdin is not a JSON network configuration."""

    code = CNI_DECODE_FAILURE

    def __init__(self, problem: str) -> None:
        super().__init__(f"cannot decode the network configuration on stdin: {problem}")


class CniConfigInvalid(CniError):
    """The network configuration decodes but a field is wrong."""

    code = CNI_INVALID_CONFIG

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"invalid network configuration: {problem}", "fix the plugin's entry in the conflist"
        )


class CniStoreUnavailable(CniError):
    """The cluster state cannot be read, so whether the pod is enrolled is unknown: failing is safer than
    starting a pod that should be captured without its capture (the kubelet retries)."""

    code = CNI_TRY_AGAIN_LATER

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(
            f"cannot read the mesh's cluster state at {where}: {problem}",
            "check state_dir in the plugin config and that the control plane's store exists",
        )


class CniAgentUnavailable(CniError):
    """The pod is enrolled but the node agent could not be reached or did not answer in time."""

    code = CNI_TRY_AGAIN_LATER

    def __init__(self, socket_path: str, problem: str) -> None:
        super().__init__(
            f"the ambient node agent at {socket_path} is not reachable: {problem}",
            "is the node agent (ztunnel-node-agent) running on this node? the kubelet will retry",
        )


class CniEnrollFailed(CniError):
    """The agent answered: capturing the enrolled pod failed."""

    code = CNI_ENROLL_FAILED

    def __init__(self, pod: str, problem: str) -> None:
        super().__init__(
            f"pod {pod} is enrolled in the ambient mesh but could not be captured: {problem}",
            "the node agent's log has the details; the kubelet will retry",
        )


class CniEnrollUndecided(CniError):
    """``enrollment: agent``: the node agent could not decide whether the pod is enrolled (it could not
    read the pod from the API server, or the pod is not this node's)."""

    code = CNI_TRY_AGAIN_LATER

    def __init__(self, pod: str, problem: str) -> None:
        super().__init__(
            f"the node agent could not decide whether pod {pod} is enrolled in the ambient mesh: {problem}",
            "the pod does not start uncaptured (fail closed); the node agent's log has the details; "
            "the kubelet will retry",
        )


# -- node agent ---------------------------------------------------------------------------------------


class NodeAgentError(Exception):
    """Base class for node agent failures."""


class ConfigError(NodeAgentError, ValueError):
    """A setting that cannot be used; ``variable`` names the environment variable (or flag) to fix."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class PodCaptureError(NodeAgentError):
    """Capturing or releasing one pod failed; ``reason`` is the metrics label for it."""

    reason = "other"

    def __init__(self, pod: str, problem: str) -> None:
        super().__init__(f"pod {pod}: {problem}")
        self.pod = pod
        self.problem = problem


class PodNetnsUnknown(PodCaptureError):
    reason = "netns_unknown"

    def __init__(self, pod: str) -> None:
        super().__init__(
            pod,
            "its network namespace is not known yet (no CNI ADD seen and no process of the pod found); "
            "retrying. Is the CNI plugin in the node's conflist?",
        )


class PodNetnsGone(PodCaptureError):
    reason = "netns_gone"

    def __init__(self, pod: str, where: str, problem: str) -> None:
        super().__init__(
            pod, f"its network namespace {where} is gone ({problem}); the pod was probably deleted"
        )


class RedirectFailed(PodCaptureError):
    reason = "redirect_failed"

    def __init__(self, pod: str, problem: str) -> None:
        super().__init__(pod, f"redirection failed: {problem}")


class ZtunnelNotConnected(PodCaptureError):
    reason = "ztunnel_not_connected"

    def __init__(self, pod: str) -> None:
        super().__init__(
            pod,
            "no ztunnel is connected to the node agent; the pod's traffic is redirected and it will be "
            "served as soon as ztunnel connects (is ztunnel running in shared/in-pod mode on this node?)",
        )


class ZtunnelNack(PodCaptureError):
    reason = "ztunnel_nack"

    def __init__(self, pod: str, error: str) -> None:
        super().__init__(pod, f"ztunnel refused it: {error}")
        self.error = error


class ZtunnelUnresponsive(PodCaptureError):
    reason = "ztunnel_unresponsive"

    def __init__(self, pod: str, problem: str) -> None:
        super().__init__(
            pod, f"ztunnel did not acknowledge it ({problem}); it gets the pod again on reconnect"
        )


class AnnotateFailed(PodCaptureError):
    reason = "annotate_failed"

    def __init__(self, pod: str, problem: str) -> None:
        super().__init__(pod, f"could not record its redirection annotation in the store: {problem}")


class EventError(NodeAgentError):
    """A plugin event (plugin <-> agent socket) could not be sent, received or understood."""


class EventMalformed(EventError):
    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"malformed {what}: {problem}")


class AgentUnreachable(EventError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"node agent event socket {path}: {problem}")
        self.path = path
        self.problem = problem

"""Which pods on this node to capture, and what to do to get there: pure decisions, table-tested.

``node_pods`` turns the store's objects into ``PodFacts`` for this node's pods (enrolled or not, by the
rule shared with istiod_lite in ``meshcore.enrollment``). ``plan`` compares them with what the agent has
done (``Captured``), what failed (``Failure``, with its retry time) and which netns each pod is known to
have, and returns the actions that close the gap, in the order they must run for each pod. Time arrives
as ``now``. Rules, per pod uid (a pod whose last attempt failed gets nothing before its retry time):
- enrolled, not captured                     -> Capture;
- enrolled, captured, netns changed          -> Release (keep the annotation), then Capture;
- enrolled, captured, netns no longer known  -> Release (the sandbox was torn down; CNI DEL);
- enrolled, captured, not handed over        -> HandOver, when a ztunnel is connected and past its snapshot;
- captured but annotation wrong              -> Annotate ("enabled" once ztunnel acked, else "pending");
- not enrolled (or deleted) but captured     -> Release (and remove the annotation if the pod exists);
- not enrolled, not captured, annotated      -> Release (rules left behind by an earlier agent run).
The annotation is removed only after the rules are, so "annotated" means "rules may be installed".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshcore.enrollment import (
    REDIRECTION_ANNOTATION,
    REDIRECTION_ENABLED,
    REDIRECTION_PENDING,
    in_ambient_mesh,
)
from meshcore.store.resource import Resource

_ENDED_PHASES = frozenset({"Succeeded", "Failed"})

PodKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the agent needs to know about one pod on its node."""

    uid: str
    namespace: str
    name: str
    service_account: str
    # Should ztunnel capture it now (label rule, not host-network, not finished)?
    enrolled: bool
    # The pod's current ambient.istio.io/redirection annotation (None: absent).
    annotation: str | None = None

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Captured:
    """What the agent did for one pod: rules applied in a netns it holds open."""

    # str(NetnsId) of the namespace the rules were applied in.
    netns_id: str
    # A ztunnel acknowledged AddWorkload for the pod (the current or an earlier connection).
    handed_over: bool


@dataclass(frozen=True, slots=True)
class Failure:
    """The last attempt for a pod failed; nothing is retried for it before ``retry_at``."""

    attempts: int
    retry_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Capture:
    """Find the pod's netns, apply redirection there, hand the pod to ztunnel, annotate it."""

    pod: PodFacts


@dataclass(frozen=True, slots=True)
class HandOver:
    """The rules are in place; send AddWorkload again (after a nack, a timeout or no ztunnel)."""

    pod: PodFacts


@dataclass(frozen=True, slots=True)
class Annotate:
    """Set the redirection annotation to ``value``."""

    pod: PodFacts
    value: str


@dataclass(frozen=True, slots=True)
class Release:
    """ZDS DelWorkload, remove the rules, forget the netns; then drop the annotation if ``unannotate``."""

    uid: str
    # None: the pod is gone from the store.
    pod: PodFacts | None
    unannotate: bool


Action = Capture | HandOver | Annotate | Release


def pod_facts(pod: Resource, namespace_labels: Mapping[str, str]) -> PodFacts:
    """``PodFacts`` of one stored Pod, given its namespace's labels."""
    sa = pod.spec.get("serviceAccountName") or pod.spec.get("serviceAccount") or "default"
    ended = pod.status.get("phase") in _ENDED_PHASES
    enrolled = not ended and in_ambient_mesh(
        pod.labels, pod.annotations, namespace_labels, host_network=pod.spec.get("hostNetwork") is True
    )
    return PodFacts(
        uid=pod.uid,
        namespace=pod.namespace,
        name=pod.name,
        service_account=sa if isinstance(sa, str) else "default",
        enrolled=enrolled,
        annotation=pod.annotations.get(REDIRECTION_ANNOTATION),
    )


def node_pods(
    pods: Iterable[Resource], namespace_labels: Mapping[str, Mapping[str, str]], node: str
) -> dict[str, PodFacts]:
    """uid -> facts for the Pods scheduled on ``node`` (``spec.nodeName``)."""
    out: dict[str, PodFacts] = {}
    for pod in pods:
        if pod.kind != "Pod" or pod.spec.get("nodeName") != node or not pod.uid:
            continue
        out[pod.uid] = pod_facts(pod, namespace_labels.get(pod.namespace, {}))
    return out


def wanted_annotation(captured: Captured) -> str:
    return REDIRECTION_ENABLED if captured.handed_over else REDIRECTION_PENDING


def retry_delay(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``initial`` doubling per failure, capped at ``maximum``."""
    return float(min(maximum, initial * 2 ** max(0, min(attempts - 1, 30))))


def plan(
    pods: Mapping[str, PodFacts],
    captured: Mapping[str, Captured],
    failures: Mapping[str, Failure],
    netns_ids: Mapping[PodKey, str],
    *,
    now: float,
    ztunnel_ready: bool,
) -> list[Action]:
    """The actions, in order per pod, that take the node from ``captured`` to what ``pods`` want.

    ``netns_ids``: the namespace each pod is known to have (from CNI events or a scan). ``ztunnel_ready``:
    a ztunnel is connected and past its snapshot (else hand-overs wait for the next snapshot)."""
    actions: list[Action] = []
    for uid, pod in pods.items():
        failure = failures.get(uid)
        if failure is not None and now < failure.retry_at:
            continue  # backing off: nothing for this pod until its retry time
        done = captured.get(uid)
        if not pod.enrolled:
            if done is not None or pod.annotation is not None:
                actions.append(Release(uid, pod, unannotate=True))
            continue
        if done is None:
            actions.append(Capture(pod))
            continue
        known = netns_ids.get(pod.key)
        if known is None:
            actions.append(Release(uid, pod, unannotate=False))
        elif known != done.netns_id:
            actions.extend((Release(uid, pod, unannotate=False), Capture(pod)))
        elif not done.handed_over and ztunnel_ready:
            actions.append(HandOver(pod))
        elif pod.annotation != wanted_annotation(done):
            actions.append(Annotate(pod, wanted_annotation(done)))
    for uid in captured:
        failure = failures.get(uid)
        if uid not in pods and (failure is None or now >= failure.retry_at):
            actions.append(Release(uid, None, unannotate=False))
    return actions

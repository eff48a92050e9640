"""enroll: which of the node's pods are enrolled, and the plan that takes the node there (pure tables)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from meshcore.store import Resource, build_resource
from ztunnel.cni.enroll import (
    Annotate,
    Capture,
    Captured,
    Failure,
    HandOver,
    PodFacts,
    Release,
    node_pods,
    plan,
    retry_delay,
)

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def pod(
    name: str,
    *,
    node: str = "node-1",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    uid: str | None = None,
    **spec: Any,
) -> Resource:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "demo",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"nodeName": node, **spec},
        "status": {"phase": "Running"},
    }
    return msgspec.structs.replace(build_resource(doc), uid=uid or f"uid-{name}")


def test_node_pods_keeps_this_nodes_pods_and_applies_the_shared_rule() -> None:
    pods = [
        pod("a"),
        pod("b", labels={"istio.io/dataplane-mode": "none"}),
        pod("c", node="node-2"),
        pod("d", hostNetwork=True),
        pod("e", annotations={"ambient.istio.io/redirection": "enabled"}, serviceAccountName="web"),
    ]
    facts = node_pods(pods, {"demo": AMBIENT}, "node-1")
    assert {uid: f.enrolled for uid, f in facts.items()} == {
        "uid-a": True,
        "uid-b": False,
        "uid-d": False,
        "uid-e": True,
    }
    assert facts["uid-e"].annotation == "enabled"
    assert facts["uid-e"].service_account == "web"
    assert facts["uid-a"].service_account == "default"


def test_a_finished_pod_is_not_enrolled() -> None:
    done = build_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "job", "namespace": "demo"},
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Succeeded"},
        }
    )
    done = msgspec.structs.replace(done, uid="uid-job")
    assert node_pods([done], {"demo": AMBIENT}, "node-1")["uid-job"].enrolled is False


def facts(uid: str = "u1", *, enrolled: bool = True, annotation: str | None = None) -> PodFacts:
    return PodFacts(uid, "demo", uid, "default", enrolled, annotation)


KEY = ("demo", "u1")
P_IN = facts()
P_IN_ENABLED = facts(annotation="enabled")
P_IN_PENDING = facts(annotation="pending")
P_OUT = facts(enrolled=False)
P_OUT_ANNOTATED = facts(enrolled=False, annotation="enabled")
DONE = Captured("net:[1]@4", handed_over=True)
NOT_ACKED = Captured("net:[1]@4", handed_over=False)
BACKING_OFF = Failure(attempts=2, retry_at=100.0, reason="redirect_failed")
DUE = Failure(attempts=2, retry_at=5.0, reason="redirect_failed")

PLAN_CASES = [
    # pods, captured, failures, netns ids, ztunnel ready -> actions
    ({"u1": P_IN}, {}, {}, {KEY: "net:[1]@4"}, True, [Capture(P_IN)]),
    ({"u1": P_IN}, {}, {}, {}, True, [Capture(P_IN)]),
    ({"u1": P_IN}, {}, {"u1": BACKING_OFF}, {KEY: "net:[1]@4"}, True, []),
    ({"u1": P_IN}, {}, {"u1": DUE}, {KEY: "net:[1]@4"}, True, [Capture(P_IN)]),
    ({"u1": P_IN_ENABLED}, {"u1": DONE}, {}, {KEY: "net:[1]@4"}, True, []),
    ({"u1": P_IN}, {"u1": DONE}, {}, {KEY: "net:[1]@4"}, True, [Annotate(P_IN, "enabled")]),
    ({"u1": P_IN_ENABLED}, {"u1": NOT_ACKED}, {}, {KEY: "net:[1]@4"}, True, [HandOver(P_IN_ENABLED)]),
    ({"u1": P_IN_PENDING}, {"u1": NOT_ACKED}, {}, {KEY: "net:[1]@4"}, False, []),
    ({"u1": P_IN}, {"u1": NOT_ACKED}, {}, {KEY: "net:[1]@4"}, False, [Annotate(P_IN, "pending")]),
    ({"u1": P_IN_PENDING}, {"u1": NOT_ACKED}, {"u1": BACKING_OFF}, {KEY: "net:[1]@4"}, True, []),
    (
        {"u1": P_IN_ENABLED},
        {"u1": DONE},
        {},
        {KEY: "net:[2]@4"},
        True,
        [Release("u1", P_IN_ENABLED, unannotate=False), Capture(P_IN_ENABLED)],
    ),
    ({"u1": P_IN_ENABLED}, {"u1": DONE}, {}, {}, True, [Release("u1", P_IN_ENABLED, unannotate=False)]),
    (
        {"u1": P_OUT_ANNOTATED},
        {"u1": DONE},
        {},
        {KEY: "net:[1]@4"},
        True,
        [Release("u1", P_OUT_ANNOTATED, unannotate=True)],
    ),
    (
        {"u1": P_OUT_ANNOTATED},
        {},
        {},
        {KEY: "net:[1]@4"},
        True,
        [Release("u1", P_OUT_ANNOTATED, unannotate=True)],
    ),
    ({"u1": P_OUT}, {}, {}, {KEY: "net:[1]@4"}, True, []),
    ({}, {"u1": DONE}, {}, {KEY: "net:[1]@4"}, True, [Release("u1", None, unannotate=False)]),
    ({}, {"u1": DONE}, {"u1": BACKING_OFF}, {}, True, []),
]
PLAN_IDS = [
    "an enrolled pod with a known netns is captured",
    "an enrolled pod with no known netns is still captured (its netns is looked for)",
    "a pod backing off after a failure gets nothing before its retry time",
    "a pod whose retry time has come is captured again",
    "a captured, acknowledged, annotated pod needs nothing",
    "a captured pod missing its annotation (clobbered by a writer) is annotated again",
    "a pod ztunnel has not acknowledged is handed over once ztunnel is ready",
    "without a ready ztunnel a pending pod waits for the next snapshot",
    "a captured pod that ztunnel has not acknowledged is annotated pending",
    "a hand-over that failed is not retried before its time",
    "a pod whose sandbox changed is released from the old netns and captured in the new one",
    "a pod whose netns is no longer known (CNI DEL) is released but keeps its annotation",
    "a pod that left the mesh is released and its annotation removed",
    "an annotated pod not captured by this run (agent restart) is released",
    "a pod outside the mesh with no annotation needs nothing",
    "a captured pod deleted from the store is released",
    "a deleted pod whose release failed waits for its retry time",
]


@pytest.mark.parametrize(
    ("pods", "captured", "failures", "netns", "ready", "expected"), PLAN_CASES, ids=PLAN_IDS
)
def test_plan(pods, captured, failures, netns, ready, expected) -> None:
    assert plan(pods, captured, failures, netns, now=10.0, ztunnel_ready=ready) == expected


def test_plan_handles_pods_independently() -> None:
    a, b = facts("a"), facts("b", enrolled=False, annotation="enabled")
    actions = plan(
        {"a": a, "b": b},
        {"b": DONE},
        {"a": BACKING_OFF},
        {("demo", "a"): "x", ("demo", "b"): "net:[1]@4"},
        now=10.0,
        ztunnel_ready=True,
    )
    assert actions == [Release("b", b, unannotate=True)]


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (1000, 30.0)],
    ids=[
        "the first retry waits the initial delay",
        "each failure doubles the delay",
        "and again",
        "the delay is capped",
        "a very long failing streak stays capped without overflowing",
    ],
)
def test_retry_delay(attempts: int, expected: float) -> None:
    assert retry_delay(attempts, 0.5, 30.0) == expected

"""The Deployment controller: rollout and scale planning (pure), then the controller on a real store."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from ambientctl.cluster.deployments import (
    OWNER_ANNOTATION,
    TEMPLATE_HASH_LABEL,
    DeploymentController,
    OwnedPod,
    Plan,
    plan,
    template_hash,
)
from meshcore.store import InvalidResource, ResourceRef, SqliteStore, build_resource, spec_as
from meshcore.store.schema import DeploymentSpec


def spec(replicas: int = 4, strategy: dict[str, Any] | None = None, paused: bool = False) -> DeploymentSpec:
    doc = deployment_doc(replicas=replicas, strategy=strategy, paused=paused)
    return spec_as(build_resource(doc), DeploymentSpec)


def deployment_doc(name: str = "web", replicas: int = 4, image: str = "v1", **extra: Any) -> dict[str, Any]:
    body = {k: v for k, v in extra.items() if v is not None}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
            **body,
        },
    }


def pods(hash_: str, ready: int, unready: int = 0, prefix: str = "") -> list[OwnedPod]:
    return [OwnedPod(f"{prefix}{hash_}-r{i}", hash_, True) for i in range(ready)] + [
        OwnedPod(f"{prefix}{hash_}-u{i}", hash_, False) for i in range(unready)
    ]


PLANS = [
    ("a new deployment creates every replica", spec(4), [], Plan(4, ())),
    ("a deployment at its replicas does nothing", spec(4), pods("new", 4), Plan(0, ())),
    ("scaling up creates the missing pods", spec(4), pods("new", 2), Plan(2, ())),
    ("scaling down deletes unready pods first", spec(2), pods("new", 2, 1), Plan(0, ("new-u0",))),
    ("scaling to zero deletes every pod", spec(0), pods("new", 2), Plan(0, ("new-r0", "new-r1"))),
    (
        "a template change surges one new pod and lets one old ready pod go (25% of 4)",
        spec(4),
        pods("old", 4),
        Plan(1, ("old-r0",)),
    ),
    (
        "an unready new pod holds the old ones at the availability floor",
        spec(4),
        pods("old", 3) + pods("new", 0, 2),
        Plan(0, ()),
    ),
    (
        "old unready pods go at once, ready ones down to the availability floor",
        spec(4),
        pods("old", 3, 1) + pods("new", 1),
        Plan(0, ("old-u0", "old-r0")),
    ),
    (
        "once every new pod is ready the last old one goes",
        spec(4),
        pods("old", 1) + pods("new", 4),
        Plan(0, ("old-r0",)),
    ),
    (
        "maxUnavailable 0 keeps every old pod until a new one is ready",
        spec(2, {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
        pods("old", 2),
        Plan(1, ()),
    ),
    (
        "Recreate deletes every old pod before creating any",
        spec(2, {"type": "Recreate"}),
        pods("old", 2),
        Plan(0, ("old-r0", "old-r1")),
    ),
    ("a paused deployment changes nothing", spec(4, paused=True), pods("old", 1), Plan(0, ())),
]


@pytest.mark.parametrize(("s", "current", "want"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS])
def test_plan(s: DeploymentSpec, current: list[OwnedPod], want: Plan) -> None:
    assert plan(s, "new", current) == want


def test_a_rolling_update_never_drops_below_the_floor_and_converges() -> None:
    """Simulate: each step applied, new pods become ready one step later."""
    s = spec(10)
    current = pods("old", 10)
    for _ in range(50):
        step = plan(s, "new", current)
        current = [p for p in current if p.name not in step.delete]
        assert sum(p.ready for p in current) >= 10 - 2  # maxUnavailable 25% of 10, rounded down
        assert len(current) + step.create <= 10 + 3  # maxSurge 25% of 10, rounded up
        current = [OwnedPod(p.name, p.template_hash, True) for p in current]  # last step's pods ready
        current += [OwnedPod(f"new-{len(current)}-{i}-{_}", "new", False) for i in range(step.create)]
        if not step.create and not step.delete and all(p.ready for p in current):
            break
    assert sorted(p.template_hash for p in current) == ["new"] * 10


def test_template_hash_is_stable_and_changes_with_the_template() -> None:
    a = deployment_doc()["spec"]["template"]
    assert template_hash(a) == template_hash(dict(reversed(list(a.items()))))
    assert template_hash(a) != template_hash(deployment_doc(image="v2")["spec"]["template"])


REFUSED = [
    (
        "a selector that misses the template's labels is refused",
        {"selector": {"matchLabels": {"app": "x"}}},
        "does not match template",
    ),
    ("an empty selector is refused", {"selector": {}}, "$.spec.selector: empty"),
    ("negative replicas are refused", {"replicas": -1}, "$.spec.replicas: Expected int >= 0"),
    (
        "a template without containers is refused",
        {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {}}},
        "needs a container",
    ),
    (
        "a bad maxSurge is refused",
        {"strategy": {"rollingUpdate": {"maxSurge": "lots"}}},
        "give a number or a percentage",
    ),
    (
        "maxSurge and maxUnavailable both 0 are refused",
        {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}},
        "may not both be 0",
    ),
    (
        "an unknown deployment field is refused",
        {"replica": 3},
        'unknown field "spec.replica" (did you mean "replicas"?)',
    ),
]


@pytest.mark.parametrize(("change", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_invalid_deployments_are_refused(change: dict[str, Any], words: str) -> None:
    doc = deployment_doc()
    doc["spec"].update(change)
    with pytest.raises(InvalidResource) as caught:
        build_resource(doc)
    assert words in str(caught.value)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "store.db")
    yield s  # type: ignore[misc]
    s.close()


def owned(store: SqliteStore) -> list[Any]:
    return [p for p in store.list("Pod", "shop") if p.annotations.get(OWNER_ANNOTATION) == "web"]


def mark_ready(store: SqliteStore) -> None:
    for p in store.list("Pod", "shop"):
        store.set_status(p.ref, {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})


def test_the_controller_creates_rolls_and_garbage_collects_pods(store: SqliteStore) -> None:
    controller = DeploymentController(store, rng=random.Random(7))
    store.apply([build_resource(deployment_doc(replicas=3))])
    assert len(controller.sync()) == 3
    first = owned(store)
    h = template_hash(deployment_doc()["spec"]["template"])
    assert {p.labels[TEMPLATE_HASH_LABEL] for p in first} == {h}
    assert all(p.name.startswith(f"web-{h}-") and p.labels["app"] == "web" for p in first)
    mark_ready(store)
    controller.sync()
    status = store.get(ResourceRef("Deployment", "shop", "web")).status  # type: ignore[union-attr]
    assert (status["readyReplicas"], status["updatedReplicas"]) == (3, 3)

    store.apply([build_resource(deployment_doc(replicas=3, image="v2"))])
    for _ in range(20):  # bounded: each pass is one rollout step
        controller.sync()
        mark_ready(store)
        if {p.labels[TEMPLATE_HASH_LABEL] for p in owned(store)} != {h} and len(owned(store)) == 3:
            if all(p.labels[TEMPLATE_HASH_LABEL] != h for p in owned(store)):
                break
    assert len(owned(store)) == 3 and all(p.labels[TEMPLATE_HASH_LABEL] != h for p in owned(store))

    store.delete([ResourceRef("Deployment", "shop", "web")])
    controller.sync()
    assert owned(store) == []


def test_a_pod_without_the_owner_annotation_is_never_touched(store: SqliteStore) -> None:
    stray = build_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "stray", "namespace": "shop", "labels": {"app": "web"}},
        }
    )
    store.apply([stray, build_resource(deployment_doc(replicas=1))])
    DeploymentController(store).sync()
    assert store.get(ResourceRef("Pod", "shop", "stray")) is not None
    assert len(owned(store)) == 1


def scaling_events(store: SqliteStore) -> list[str]:
    events = [e for e in store.list("Event", "shop") if e.spec["reason"] == "ScalingReplicaSet"]
    assert all(
        e.spec["involvedObject"]["kind"] == "Deployment"
        and e.spec["involvedObject"]["name"] == "web"
        and e.spec["type"] == "Normal"
        for e in events
    )
    return sorted(e.spec["message"] for e in events)


def test_scaling_is_recorded_as_scaling_replica_set_events(store: SqliteStore) -> None:
    controller = DeploymentController(store, rng=random.Random(7))
    store.apply([build_resource(deployment_doc(replicas=3))])
    controller.sync()
    h = template_hash(deployment_doc()["spec"]["template"])
    assert scaling_events(store) == [f"Scaled up replica set web-{h} to 3"]
    store.apply([build_resource(deployment_doc(replicas=1))])
    mark_ready(store)
    controller.sync()
    assert scaling_events(store) == [
        f"Scaled down replica set web-{h} to 1",
        f"Scaled up replica set web-{h} to 3",
    ]


def test_the_pods_are_controlled_by_their_deployment(store: SqliteStore) -> None:
    (deployment,) = store.apply([build_resource(deployment_doc(replicas=2))])
    DeploymentController(store, rng=random.Random(7)).sync()
    assert len(owned(store)) == 2
    for pod in owned(store):
        assert pod.to_dict()["metadata"]["ownerReferences"] == [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": deployment.resource.uid,
             "controller": True, "blockOwnerDeletion": True}
        ]

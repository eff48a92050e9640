"""``metadata.ownerReferences`` as Kubernetes keeps them: decoded strictly in the API's shape (apiVersion,
kind, name, uid, controller, blockOwnerDeletion), kept by both stores as given (a change of them alone is a
write; status, label and annotation writes keep them; the generation does not move), read from and sent
to the API server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.store import (
    InvalidResource,
    OwnerReference,
    Resource,
    ResourceRef,
    Store,
    build_resource,
)
from meshcore.store.kubernetes import to_manifest, to_resource

OWNER = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-1", "controller": True,
         "blockOwnerDeletion": True}
REF = ResourceRef("Pod", "demo", "web-1")


def pod_doc(*owners: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "demo", "ownerReferences": list(owners)},
            "spec": {"nodeName": "node-1"}}


def test_the_api_shape_is_decoded_and_printed_back_as_given() -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c-1"}
    pod = build_resource(pod_doc(OWNER, other))
    assert pod.owner_references == (
        OwnerReference("apps/v1", "Deployment", "web", "d-1", controller=True, block_owner_deletion=True),
        OwnerReference("v1", "ConfigMap", "c", "c-1"),
    )
    assert pod.controller == pod.owner_references[0]
    assert pod.to_dict()["metadata"]["ownerReferences"] == [OWNER, other]


def test_a_resource_without_owners_prints_no_owner_references() -> None:
    pod = build_resource(pod_doc())
    assert pod.owner_references == () and pod.controller is None
    assert "ownerReferences" not in pod.to_dict()["metadata"]


@pytest.mark.parametrize(
    ("owners", "field", "says"),
    [
        pytest.param([{**OWNER, "controler": True}], "", 'unknown field "metadata.ownerReferences[0].controler" '
                     '(did you mean "controller"?)', id="a misspelled field is refused, naming the close one"),
        pytest.param([{k: v for k, v in OWNER.items() if k != "uid"}], "$.metadata.ownerReferences[0]",
                     "uid", id="a reference without uid is refused"),
        pytest.param([{**OWNER, "name": ""}], "$.metadata.ownerReferences[0].name", "must not be empty",
                     id="an empty name is refused"),
        pytest.param([{**OWNER, "controller": "yes"}], "$.metadata.ownerReferences[0].controller", "bool",
                     id="a controller flag that is not a boolean is refused"),
        pytest.param([OWNER, {**OWNER, "name": "other", "uid": "d-2"}], "$.metadata.ownerReferences",
                     "only one reference can have controller set to true, found it on Deployment/web, "
                     "Deployment/other", id="two controllers are refused, naming both"),
    ],
)
def test_a_malformed_owner_reference_is_refused_with_the_field(
    owners: list[dict[str, Any]], field: str, says: str
) -> None:
    with pytest.raises(InvalidResource) as e:
        build_resource(pod_doc(*owners))
    assert says in str(e.value)
    if field:
        assert field in str(e.value)


def test_the_kubernetes_store_reads_them_from_and_sends_them_to_the_api_server() -> None:
    api_obj = {**pod_doc(OWNER), "metadata": {**pod_doc(OWNER)["metadata"], "uid": "p-1", "resourceVersion": "7"}}
    resource = to_resource(api_obj, "Pod")
    assert resource.controller == OwnerReference("apps/v1", "Deployment", "web", "d-1", True, True)
    assert to_manifest(resource)["metadata"]["ownerReferences"] == [OWNER]


def stored(store: Store) -> Resource:
    got = store.get(REF)
    assert got is not None
    return got


def test_both_stores_keep_them_as_given_and_a_change_of_them_alone_is_a_write(store: Store) -> None:
    store.apply([build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})])
    (created,) = store.apply([build_resource(pod_doc(OWNER))])
    assert created.action == "created" and stored(store).owner_references == created.resource.owner_references
    assert stored(store).to_dict()["metadata"]["ownerReferences"] == [OWNER]
    assert [r.action for r in store.apply([build_resource(pod_doc(OWNER))])] == ["unchanged"]
    generation = stored(store).generation

    adopted = {**OWNER, "name": "web-v2", "uid": "d-2"}
    (changed,) = store.apply([build_resource(pod_doc(adopted))])
    assert changed.action == "configured"
    assert stored(store).to_dict()["metadata"]["ownerReferences"] == [adopted]
    assert stored(store).generation == generation  # metadata, not spec

    store.set_labels(REF, {"team": "a"}, ())
    store.set_annotations(REF, {"note": "x"}, ())
    store.set_status(REF, {"phase": "Running"})
    assert stored(store).owner_references == changed.resource.owner_references

    (orphaned,) = store.apply([build_resource(pod_doc())])
    assert orphaned.action == "configured" and stored(store).owner_references == ()


_TEXT = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@st.composite
def owner_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    refs = draw(st.lists(st.fixed_dictionaries(
        {"apiVersion": _TEXT, "kind": _TEXT, "name": _TEXT, "uid": _TEXT},
        optional={"controller": st.booleans(), "blockOwnerDeletion": st.booleans()},
    ), max_size=4))
    seen = False
    for ref in refs:  # at most one controller, as the API server requires
        if ref.get("controller"):
            if seen:
                ref["controller"] = False
            seen = True
    return refs


@given(owner_lists())
def test_any_valid_owner_list_round_trips_through_decoding_and_printing(owners: list[dict[str, Any]]) -> None:
    pod = build_resource(pod_doc(*owners))
    printed = pod.to_dict()["metadata"].get("ownerReferences", [])
    assert printed == owners
    assert build_resource({**pod_doc(), "metadata": pod.to_dict()["metadata"]}).owner_references == (
        pod.owner_references
    )
    assert to_resource(pod.to_dict(), "Pod").owner_references == pod.owner_references

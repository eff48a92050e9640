"""The API stand-in's field selectors, as the API server has them: a list and a watch select by
``metadata.name``, ``metadata.namespace`` and (Pods) ``spec.nodeName``; a watch turns a change into the
selection into ADDED and out of it into DELETED; paginated lists keep the selector; anything else is
refused with 400, never ignored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.testing.kube_api import (
    MERGE_PATCH,
    ApiError,
    FieldRequirement,
    KubeApiServer,
    mesh_resources,
    parse_field_selector,
)
from meshcore.testing.kube_watch import WatchStream

ALL_PODS = "/api/v1/pods"
PODS = "/api/v1/namespaces/demo/pods"
POD = next(r for r in mesh_resources() if r.kind == "Pod")


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        for ns in ("demo", "other"):
            server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield server


def pod(name: str, node: str | None, ns: str = "demo") -> dict[str, Any]:
    spec = {"nodeName": node} if node is not None else {}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": spec}


async def get(http: aiohttp.ClientSession, path: str, **params: str) -> tuple[int, Any]:
    async with http.get(path, params=params) as r:
        return r.status, await r.json()


def names(listed: dict[str, Any]) -> list[str]:
    return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in listed["items"]]


SELECTIONS = [
    ("a node's pods across namespaces", ALL_PODS, "spec.nodeName=node-1", ["demo/a", "other/c"]),
    ("a node's pods with the == form", ALL_PODS, "spec.nodeName==node-1", ["demo/a", "other/c"]),
    ("pods not on a node, unscheduled ones included", ALL_PODS, "spec.nodeName!=node-1", ["demo/b", "demo/d"]),
    ("unscheduled pods by an empty node name", ALL_PODS, "spec.nodeName=", ["demo/d"]),
    ("a node's pods in one namespace", PODS, "spec.nodeName=node-1", ["demo/a"]),
    ("one pod by name and namespace", ALL_PODS, "metadata.name=c,metadata.namespace=other", ["other/c"]),
    ("every term must hold", ALL_PODS, "spec.nodeName=node-1,metadata.name!=a", ["other/c"]),
    ("no selector selects everything", ALL_PODS, "", ["demo/a", "demo/b", "demo/d", "other/c"]),
]


@pytest.mark.parametrize(("case", "path", "selector", "expected"), SELECTIONS, ids=[c[0] for c in SELECTIONS])
async def test_a_list_holds_exactly_what_its_field_selector_selects(
    api: KubeApiServer, http: aiohttp.ClientSession, case: str, path: str, selector: str, expected: list[str]
) -> None:
    for doc in (pod("a", "node-1"), pod("b", "node-2"), pod("c", "node-1", "other"), pod("d", None)):
        api.put_object(doc)
    status, listed = await get(http, path, fieldSelector=selector)
    assert status == 200, listed
    assert names(listed) == expected, case
    assert listed["metadata"]["resourceVersion"] == str(api.revision)


BAD_SELECTORS = [
    ("a field the resource is not selectable by is refused", ALL_PODS, "spec.hostname=x", "field label not supported"),
    ("spec.nodeName is a Pod field only", "/api/v1/namespaces", "spec.nodeName=x", "field label not supported"),
    ("a term without an operator is refused", ALL_PODS, "spec.nodeName", "expected FIELD=VALUE"),
    ("an unescaped = in a value is refused", ALL_PODS, "metadata.name=a=b", "unescaped"),
    ("an unknown escape is refused", ALL_PODS, "metadata.name=a\\x", "invalid escape"),
    ("a selector on one object's path is refused", f"{PODS}/a", "metadata.name=a", "list or watch"),
]


@pytest.mark.parametrize(("case", "path", "selector", "message"), BAD_SELECTORS, ids=[c[0] for c in BAD_SELECTORS])
async def test_a_selector_the_stand_in_cannot_serve_is_refused_with_400_not_ignored(
    api: KubeApiServer, http: aiohttp.ClientSession, case: str, path: str, selector: str, message: str
) -> None:
    api.put_object(pod("a", "node-1"))
    for params in ({"fieldSelector": selector}, {"fieldSelector": selector, "watch": "1"}):
        if "watch" in params and path.endswith("/a"):
            continue  # a watch of one object's path is refused for the path already
        status, body = await get(http, path, **params)
        assert (status, body["kind"], body["reason"]) == (400, "Status", "BadRequest"), case
        assert message in body["message"], case


async def test_a_selected_watch_sees_changes_into_the_selection_as_added_and_out_of_it_as_deleted(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    api.put_object(pod("here", "node-1"))
    api.put_object(pod("elsewhere", "node-2"))
    api.put_object(pod("pending", None))
    _, listed = await get(http, ALL_PODS, fieldSelector="spec.nodeName=node-1")
    assert names(listed) == ["demo/here"]
    r = await http.get(ALL_PODS, params={"watch": "1", "fieldSelector": "spec.nodeName=node-1",
                                         "resourceVersion": listed["metadata"]["resourceVersion"]})
    try:
        stream = WatchStream(r)
        api.put_object({**pod("elsewhere", "node-2"), "metadata": {"name": "elsewhere", "namespace": "demo",
                                                                  "labels": {"x": "1"}}})  # not selected
        bound = pod("pending", "node-1")  # scheduled onto this node: MODIFIED elsewhere, ADDED here
        async with http.patch(f"{PODS}/pending", data=json.dumps({"spec": {"nodeName": "node-1"}}),
                              headers={"content-type": MERGE_PATCH}) as patched:
            assert patched.status == 200
        event = await stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "pending")
        assert event["object"]["spec"] == bound["spec"]
        api.put_object({**pod("here", "node-1"), "metadata": {"name": "here", "namespace": "demo",
                                                             "labels": {"y": "2"}}})
        event = await stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("MODIFIED", "here")
        moved = api.put_object(pod("here", "node-3"))  # out of the selection: DELETED, as it was, new version
        event = await stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "here")
        assert event["object"]["spec"] == {"nodeName": "node-1"}
        assert event["object"]["metadata"]["resourceVersion"] == moved["metadata"]["resourceVersion"]
        api.delete_object("Pod", "demo", "elsewhere")  # not selected: nothing
        api.delete_object("Pod", "demo", "pending")
        event = await stream.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "pending")
    finally:
        r.close()


async def test_a_selected_watch_without_a_version_starts_with_the_selected_objects_only(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    api.put_object(pod("here", "node-1"))
    api.put_object(pod("elsewhere", "node-2"))
    r = await http.get(ALL_PODS, params={"watch": "1", "fieldSelector": "spec.nodeName=node-1"})
    try:
        stream = WatchStream(r)
        first = await stream.next()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "here")
        api.put_object(pod("later", "node-1"))
        assert (await stream.next())["object"]["metadata"]["name"] == "later"  # "elsewhere" never came
    finally:
        r.close()


async def test_a_paginated_selected_list_keeps_its_selector_and_a_token_for_another_is_refused(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    for i in range(5):
        api.put_object(pod(f"p{i}", "node-1" if i % 2 == 0 else "node-2"))
    status, first = await get(http, ALL_PODS, fieldSelector="spec.nodeName=node-1", limit="2")
    assert status == 200 and names(first) == ["demo/p0", "demo/p2"]
    token = first["metadata"]["continue"]
    assert first["metadata"]["remainingItemCount"] == 1
    status, rest = await get(http, ALL_PODS, fieldSelector="spec.nodeName=node-1", limit="2", **{"continue": token})
    assert status == 200 and names(rest) == ["demo/p4"] and "continue" not in rest["metadata"]
    status, body = await get(http, ALL_PODS, fieldSelector="spec.nodeName=node-2", limit="2", **{"continue": token})
    assert (status, body["reason"]) == (400, "BadRequest") and "fieldSelector" in body["message"]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


@given(st.text(), st.booleans())
def test_any_escaped_value_parses_back_to_itself(value: str, equal: bool) -> None:
    selector = f"metadata.name{'=' if equal else '!='}{escape(value)},spec.nodeName=n"
    assert parse_field_selector(selector, POD) == (
        FieldRequirement("metadata.name", equal, value), FieldRequirement("spec.nodeName", True, "n"))


@given(st.text())
def test_any_text_either_parses_or_is_refused_with_400(text: str) -> None:
    try:
        parse_field_selector(text, POD)
    except ApiError as e:
        assert e.code == 400 and e.reason == "BadRequest"

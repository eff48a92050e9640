"""The API server stand-in keeps the list/watch and write semantics of the Kubernetes API conventions:
resourceVersion ordering, watch from a list's version without gaps or repeats, bookmarks, 410 after
compaction, 409 on stale updates and apply conflicts, the status subresource, server-side apply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from meshcore.testing.kube_api import APPLY_PATCH, MERGE_PATCH, KubeApiServer
from meshcore.testing.kube_watch import WatchStream

PODS = "/api/v1/namespaces/demo/pods"
ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/httproutes"


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        yield server


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, ctype: str = "application/json",
    **params: str,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with http.request(method, path, data=data, params=params, headers={"content-type": ctype}) as r:
        return r.status, await r.json()


def pod(name: str, ns: str = "demo", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "node-1"}}


async def make_ns(http: aiohttp.ClientSession, name: str = "demo") -> None:
    status, _ = await call(http, "POST", "/api/v1/namespaces",
                           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert status == 201


async def open_watch(http: aiohttp.ClientSession, path: str, **params: str) -> tuple[WatchStream, aiohttp.ClientResponse]:
    r = await http.get(path, params={"watch": "1", **params})
    assert r.status == 200
    return WatchStream(r), r


async def test_a_watch_from_the_lists_version_sees_every_later_change_in_order_and_nothing_before(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    await call(http, "POST", PODS, pod("a"))
    status, listed = await call(http, "GET", PODS)
    assert status == 200 and listed["kind"] == "PodList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    stream, r = await open_watch(http, PODS, resourceVersion=listed["metadata"]["resourceVersion"])
    try:
        await call(http, "POST", PODS, pod("b"))
        _, a = await call(http, "GET", f"{PODS}/a")
        a["metadata"]["labels"] = {"x": "1"}
        await call(http, "PUT", f"{PODS}/a", a)
        await call(http, "DELETE", f"{PODS}/b")
        events = [await stream.next() for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert versions == sorted(versions) and len(set(versions)) == 3
    finally:
        r.close()


async def test_a_watch_without_a_version_starts_with_every_current_object_as_added(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    for name in ("a", "b"):
        await call(http, "POST", PODS, pod(name))
    stream, r = await open_watch(http, PODS)
    try:
        first = [await stream.next() for _ in range(2)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [("ADDED", "a"), ("ADDED", "b")]
        await call(http, "POST", PODS, pod("c"))
        assert (await stream.next())["object"]["metadata"]["name"] == "c"
    finally:
        r.close()


async def test_bookmarks_come_only_when_allowed_and_carry_a_version_to_resume_from(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    _, listed = await call(http, "GET", PODS)
    rv = listed["metadata"]["resourceVersion"]
    plain, r1 = await open_watch(http, PODS, resourceVersion=rv)
    marked, r2 = await open_watch(http, PODS, resourceVersion=rv, allowWatchBookmarks="true")
    try:
        await call(http, "POST", "/api/v1/namespaces",
                   {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
        api.send_bookmarks()
        bookmark = await marked.next()
        assert bookmark["type"] == "BOOKMARK" and bookmark["object"]["kind"] == "Pod"
        resume = bookmark["object"]["metadata"]["resourceVersion"]
        assert int(resume) == api.revision  # past the namespace write this watch does not show
        await call(http, "POST", PODS, pod("a"))
        assert (await plain.next())["type"] == "ADDED"  # no bookmark first on the plain watch
        again, r3 = await open_watch(http, PODS, resourceVersion=resume)
        try:
            assert (await again.next())["object"]["metadata"]["name"] == "a"
        finally:
            r3.close()
    finally:
        r1.close()
        r2.close()


async def test_a_watch_from_a_compacted_version_gets_a_410_expired_error_event(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    _, listed = await call(http, "GET", PODS)
    old = listed["metadata"]["resourceVersion"]
    await call(http, "POST", PODS, pod("a"))
    api.compact()
    stream, r = await open_watch(http, PODS, resourceVersion=old)
    try:
        event = await stream.next()
        assert event["type"] == "ERROR"
        assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
        assert await stream.ended()
    finally:
        r.close()
    status, body = await call(http, "GET", PODS, resourceVersion=old, resourceVersionMatch="Exact")
    assert status == 410 and body["kind"] == "Status"


async def test_an_open_watch_that_falls_behind_compaction_gets_410(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    await make_ns(http)
    _, listed = await call(http, "GET", PODS)
    stream, r = await open_watch(http, "/api/v1/namespaces/other/pods",
                                 resourceVersion=listed["metadata"]["resourceVersion"])
    try:
        api.put_object({**pod("a"), "metadata": {"name": "a", "namespace": "demo"}})
        api.compact(api.revision + 1)
        assert (await stream.next())["object"]["code"] == 410
    finally:
        r.close()


async def test_an_update_with_a_stale_version_is_refused_with_409_and_an_unconditional_one_is_taken(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    _, created = await call(http, "POST", PODS, pod("a"))
    stale = json.loads(json.dumps(created))
    created["metadata"]["labels"] = {"v": "1"}
    status, updated = await call(http, "PUT", f"{PODS}/a", created)
    assert status == 200 and updated["metadata"]["resourceVersion"] != stale["metadata"]["resourceVersion"]
    stale["metadata"]["labels"] = {"v": "2"}
    status, body = await call(http, "PUT", f"{PODS}/a", stale)
    assert status == 409 and body["reason"] == "Conflict" and "modified" in body["message"]
    del stale["metadata"]["resourceVersion"]
    status, body = await call(http, "PUT", f"{PODS}/a", stale)
    assert status == 200 and body["metadata"]["labels"] == {"v": "2"}


async def test_a_write_that_changes_nothing_takes_no_revision_and_sends_no_event(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    _, created = await call(http, "POST", PODS, pod("a"))
    before = api.revision
    status, same = await call(http, "PUT", f"{PODS}/a", created)
    assert status == 200 and same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert api.revision == before


BAD_REQUESTS = [
    ("creating an existing object is AlreadyExists", "POST", PODS, pod("a"), 409, "AlreadyExists"),
    ("creating in a missing namespace is NotFound", "POST", "/api/v1/namespaces/nope/pods", pod("x", "nope"),
     404, "NotFound"),
    ("a body for another namespace than the URL's is refused", "POST", PODS, pod("x", "other"), 400,
     "BadRequest"),
    ("a body of another kind than the URL's is refused", "POST", PODS,
     {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}, 400, "BadRequest"),
    ("updating a missing object is NotFound", "PUT", f"{PODS}/zzz", pod("zzz"), 404, "NotFound"),
    ("an unknown resource type is NotFound", "GET", "/api/v1/namespaces/demo/widgets", None, 404, "NotFound"),
    ("a label selector is refused, not ignored", "GET", f"{PODS}?labelSelector=a%3Db", None, 400,
     "BadRequest"),
    ("a negative limit is refused", "GET", f"{PODS}?limit=-1", None, 400, "BadRequest"),
    ("a continue token the server did not issue is refused", "GET", f"{PODS}?limit=1&continue=xyz", None, 400,
     "BadRequest"),
    ("a resourceVersion together with continue is refused", "GET",
     f"{PODS}?limit=1&resourceVersion=1&continue=eyJydiI6IDEsICJzdGFydCI6IDEsICJucyI6ICJkZW1vIn0=", None, 400,
     "BadRequest"),
    ("a JSON patch is an unsupported media type", "PATCH", f"{PODS}/a", [], 415, "UnsupportedMediaType"),
    ("an object without a name cannot be created", "POST", PODS,
     {"apiVersion": "v1", "kind": "Pod", "metadata": {}}, 422, "Invalid"),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "code", "reason"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
async def test_bad_requests_get_a_status_with_code_and_reason(
    api: KubeApiServer, http: aiohttp.ClientSession, case: str, method: str, path: str, body: Any, code: int,
    reason: str,
) -> None:
    await make_ns(http)
    await call(http, "POST", PODS, pod("a"))
    ctype = "application/json-patch+json" if method == "PATCH" else "application/json"
    status, got = await call(http, method, path, body, ctype)
    assert (status, got["kind"], got["code"], got["reason"]) == (code, "Status", code, reason), case


async def test_status_is_a_subresource_main_writes_keep_it_and_status_writes_change_nothing_else(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    created = {**pod("a"), "status": {"podIP": "10.0.0.1"}}
    _, stored = await call(http, "POST", PODS, created)
    assert "status" not in stored  # status on create is dropped
    stored["status"] = {"podIP": "10.0.0.9"}
    status, got = await call(http, "PUT", f"{PODS}/a/status", stored)
    assert status == 200 and got["status"] == {"podIP": "10.0.0.9"}
    got["status"] = {"podIP": "1.1.1.1"}
    got["metadata"]["labels"] = {"new": "x"}
    _, main = await call(http, "PUT", f"{PODS}/a", got)
    assert main["status"] == {"podIP": "10.0.0.9"} and main["metadata"]["labels"] == {"new": "x"}
    main["spec"] = {"nodeName": "elsewhere"}
    main["status"] = {"podIP": "10.0.0.10"}
    _, st = await call(http, "PUT", f"{PODS}/a/status", main)
    assert st["spec"] == {"nodeName": "node-1"} and st["status"] == {"podIP": "10.0.0.10"}


async def test_server_side_apply_creates_then_owns_fields_and_conflicts_with_other_managers_unless_forced(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "demo"}, "spec": {"hostnames": ["a"]}}
    status, body = await call(http, "PATCH", f"{ROUTES}/r", route, APPLY_PATCH)
    assert status == 400 and "fieldManager is required" in body["message"]
    status, created = await call(http, "PATCH", f"{ROUTES}/r", route, APPLY_PATCH, fieldManager="kubectl")
    assert status == 201 and created["spec"] == {"hostnames": ["a"]}
    assert created["metadata"]["managedFields"][0]["manager"] == "kubectl"

    mine = {**route, "status": {"parents": [{"controllerName": "x"}], "note": "a"}}
    status, st = await call(http, "PATCH", f"{ROUTES}/r/status", mine, APPLY_PATCH, fieldManager="istiod")
    assert status == 200 and st["status"]["note"] == "a" and st["spec"] == {"hostnames": ["a"]}
    rv = st["metadata"]["resourceVersion"]
    status, again = await call(http, "PATCH", f"{ROUTES}/r/status", mine, APPLY_PATCH, fieldManager="istiod")
    assert again["metadata"]["resourceVersion"] == rv  # applying the same is no write

    theirs = {**route, "status": {"note": "b"}}
    status, body = await call(http, "PATCH", f"{ROUTES}/r/status", theirs, APPLY_PATCH, fieldManager="other")
    assert status == 409 and 'conflict with "istiod": .status.note' in body["message"]
    status, forced = await call(http, "PATCH", f"{ROUTES}/r/status", theirs, APPLY_PATCH, fieldManager="other",
                                force="true")
    assert status == 200 and forced["status"]["note"] == "b"

    status, dropped = await call(http, "PATCH", f"{ROUTES}/r/status", {**route, "status": {}}, APPLY_PATCH,
                                 fieldManager="istiod")
    assert dropped["status"] == {"note": "b"}  # istiod's parents removed; the note is other's now


async def test_a_merge_patch_adds_and_removes_labels(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    await make_ns(http)
    await call(http, "POST", PODS, pod("a", keep="1", drop="1"))
    status, got = await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"drop": None, "new": "2"}}},
                             MERGE_PATCH)
    assert status == 200 and got["metadata"]["labels"] == {"keep": "1", "new": "2"}


async def test_cluster_and_namespaced_paths_of_core_and_crd_groups(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    for name in ("demo", "other"):
        await make_ns(http, name)
    await call(http, "POST", PODS, pod("a"))
    await call(http, "POST", "/api/v1/namespaces/other/pods", pod("b", "other"))
    _, all_pods = await call(http, "GET", "/api/v1/pods")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in all_pods["items"]] == [
        ("demo", "a"), ("other", "b")]
    _, namespaces = await call(http, "GET", "/api/v1/namespaces")
    assert [i["metadata"]["name"] for i in namespaces["items"]] == ["demo", "other"]
    status, ns = await call(http, "GET", "/api/v1/namespaces/demo")
    assert status == 200 and ns["kind"] == "Namespace" and "namespace" not in ns["metadata"]
    status, _ = await call(http, "GET", "/apis/security.istio.io/v1/authorizationpolicies")
    assert status == 200
    status, _ = await call(http, "GET", "/api/v1/pods/a")
    assert status == 404  # a namespaced object needs its namespace


async def test_deleting_a_namespace_deletes_what_is_in_it(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    await make_ns(http)
    await call(http, "POST", PODS, pod("a"))
    status, _ = await call(http, "DELETE", "/api/v1/namespaces/demo")
    assert status == 200
    assert api.get_object("Pod", "demo", "a") is None
    status, _ = await call(http, "DELETE", "/api/v1/namespaces/demo")
    assert status == 404


async def test_injected_failures_answer_the_next_requests_then_stop(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    api.fail_next(503, count=2)
    async with http.get("/api/v1/namespaces") as r:
        assert r.status == 503 and r.headers["retry-after"] == "1"
    assert (await call(http, "GET", "/api/v1/namespaces"))[0] == 503
    assert (await call(http, "GET", "/api/v1/namespaces"))[0] == 200


async def test_closing_watches_ends_their_streams(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    stream, r = await open_watch(http, PODS, resourceVersion=str(api.revision))
    try:
        api.close_watches()
        assert await stream.ended()
    finally:
        r.close()


async def test_every_request_is_recorded_with_its_rbac_verb(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    await make_ns(http)
    await call(http, "GET", PODS)
    await call(http, "PATCH", f"{PODS}/a/status", pod("a"), APPLY_PATCH, fieldManager="m")
    verbs = [(r.verb, r.resource, r.subresource) for r in api.requests]
    assert verbs == [("create", "namespaces", ""), ("list", "pods", ""), ("patch", "pods", "status")]


async def test_a_paginated_list_comes_in_chunks_of_one_consistent_state_with_continue_tokens(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    for name in "abcde":
        await call(http, "POST", PODS, pod(name))
    status, first = await call(http, "GET", PODS, limit="2")
    assert status == 200 and [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 3
    # Writes after the first chunk are not in the rest of this list (it is the state at its version).
    await call(http, "POST", PODS, pod("aa"))
    await call(http, "DELETE", f"{PODS}/e")
    names, token, versions = ["a", "b"], first["metadata"]["continue"], {first["metadata"]["resourceVersion"]}
    for _ in range(10):
        status, chunk = await call(http, "GET", PODS, limit="2", **{"continue": token})
        assert status == 200
        names += [i["metadata"]["name"] for i in chunk["items"]]
        versions.add(chunk["metadata"]["resourceVersion"])
        token = chunk["metadata"].get("continue", "")
        if not token:
            break
    assert names == ["a", "b", "c", "d", "e"]
    assert len(versions) == 1
    status, whole = await call(http, "GET", PODS)
    assert [i["metadata"]["name"] for i in whole["items"]] == ["a", "aa", "b", "c", "d"]
    assert "continue" not in whole["metadata"]


async def test_a_list_that_fits_the_limit_has_no_continue_token(api: KubeApiServer, http: aiohttp.ClientSession) -> None:
    await make_ns(http)
    await call(http, "POST", PODS, pod("a"))
    status, listed = await call(http, "GET", PODS, limit="1")
    assert status == 200 and len(listed["items"]) == 1
    assert "continue" not in listed["metadata"] and "remainingItemCount" not in listed["metadata"]


async def test_a_continue_token_whose_version_was_compacted_gets_410_expired_and_a_new_list_works(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http)
    for name in "abc":
        await call(http, "POST", PODS, pod(name))
    _, first = await call(http, "GET", PODS, limit="1")
    await call(http, "POST", PODS, pod("d"))
    api.compact()
    status, expired = await call(http, "GET", PODS, limit="1", **{"continue": first["metadata"]["continue"]})
    assert (status, expired["kind"], expired["code"], expired["reason"]) == (410, "Status", 410, "Expired")
    status, again = await call(http, "GET", PODS, limit="10")
    assert status == 200 and [i["metadata"]["name"] for i in again["items"]] == ["a", "b", "c", "d"]


async def test_configmaps_are_served_with_a_data_map_and_conflict_checked_updates(
    api: KubeApiServer, http: aiohttp.ClientSession
) -> None:
    await make_ns(http, "istio-system")
    path = "/api/v1/namespaces/istio-system/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio-ca-root-cert"},
            "data": {"root-cert.pem": "one"}}
    status, created = await call(http, "POST", path, body)
    assert status == 201 and created["data"] == {"root-cert.pem": "one"}
    assert (await call(http, "POST", path, body))[0] == 409  # AlreadyExists
    stale = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}, "data": {"root-cert.pem": "two"}}
    assert (await call(http, "PUT", f"{path}/istio-ca-root-cert", stale))[0] == 409
    fresh = {**stale, "metadata": {**body["metadata"], "resourceVersion": created["metadata"]["resourceVersion"]}}
    status, updated = await call(http, "PUT", f"{path}/istio-ca-root-cert", fresh)
    assert status == 200 and updated["data"] == {"root-cert.pem": "two"}
    assert [r.verb for r in api.requests if r.resource == "configmaps"] == ["create", "create", "update", "update"]

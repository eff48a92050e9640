"""The API stand-in's TokenReview: a minted token is authenticated as its service account with the bound
pod's and node's names under ``user.extra``; an unknown or revoked token, a token for other audiences and
the token of a deleted or re-created pod are not, each with ``status.error``, as a real server answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from meshcore.testing.kube_api import KubeApiServer

REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}})
        yield server


async def review(api: KubeApiServer, token: str, audiences: list[str] | None = None) -> tuple[int, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    async with aiohttp.ClientSession(api.url) as http, http.post(
        REVIEWS, data=json.dumps(body), headers={"content-type": "application/json"}
    ) as r:
        return r.status, await r.json()


def ztunnel_pod(api: KubeApiServer) -> str:
    stored = api.put_object({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": "ztunnel-abc", "namespace": "istio-system"},
                             "spec": {"nodeName": "node-1", "serviceAccountName": "ztunnel"}})
    return str(stored["metadata"]["uid"])


async def test_a_pod_bound_token_is_authenticated_with_its_pod_and_node(api: KubeApiServer) -> None:
    uid = ztunnel_pod(api)
    token = api.issue_token("istio-system", "ztunnel", pod_name="ztunnel-abc", pod_uid=uid, node_name="node-1")
    code, answer = await review(api, token, ["istio-ca"])
    assert code == 201
    status = answer["status"]
    assert status["authenticated"] is True and status["audiences"] == ["istio-ca"]
    user = status["user"]
    assert user["username"] == "system:serviceaccount:istio-system:ztunnel"
    assert "system:serviceaccounts:istio-system" in user["groups"]
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["ztunnel-abc"]
    assert user["extra"]["authentication.kubernetes.io/pod-uid"] == [uid]
    assert user["extra"]["authentication.kubernetes.io/node-name"] == ["node-1"]
    assert [(r.verb, r.group, r.resource) for r in api.requests] == [("create", "authentication.k8s.io", "tokenreviews")]


CASES = [
    ("an unknown token is not authenticated", "unknown", ["istio-ca"], "not valid"),
    ("a revoked token is not authenticated", "revoked", ["istio-ca"], "not valid"),
    ("a token for other audiences is not authenticated", "valid", ["https://vault.example"], "target audiences"),
    ("without audiences only the api server's own audience is accepted", "valid", None, "target audiences"),
    ("the token of a deleted pod is not authenticated", "deleted-pod", ["istio-ca"], "not found"),
    ("the token of a re-created pod is not authenticated", "recreated-pod", ["istio-ca"], "uid does not match"),
]


@pytest.mark.parametrize(("which", "audiences", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_token_that_does_not_hold_is_answered_unauthenticated_with_the_reason(
    api: KubeApiServer, which: str, audiences: list[str] | None, error: str
) -> None:
    uid = ztunnel_pod(api)
    tokens = {"unknown": "no-such-token",
              "valid": api.issue_token("istio-system", "ztunnel", pod_name="ztunnel-abc", pod_uid=uid)}
    tokens["revoked"] = api.issue_token("istio-system", "ztunnel")
    api.revoke_token(tokens["revoked"])
    tokens["deleted-pod"] = api.issue_token("istio-system", "ztunnel", pod_name="gone", pod_uid="u")
    tokens["recreated-pod"] = api.issue_token("istio-system", "ztunnel", pod_name="ztunnel-abc", pod_uid="old-uid")
    code, answer = await review(api, tokens[which], audiences)
    assert code == 201
    assert answer["status"]["authenticated"] is False
    assert error in answer["status"]["error"]


async def test_a_review_without_a_token_is_invalid(api: KubeApiServer) -> None:
    async with aiohttp.ClientSession(api.url) as http, http.post(
        REVIEWS, data=json.dumps({"spec": {}}), headers={"content-type": "application/json"}
    ) as r:
        assert r.status == 422 and "spec.token" in (await r.json())["message"]

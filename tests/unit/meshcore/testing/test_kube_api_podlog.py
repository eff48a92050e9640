"""The stand-in's pods/log subresource as the API documents it: plain text of the lines written with
``write_log``; container choice (required when a pod has several), sinceSeconds/sinceTime, tailLines,
limitBytes, timestamps; follow streams new lines until the pod is deleted; refusals are Status objects;
each request is recorded as RBAC verb get on pods/log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from meshcore.testing.kube_api import KubeApiServer, RecordedRequest

LOG = "/api/v1/namespaces/demo/pods/{}/log"


def pod(name: str, *containers: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"nodeName": "node-1", "containers": [{"name": c, "image": "x"} for c in containers]}}


@pytest.fixture
async def api() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer() as server:
        server.put_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        server.put_object(pod("web", "app"))
        server.put_object(pod("two", "app", "sidecar"))
        old = datetime.now(UTC) - timedelta(hours=1)
        server.write_log("demo", "web", "app", "first\nsecond\n", at=old)
        server.write_log("demo", "web", "app", "third\nfourth")
        server.write_log("demo", "two", "sidecar", "from the sidecar")
        yield server


async def get(api: KubeApiServer, pod_name: str, **params: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(api.url + LOG.format(pod_name), params=params) as r:
        return r.status, (await r.read()).decode()


@pytest.mark.parametrize(
    ("pod_name", "params", "expected"),
    [
        ("web", {}, "first\nsecond\nthird\nfourth\n"),
        ("web", {"container": "app"}, "first\nsecond\nthird\nfourth\n"),
        ("web", {"tailLines": "1"}, "fourth\n"),
        ("web", {"tailLines": "0"}, ""),
        ("web", {"sinceSeconds": "600"}, "third\nfourth\n"),
        ("web", {"sinceTime": (datetime.now(UTC) - timedelta(minutes=90)).isoformat()}, "first\nsecond\nthird\nfourth\n"),
        ("web", {"limitBytes": "8"}, "first\nse"),
        ("two", {"container": "sidecar"}, "from the sidecar\n"),
        ("two", {"container": "app"}, ""),
    ],
    ids=["the whole log of the only container", "the container named", "tailLines keeps the last lines",
         "tailLines 0 keeps none", "sinceSeconds drops older lines", "sinceTime keeps lines after it",
         "limitBytes cuts the answer", "the named container of a pod with two", "a container that wrote nothing"],
)
async def test_a_log_is_read_with_the_documented_parameters(
    api: KubeApiServer, pod_name: str, params: dict[str, str], expected: str
) -> None:
    assert await get(api, pod_name, **params) == (200, expected)
    assert RecordedRequest("get", "", "pods", "log", "demo", pod_name) in api.requests


async def test_timestamps_prefix_each_line_with_its_rfc3339_time(api: KubeApiServer) -> None:
    status, text = await get(api, "web", timestamps="true", tailLines="2")
    assert status == 200
    stamps = [line.split(" ", 1) for line in text.splitlines()]
    assert [rest for _, rest in stamps] == ["third", "fourth"]
    assert all(datetime.fromisoformat(s[:26] + "+00:00") <= datetime.now(UTC) for s, _ in stamps)


@pytest.mark.parametrize(
    ("pod_name", "params", "code", "message"),
    [
        ("two", {}, 400, "a container name must be specified for pod two, choose one of: [app sidecar]"),
        ("web", {"container": "nope"}, 400, "container nope is not valid for pod web"),
        ("gone", {}, 404, 'pods "gone" not found'),
        ("web", {"previous": "true"}, 400, 'previous terminated container "app" in pod "web" not found'),
        ("web", {"sinceSeconds": "5", "sinceTime": "2026-01-01T00:00:00Z"}, 422, "at most one of sinceTime"),
        ("web", {"tailLines": "-1"}, 422, "tailLines"),
        ("web", {"sinceSeconds": "0"}, 422, "sinceSeconds"),
    ],
    ids=["a pod with two containers needs one named", "a container the pod lacks is refused",
         "a missing pod is NotFound", "previous is refused: no earlier run is kept",
         "sinceSeconds and sinceTime together are refused", "a negative tailLines is refused",
         "sinceSeconds under 1 is refused"],
)
async def test_refusals_are_status_objects(
    api: KubeApiServer, pod_name: str, params: dict[str, str], code: int, message: str
) -> None:
    status, text = await get(api, pod_name, **params)
    assert status == code
    body = json.loads(text)
    assert body["kind"] == "Status" and body["code"] == code and message in body["message"]


async def test_follow_streams_new_lines_until_the_pod_is_deleted(api: KubeApiServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        api.url + LOG.format("web"), params={"follow": "true", "tailLines": "1"}
    ) as response:
        assert response.status == 200
        lines = response.content
        assert await asyncio.wait_for(lines.readline(), 5) == b"fourth\n"
        api.write_log("demo", "web", "app", "fifth")
        assert await asyncio.wait_for(lines.readline(), 5) == b"fifth\n"
        api.delete_object("Pod", "demo", "web")
        assert await asyncio.wait_for(lines.read(), 5) == b""  # the stream ends with the pod


async def test_follow_ends_when_the_server_closes_its_streams(api: KubeApiServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        api.url + LOG.format("web"), params={"follow": "1", "limitBytes": "1000"}
    ) as response:
        assert await asyncio.wait_for(response.content.readline(), 5) == b"first\n"
        api.close_watches()
        assert (await asyncio.wait_for(response.content.read(), 5)).endswith(b"fourth\n")

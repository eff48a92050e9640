"""Events with ``--kubeconfig``: an Event the cluster's kubelet wrote to the API server (here the stand-in)
shows in ``get events`` and under ``describe pod``'s ``Events:``, as on the local cluster; only the commands
that show Events list them (istiod-lite's store, DEFAULT_KINDS, never does)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from meshcore.store.kubernetes import DEFAULT_KINDS, EVENT_KINDS, to_resource
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        server.call(server.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        pod = server.call(server.server.put_object, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "web:1"}]}})
        server.call(server.server.put_object, {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.17f0a1b2c3d4e5f6", "namespace": "demo"},
            "involvedObject": {"kind": "Pod", "namespace": "demo", "name": "web", "uid": pod["metadata"]["uid"],
                               "fieldPath": "spec.containers{web}"},
            "reason": "Pulled", "message": 'Container image "web:1" already present on machine', "type": "Normal",
            "source": {"component": "kubelet", "host": "node-1"}, "count": 2,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:01:00Z"})
        yield server


def run(api: ThreadedKubeApi, tmp_path: Path, *args: str) -> Any:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    return CliRunner().invoke(app, ["--state-dir", str(tmp_path / "local"), "--kubeconfig", str(kubeconfig), *args])


def event_requests(api: ThreadedKubeApi) -> list[str]:
    return [r.verb for r in api.server.requests if r.resource == "events"]


def test_get_events_shows_the_event_the_api_server_has(api: ThreadedKubeApi, tmp_path: Path) -> None:
    table = run(api, tmp_path, "get", "events", "-n", "demo")
    assert table.exit_code == 0, table.output
    assert "Pulled" in table.stdout and "already present on machine" in table.stdout and "pod/web" in table.stdout
    docs = run(api, tmp_path, "get", "events", "-n", "demo", "-o", "json")
    assert docs.exit_code == 0, docs.output
    [event] = json.loads(docs.stdout)["items"]
    assert event["reason"] == "Pulled" and event["involvedObject"]["name"] == "web" and "spec" not in event
    assert not (tmp_path / "local").exists()  # the embedded store was never opened


def test_describe_pod_lists_its_events(api: ThreadedKubeApi, tmp_path: Path) -> None:
    got = run(api, tmp_path, "describe", "pod", "web", "-n", "demo")
    assert got.exit_code == 0, got.output
    events = got.stdout.split("Events:", 1)[1]
    assert "<none>" not in events
    assert "Pulled" in events and "kubelet" in events and "already present on machine" in events


def test_only_the_commands_that_show_events_list_them(api: ThreadedKubeApi, tmp_path: Path) -> None:
    assert "Event" not in DEFAULT_KINDS and EVENT_KINDS == ("Event",)
    assert run(api, tmp_path, "get", "pods", "-n", "demo").exit_code == 0
    assert event_requests(api) == []
    assert run(api, tmp_path, "get", "events", "-n", "demo").exit_code == 0
    assert "list" in event_requests(api)


def test_an_events_top_level_fields_are_what_the_store_keeps() -> None:
    got = to_resource({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "demo"},
                       "reason": "Started", "involvedObject": {"kind": "Pod", "name": "web"}}, "Event")
    assert got.spec == {"reason": "Started", "involvedObject": {"kind": "Pod", "name": "web"}}
    assert got.to_dict()["reason"] == "Started"

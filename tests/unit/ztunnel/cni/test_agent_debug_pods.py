"""The node agent's ``/debug/pods``: for every captured pod, what its redirector finds in the pod's netns
now, rule by rule, against what it installed. A recording redirector stands in for nft (the kernel half
is tests/netns/test_troubleshoot.py); every pod's "netns" is this process's own. It is served only on the
admin address (loopback), never beside /metrics on the monitoring address."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshcore.config import HostPort
from meshcore.store import SqliteStore, build_resource
from ztunnel.cni.events import PluginEvent, send_event
from ztunnel.cni.testing import FakeZtunnel, agent_config, agent_running, eventually
from ztunnel.redirect import CheckFailed, Drift, DriftKind, RedirectError

TIMEOUT = 5.0
OWN_NETNS = "/proc/self/ns/net"
MISSING = Drift(DriftKind.RULE_MISSING, "inet istio-ambient-nat/istio-output", "tcp dport != 15008 redirect to :15001")


class CheckingRedirector:
    """Records nothing; ``check`` answers ``drift`` (or raises ``error``) for every pod."""

    def __init__(self, drift: list[Drift], error: RedirectError | None = None) -> None:
        self.drift = drift
        self.error = error

    async def apply(self, netns_fd: int) -> None:
        return None

    async def remove(self, netns_fd: int) -> None:
        return None

    async def check(self, netns_fd: int) -> list[Drift]:
        if self.error is not None:
            raise self.error
        return list(self.drift)


class PlainRedirector:
    async def apply(self, netns_fd: int) -> None:
        return None

    async def remove(self, netns_fd: int) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(port: int) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/pods", timeout=TIMEOUT) as answer:
        return json.loads(answer.read())


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of ``GET path``; an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize(
    ("redirector", "expected"),
    [
        (CheckingRedirector([]), {"redirected": True, "drift": []}),
        (CheckingRedirector([MISSING]), {"redirected": False, "drift": [MISSING.to_json()]}),
        (CheckingRedirector([], CheckFailed("fd:7", "nft: Operation not permitted")),
         {"redirected": False, "check_error": "cannot read redirection state of fd:7: nft: Operation not permitted"}),
        (PlainRedirector(), {}),
    ],
    ids=["a pod with every rule in place is redirected", "a removed rule is named with its kind and text",
         "a netns that cannot be read gives the reason", "a redirector that cannot check adds nothing"],
)  # fmt: skip
async def test_debug_pods_reports_each_pods_drift(tmp_path: Path, redirector: Any, expected: dict[str, Any]) -> None:
    port = free_port()
    config = agent_config(tmp_path, admin_addr=HostPort("127.0.0.1", port), zds_ack_timeout=1.0)
    store = SqliteStore(tmp_path / "store.db")
    try:
        store.apply([build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}})])  # fmt: skip
        (made,) = store.apply([build_resource({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"nodeName": "node-1", "serviceAccountName": "web"}, "status": {"phase": "Running"}})])  # fmt: skip
        uid = made.resource.uid
        async with agent_running(config, store, redirector, within=TIMEOUT) as agent, FakeZtunnel(config.zds_socket):
            event = PluginEvent(cmd="add", pod_namespace="demo", pod_name="web", container_id="s", netns=OWN_NETNS)
            await asyncio.to_thread(send_event, str(config.event_socket), event, TIMEOUT)
            await eventually(lambda: agent.captured().get(uid, ("", False))[1], "web handed over", within=TIMEOUT)
            doc = await asyncio.to_thread(get_json, port)
    finally:
        store.close()
    entry = doc["captured"][uid]
    assert entry == {"pod": "demo/web", "netns": OWN_NETNS, "handed_over": True, **expected}


async def test_debug_pods_is_served_only_on_the_admin_address_and_metrics_only_on_the_monitoring_one(
    tmp_path: Path,
) -> None:
    monitoring, admin = free_port(), free_port()
    config = agent_config(tmp_path, monitoring_addr=HostPort("127.0.0.1", monitoring),
                          admin_addr=HostPort("127.0.0.1", admin))  # fmt: skip
    store = SqliteStore(tmp_path / "store.db")
    try:
        async with agent_running(config, store, CheckingRedirector([]), within=TIMEOUT):
            answers = {(name, path): await asyncio.to_thread(get, port, path)
                       for name, port in (("monitoring", monitoring), ("admin", admin))
                       for path in ("/debug/pods", "/metrics", "/readyz")}  # fmt: skip
    finally:
        store.close()
    status, body = answers["admin", "/debug/pods"]
    assert status == 200 and json.loads(body)["node"] == "node-1"
    status, body = answers["monitoring", "/debug/pods"]
    assert status == 404 and f"admin address (ADMIN_ADDR: 127.0.0.1:{admin})" in body and '"node"' not in body
    status, body = answers["monitoring", "/metrics"]
    assert status == 200 and "ambient_cni_pods_captured" in body
    assert answers["monitoring", "/readyz"] == (200, "ready\n")
    assert answers["admin", "/metrics"][0] == 404
    assert answers["admin", "/readyz"][0] == 404

"""Two istiod-lite replicas on the Kubernetes store (the API stand-in): both serve, one leader writes route
status, the other takes over when the leader stops, and the status is written once across the hand-over;
only the leader runs the waypoint controller and publishes the CA root in every namespace (a new one too);
the Lease calls the replicas make are exactly the Role the manifests grant; every replica signs with the one CA root kept in the istio-ca-secret Secret."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from istiod_lite.leader import LEASE_VERBS, LeaseSettings
from meshcore.model.convert_traffic import SERVICE_TRAFFIC_TYPE_URL
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig

# Short, but with room for a loaded CI machine (a renew late by more than 1.5 s would change leaders).
FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def route(name: str, backend: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": backend}],
                     "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}}


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        for ns in ("istio-system", "demo"):
            server.call(server.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield server


class Replicas:
    def __init__(self, api: ThreadedKubeApi, tmp_path: Path) -> None:
        self.api = api
        self.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        self.tmp_path = tmp_path
        self.running: list[ControlPlane] = []
        self.offsets: dict[str, timedelta] = {}

    async def written_by(self, name: str) -> str:
        """Which replica wrote the route's status: the one whose clock its transition time is from."""
        status = await self.status(name)
        written = datetime.strptime(status["parents"][0]["conditions"][0]["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
        skew = written.replace(tzinfo=UTC) - datetime.now(UTC)
        return min(self.offsets, key=lambda replica: abs(self.offsets[replica] - skew))

    async def start(self, name: str) -> ControlPlane:
        # Each replica's clock an hour apart from the last one's: status one wrote differs from what the
        # other would write (in lastTransitionTime), so a write by a follower is a real, recorded PATCH.
        offset = timedelta(hours=len(self.offsets) + 1)
        state = self.tmp_path / name
        state.mkdir()
        cp = ControlPlane(
            IstiodConfig(
                state_dir=state, xds_host="127.0.0.1", xds_port=free_port(), monitoring_host="127.0.0.1",
                monitoring_port=0, debounce_seconds=0.02, store="kubernetes", kubeconfig=str(self.kubeconfig),
                kube_context="standin",
            ),
            clock=lambda: datetime.now(UTC) + offset,
            lease=LeaseSettings(identity=name, **FAST),  # type: ignore[arg-type]
        )
        self.offsets[name] = offset
        await cp.start()
        self.running.append(cp)
        return cp

    async def stop(self, cp: ControlPlane) -> None:
        self.running.remove(cp)
        await cp.stop(grace=0)

    async def put(self, doc: dict[str, Any]) -> None:
        await asyncio.to_thread(self.api.call, self.api.server.put_object, doc)

    async def status(self, name: str) -> dict[str, Any]:
        got = await asyncio.to_thread(self.api.call, self.api.server.get_object, "HTTPRoute", "demo", name)
        return dict((got or {}).get("status") or {})

    async def wait_for_status(self, name: str) -> None:
        for _ in range(500):  # polled with a deadline: up to 10 s
            if (await self.status(name)).get("parents"):
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"no replica wrote status for route {name}")

    def status_writes(self, name: str) -> int:
        return sum(1 for r in self.api.server.requests
                   if r.resource == "httproutes" and r.subresource == "status" and r.name == name)


@pytest.fixture
async def replicas(api: ThreadedKubeApi, tmp_path: Path) -> AsyncIterator[Replicas]:
    r = Replicas(api, tmp_path)
    try:
        yield r
    finally:
        for cp in list(r.running):
            with contextlib.suppress(Exception):
                await cp.stop(grace=0)


async def one_leader(a: ControlPlane, b: ControlPlane) -> tuple[ControlPlane, ControlPlane]:
    assert a.elector is not None and b.elector is not None
    waits = [asyncio.ensure_future(a.elector.wait_for(True)), asyncio.ensure_future(b.elector.wait_for(True))]
    try:
        async with asyncio.timeout(10):
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return (a, b) if a.is_leader else (b, a)


async def wait_until(predicate: Any, what: str) -> None:
    for _ in range(500):  # polled with a deadline: up to 10 s
        if predicate():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting until {what}")


async def test_one_leader_writes_status_and_the_other_takes_over_without_writing_it_again(
    replicas: Replicas,
) -> None:
    a, b = await replicas.start("istiod-a"), await replicas.start("istiod-b")
    leader, follower = await one_leader(a, b)
    await wait_until(lambda: leader.leader_resyncs == 1, "the leader has re-read the store")
    assert not follower.is_leader and follower.leader_resyncs == 0
    for doc in (service("server"), route("r", "server")):
        await replicas.put(doc)
    await replicas.wait_for_status("r")
    # Both replicas serve: the follower has compiled the route too (and, leading not, wrote nothing).
    await wait_until(lambda: bool(follower.push.resource_versions(SERVICE_TRAFFIC_TYPE_URL)),
                     "the follower serves the route's traffic")
    assert await replicas.written_by("r") == leader.elector.settings.identity  # type: ignore[union-attr]

    await replicas.stop(leader)  # a clean stop releases the Lease
    assert follower.elector is not None
    async with asyncio.timeout(10):
        await follower.elector.wait_for(True)
    # A change after the hand-over: the new leader writes its status (after its re-read of the store).
    await replicas.put(route("r2", "server"))
    await replicas.wait_for_status("r2")
    assert follower.leader_resyncs == 1
    assert replicas.status_writes("r") == 1, "the route's status was written again (or by the follower)"
    assert replicas.status_writes("r2") == 1
    assert await replicas.written_by("r2") == follower.elector.settings.identity


async def test_a_follower_writes_no_status_until_it_leads(replicas: Replicas) -> None:
    a = await replicas.start("istiod-a")
    assert a.elector is not None
    async with asyncio.timeout(10):
        await a.elector.wait_for(True)
    b = await replicas.start("istiod-b")
    for doc in (service("server"), route("r", "server")):
        await replicas.put(doc)
    await replicas.wait_for_status("r")
    await wait_until(lambda: bool(b.push.resource_versions(SERVICE_TRAFFIC_TYPE_URL)),
                     "the follower serves the route's traffic")
    assert a.is_leader and not b.is_leader
    assert replicas.status_writes("r") == 1
    assert await replicas.written_by("r") == "istiod-a"


async def test_only_the_leader_runs_the_waypoint_controller(replicas: Replicas) -> None:
    from meshcore.store.kubernetes import to_manifest
    from meshcore.testing.resources import waypoint

    a, b = await replicas.start("istiod-a"), await replicas.start("istiod-b")
    leader, follower = await one_leader(a, b)
    await wait_until(lambda: leader.leader_resyncs == 1, "the leader has re-read the store")
    await replicas.put(to_manifest(waypoint(address=None), with_status=True))

    def made(kind: str) -> list[Any]:
        return [r for r in replicas.api.server.requests if r.resource == kind and r.verb == "create"]

    # The leader makes the waypoint's objects; the follower sees them too (it serves them) and makes none.
    await wait_until(lambda: made("deployments") and made("services"), "the waypoint's Deployment and Service are made")
    # Noted by the follower (its watch loop notes and would reconcile in one turn), kept for when it leads.
    await wait_until(lambda: follower.waypoints.pending > 0, "the follower has noted the Gateway")
    assert len(made("deployments")) == 1 and len(made("services")) == 1
    assert not made("pods")  # the cluster's Deployment controller makes the pods


async def test_the_lease_calls_are_exactly_the_role_the_manifests_grant(replicas: Replicas) -> None:
    from ambientctl.commands.install import render_manifests

    a, b = await replicas.start("istiod-a"), await replicas.start("istiod-b")
    leader, _ = await one_leader(a, b)
    await replicas.stop(leader)  # releasing: the last verb the elector uses
    await wait_until(lambda: b.is_leader if leader is a else a.is_leader, "the other replica leads")
    called = {r.verb for r in replicas.api.server.requests if r.resource == "leases"}
    assert called == set(LEASE_VERBS)
    role = next(d for d in render_manifests() if d["kind"] == "Role" and d["metadata"]["name"] == "istiod-lite")
    assert role["metadata"]["namespace"] == "istio-system"
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": list(LEASE_VERBS)} in role["rules"]


async def test_every_replica_signs_with_the_one_root_kept_in_the_secret(replicas: Replicas) -> None:
    a, b = await replicas.start("istiod-a"), await replicas.start("istiod-b")
    assert a.ca.signing_cert == b.ca.signing_cert
    stored = await asyncio.to_thread(replicas.api.call, replicas.api.server.get_object, "Secret", "istio-system",
                                     "istio-ca-secret")
    assert stored is not None
    # A restarted replica (a new state directory: the pod's emptyDir is gone) keeps the root.
    await replicas.stop(a)
    c = await replicas.start("istiod-c")
    assert c.ca.signing_cert == b.ca.signing_cert


async def test_the_leader_publishes_the_root_in_every_namespace_and_in_a_new_one(replicas: Replicas) -> None:
    from istiod_lite.ca.secret import ROOT_CONFIGMAP

    def root_in(namespace: str) -> str | None:
        got = replicas.api.call(replicas.api.server.get_object, "ConfigMap", namespace, ROOT_CONFIGMAP)
        return None if got is None else str(got["data"]["root-cert.pem"])

    a, b = await replicas.start("istiod-a"), await replicas.start("istiod-b")
    leader, follower = await one_leader(a, b)
    assert leader.root_publisher is not None and follower.root_publisher is not None
    await wait_until(lambda: leader.root_publisher.passes >= 1, "the leader's pass over every namespace")  # type: ignore[union-attr]
    assert root_in("demo") == root_in("istio-system") == leader.ca.roots_pem
    await replicas.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "later"}})
    await wait_until(lambda: root_in("later") == leader.ca.roots_pem, "the root in the namespace made later")
    assert follower.root_publisher.passes == 0
    writes = sorted((r.verb, r.namespace) for r in replicas.api.server.requests
                    if r.resource == "configmaps" and r.verb in ("create", "update"))
    assert writes == [("create", "demo"), ("create", "istio-system"), ("create", "later")]  # each once

"""ztunnel on Kubernetes without a pre-shared node credential (CA_AUTH=token): istiod_lite on the Kubernetes
store against the test kit's API server stand-in, a real ztunnel whose only secret is its pod's projected
token. The token port verifies it with TokenReview, binds the ztunnel to its node through the token's pod
claims, and grants what a node credential grants: the identities of pods on that node, and no other;
ztunnel's own certificate, fetched the same way, carries its xDS connection. The token file is re-read at
every call, so a rotated token is picked up."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import grpc
import pytest

from istiod_lite.app import ControlPlane
from meshcore.aio.ca_client import CaCertificateProvider, CaRefused, token_ca_client
from meshcore.identity import SpiffeId
from meshcore.store.resource import ResourceRef
from meshcore.testing.kube_api import ThreadedKubeApi
from ztunnel.app import Ztunnel
from ztunnel.config import CaAuth
from ztunnel.credentials import TokenXdsSource
from ztunnel.testing import loopback_block, make_config

CLIENT = SpiffeId("cluster.local", "demo", "client")
SERVER = SpiffeId("cluster.local", "demo", "server")


def pod(namespace: str, name: str, sa: str, node: str, ip: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running"}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                          "labels": {"app": name}},
            "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c", "image": "i"}]},
            "status": status}


@pytest.fixture
def plane(token_ca_plane: ControlPlane) -> ControlPlane:
    return token_ca_plane


async def put_and_see(api: ThreadedKubeApi, cp: ControlPlane, obj: dict[str, Any]) -> dict[str, Any]:
    """Store ``obj`` on the API server and wait (with a deadline) until istiod-lite's cache has it."""
    stored: dict[str, Any] = await asyncio.to_thread(api.call, api.server.put_object, obj)
    ref = ResourceRef("Pod", obj["metadata"]["namespace"], obj["metadata"]["name"])
    for _ in range(500):  # up to 10 s
        if cp.store.get(ref) is not None:
            return stored
        await asyncio.sleep(0.02)
    pytest.fail(f"istiod-lite's cache never saw {ref}")


async def registered(cp: ControlPlane, node: str, identity: SpiffeId) -> None:
    """Wait (with a deadline) until the registry counts ``identity`` among the pods on ``node``."""
    for _ in range(500):  # up to 10 s
        if identity in cp.snapshot.identities_on_node(node):
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"the registry never put {identity} on {node}")


async def ztunnel_token(api: ThreadedKubeApi, cp: ControlPlane, path: Path, node: str = "node-1") -> str:
    """A ztunnel pod on ``node`` and its projected token (audience istio-ca, pod- and node-bound) in ``path``."""
    stored = await put_and_see(api, cp, pod("istio-system", f"ztunnel-{node}", "ztunnel", node))
    token: str = await asyncio.to_thread(api.call, api.server.issue_token, "istio-system", "ztunnel",
                                         pod_name=f"ztunnel-{node}", pod_uid=stored["metadata"]["uid"],
                                         node_name=node)
    await asyncio.to_thread(path.write_text, token)
    return token


async def test_a_ztunnel_with_only_its_token_gets_config_and_the_certificates_of_its_nodes_pods(
    api: ThreadedKubeApi, plane: ControlPlane, tmp_path: Path
) -> None:
    net = loopback_block()
    await put_and_see(api, plane, pod("demo", "client", "client", "node-1", net + "11"))
    await put_and_see(api, plane, pod("demo", "server", "server", "node-2", net + "12"))
    await ztunnel_token(api, plane, tmp_path / "istio-token")
    # The root as the DaemonSet mounts it: the istio-ca-root-cert ConfigMap istiod-lite published.
    published = await asyncio.to_thread(api.call, api.server.get_object, "ConfigMap", "istio-system",
                                        "istio-ca-root-cert")
    (tmp_path / "root-cert.pem").write_text(published["data"]["root-cert.pem"])
    config = dataclasses.replace(
        make_config("node-1", None), xds_address=f"127.0.0.1:{plane.xds_port}",
        ca_address=f"127.0.0.1:{plane.token_ca_port}", ca_auth=CaAuth.TOKEN,
        token_path=tmp_path / "istio-token", ca_root_path=tmp_path / "root-cert.pem",
    )
    zt = Ztunnel(config)
    try:
        await zt.start()
        await zt.wait_ready(15)  # xDS synced (own certificate) and the client pod's certificate held
        assert zt.secrets.identities == frozenset({CLIENT})
        assert zt.secrets.find_certificate(CLIENT) is not None
        assert isinstance(zt.source, TokenXdsSource)
        own = zt.source.secrets.find_certificate(SpiffeId("cluster.local", "istio-system", "ztunnel"))
        assert own is not None and own.identity == SpiffeId("cluster.local", "istio-system", "ztunnel")
    finally:
        await zt.stop()
    reviews = [r.verb for r in api.server.requests if r.resource == "tokenreviews"]
    assert reviews and set(reviews) == {"create"}  # every call reviewed, with the verb the ClusterRole grants


async def test_a_ztunnel_token_never_obtains_a_pod_identity_of_another_node(
    api: ThreadedKubeApi, plane: ControlPlane, tmp_path: Path
) -> None:
    await put_and_see(api, plane, pod("demo", "server", "server", "node-2"))
    await registered(plane, "node-2", SERVER)  # refused for its node, not for a registry that lags
    await ztunnel_token(api, plane, tmp_path / "istio-token")
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, tmp_path / "istio-token") as c:
        with pytest.raises(CaRefused, match="no pod with identity spiffe://cluster.local/ns/demo/sa/server on node "
                                            "node-1") as info:
            await CaCertificateProvider(c, impersonate=True).fetch(SERVER)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert plane.metrics.get_sample_value("istiod_lite_ca_refusals_total", {"reason": "identity_not_on_node"}) == 1


async def test_a_rotated_token_is_read_at_the_next_call(
    api: ThreadedKubeApi, plane: ControlPlane, tmp_path: Path
) -> None:
    await put_and_see(api, plane, pod("demo", "client", "client", "node-1"))
    await registered(plane, "node-1", CLIENT)
    path = tmp_path / "istio-token"
    old = await ztunnel_token(api, plane, path)
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, path) as c:
        provider = CaCertificateProvider(c, impersonate=True)
        assert (await provider.fetch(CLIENT)).identity == CLIENT
        await asyncio.to_thread(api.call, api.server.revoke_token, old)  # the old token expired
        with pytest.raises(CaRefused, match="did not authenticate the token") as info:
            await provider.fetch(CLIENT)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        stored = await asyncio.to_thread(api.call, api.server.get_object, "Pod", "istio-system", "ztunnel-node-1")
        new = await asyncio.to_thread(api.call, api.server.issue_token, "istio-system", "ztunnel",
                                      pod_name="ztunnel-node-1", pod_uid=stored["metadata"]["uid"],
                                      node_name="node-1")
        await asyncio.to_thread(path.write_text, new)  # the kubelet rewrote the projected file
        assert (await provider.fetch(CLIENT)).identity == CLIENT


async def test_a_ztunnel_token_from_another_namespace_may_not_impersonate(
    api: ThreadedKubeApi, plane: ControlPlane, tmp_path: Path
) -> None:
    await put_and_see(api, plane, pod("demo", "client", "client", "node-1"))
    await registered(plane, "node-1", CLIENT)  # refused for its account, not for a registry that lags
    stored = await put_and_see(api, plane, pod("demo", "fake-ztunnel", "ztunnel", "node-1"))
    token = await asyncio.to_thread(api.call, api.server.issue_token, "demo", "ztunnel", pod_name="fake-ztunnel",
                                    pod_uid=stored["metadata"]["uid"], node_name="node-1")
    (tmp_path / "istio-token").write_text(token)
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, tmp_path / "istio-token") as c:
        with pytest.raises(CaRefused, match="not accepted on the token CA port from demo/ztunnel") as info:
            await CaCertificateProvider(c, impersonate=True).fetch(CLIENT)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED

"""The token CA port on the Kubernetes store: istiod-lite verifies a pod's projected token with the API
server's TokenReview (the stand-in's) and applies the same pod rules as on the embedded store; a token the
API server does not vouch for is UNAUTHENTICATED, and an API server that cannot answer is UNAVAILABLE
(retryable), never a grant."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.ca.tokenreview import TOKEN_REVIEW_VERBS
from meshcore.aio.ca_client import CaCertificateProvider, CaRefused, CaUnavailable, token_ca_client
from meshcore.identity import SpiffeId
from meshcore.store.resource import ResourceRef
from meshcore.testing.kube_api import ThreadedKubeApi
from meshcore.testing.waits import eventually
from meshcore.tls import certs

WAYPOINT = SpiffeId("cluster.local", "demo", "waypoint")


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        for ns in ("istio-system", "demo"):
            server.call(server.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield server


@pytest.fixture
def plane(token_ca_plane: ControlPlane) -> ControlPlane:
    return token_ca_plane


async def waypoint_token(api: ThreadedKubeApi, cp: ControlPlane, path: Path, *, pod_uid: str | None = None) -> str:
    """A waypoint pod on the cluster (seen by istiod-lite's cache) and its projected token in ``path``."""
    stored = await asyncio.to_thread(api.call, api.server.put_object, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waypoint-x", "namespace": "demo"},
        "spec": {"nodeName": "node-1", "serviceAccountName": "waypoint", "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running"}})
    for _ in range(500):  # polled with a deadline: up to 10 s
        if cp.store.get(ResourceRef("Pod", "demo", "waypoint-x")) is not None:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("istiod-lite's cache never saw the pod")
    token = await asyncio.to_thread(api.call, api.server.issue_token, "demo", "waypoint", pod_name="waypoint-x",
                                    pod_uid=pod_uid or stored["metadata"]["uid"], node_name="node-1")
    await asyncio.to_thread(path.write_text, token)
    return str(token)


def reviews(api: ThreadedKubeApi) -> list[str]:
    return [r.verb for r in api.server.requests if r.resource == "tokenreviews"]


async def test_a_pod_gets_its_certificate_with_a_token_the_api_server_vouches_for(
    api: ThreadedKubeApi, plane: ControlPlane, tmp_path: Path
) -> None:
    await waypoint_token(api, plane, tmp_path / "istio-token")
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, tmp_path / "istio-token") as c:
        bundle = await CaCertificateProvider(c, impersonate=False).fetch(WAYPOINT)
    assert bundle.identity == WAYPOINT
    assert certs.is_issued_by(certs.load_chain(bundle.chain_pem[0])[0], plane.ca.signing_cert)
    assert reviews(api) == list(TOKEN_REVIEW_VERBS)  # one review per call, the verb the ClusterRole grants


async def test_a_token_the_api_server_does_not_vouch_for_is_unauthenticated(
    api: ThreadedKubeApi, plane: ControlPlane, tmp_path: Path
) -> None:
    token = await waypoint_token(api, plane, tmp_path / "istio-token")
    await asyncio.to_thread(api.call, api.server.revoke_token, token)
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, tmp_path / "istio-token") as c:
        with pytest.raises(CaRefused, match="did not authenticate the token") as info:
            await CaCertificateProvider(c, impersonate=False).fetch(WAYPOINT)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_an_api_server_that_cannot_answer_is_unavailable_and_grants_nothing(
    api: ThreadedKubeApi, plane: ControlPlane, tmp_path: Path
) -> None:
    await waypoint_token(api, plane, tmp_path / "istio-token")
    assert plane.elector is not None
    async with asyncio.timeout(10):  # the Lease is created: the next create is the TokenReview
        await plane.elector.wait_for(True)

    def roots_published() -> bool:  # the leader's root ConfigMap creates are done: they would take the fault
        return all(api.call(api.server.get_object, "ConfigMap", ns, "istio-ca-root-cert") for ns in ("istio-system", "demo"))

    await eventually(roots_published, "istio-ca-root-cert in every namespace")
    await asyncio.to_thread(api.call, api.server.fail_next, 503, 1, "create")
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, tmp_path / "istio-token") as c:
        provider = CaCertificateProvider(c, impersonate=False)
        with pytest.raises(CaUnavailable, match="could not be verified now"):  # the client retries with backoff
            await provider.fetch(WAYPOINT)
        assert (await provider.fetch(WAYPOINT)).identity == WAYPOINT  # the next call, answered, succeeds
    assert plane.metrics.get_sample_value("istiod_lite_ca_refusals_total", {"reason": "token_review_unavailable"}) == 1

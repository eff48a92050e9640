"""The token CA port end to end on loopback: istiod_lite's ControlPlane with a store holding a waypoint
pod; ``token_ca_client`` + ``CaCertificateProvider(impersonate=False)`` obtain the pod's identity with its
service-account token alone (no client certificate), and every other token or CSR is refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from ambientctl.cluster.deployments import DeploymentController
from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from meshcore import satoken
from meshcore.aio.ca_client import CaCertificateProvider, CaRefused, TokenUnavailable, token_ca_client
from meshcore.identity import SpiffeId
from meshcore.proto import discovery_pb2, discovery_pb2_grpc
from meshcore.satoken import BoundObject
from meshcore.store.resource import ResourceRef
from meshcore.testing import resources as r
from meshcore.tls import certs
from meshcore.tls.contexts import channel_credentials, channel_options

TD = "cluster.local"
WAYPOINT = SpiffeId(TD, "demo", "waypoint")
POD = "waypoint-x7k2p"


@pytest.fixture
async def plane(tmp_path: Path):
    (tmp_path / "state").mkdir(mode=0o700)
    cp = ControlPlane(
        IstiodConfig(
            state_dir=tmp_path / "state", xds_host="127.0.0.1", xds_port=0, monitoring_host="127.0.0.1",
            monitoring_port=0, token_ca_host="127.0.0.1", token_ca_port=0,
        )
    )
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


def _uid(cp: ControlPlane, name: str = POD) -> str:
    (result,) = cp.store.apply([r.pod(name, sa="waypoint", node="node-1")])
    return result.resource.uid


def _write_token(cp: ControlPlane, path: Path, *, uid: str, sa: str = "waypoint", issued: datetime | None = None,
                 pod: str = POD) -> Path:
    key = satoken.ensure_issuer_key(cp.config.state_dir)
    token = satoken.issue_token(
        key, namespace="demo", service_account=sa, pod=BoundObject(pod, uid), node=BoundObject("node-1"),
        now=issued or datetime.now(UTC),
    )
    satoken.write_private_file(path, token.encode())
    return path


def _refusals(cp: ControlPlane, reason: str) -> float:
    return cp.metrics.get_sample_value("istiod_lite_ca_refusals_total", {"reason": reason}) or 0.0


async def test_a_waypoint_pod_gets_its_certificate_with_its_token(plane: ControlPlane, tmp_path: Path):
    token = _write_token(plane, tmp_path / "istio-token", uid=_uid(plane))
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, token) as client:
        bundle = await CaCertificateProvider(client, impersonate=False).fetch(WAYPOINT)
    assert bundle.identity == WAYPOINT
    assert certs.is_issued_by(certs.load_chain(bundle.chain_pem[0])[0], plane.ca.signing_cert)
    assert plane.metrics.get_sample_value("citadel_server_success_cert_issuance_count_total") == 1.0


REFUSED = [
    ("a token for another service account than the pod's is refused", dict(sa="other"),
     grpc.StatusCode.UNAUTHENTICATED, "token_pod_mismatch", "runs as service account"),
    ("an expired token is refused", dict(issued=datetime.now(UTC) - timedelta(hours=3)),
     grpc.StatusCode.UNAUTHENTICATED, "token_expired", "expired"),
    ("a token of another pod uid (the pod was re-created) is refused", dict(uid="not-the-pod-uid"),
     grpc.StatusCode.UNAUTHENTICATED, "token_pod_gone", "re-created"),
]


@pytest.mark.parametrize(("token_args", "code", "reason", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
async def test_the_token_port_refuses(plane: ControlPlane, tmp_path: Path, token_args, code, reason, words):
    args = {"uid": _uid(plane), **token_args}
    token = _write_token(plane, tmp_path / "istio-token", **args)
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, token) as client:
        with pytest.raises(CaRefused, match=words) as info:
            await CaCertificateProvider(client, impersonate=False).fetch(SpiffeId(TD, "demo", args.get("sa", "waypoint")))
    assert info.value.code == code
    assert _refusals(plane, reason) == 1.0


async def test_the_token_of_a_deleted_pod_stops_working(plane: ControlPlane, tmp_path: Path):
    token = _write_token(plane, tmp_path / "istio-token", uid=_uid(plane))
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, token) as client:
        provider = CaCertificateProvider(client, impersonate=False)
        await provider.fetch(WAYPOINT)
        plane.store.delete([ResourceRef("Pod", "demo", POD)])
        with pytest.raises(CaRefused, match="does not exist") as info:
            await provider.fetch(WAYPOINT)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        _uid(plane)  # re-created under the same name: a new uid, and the old token still does not work
        with pytest.raises(CaRefused, match="re-created"):
            await provider.fetch(WAYPOINT)


async def test_a_csr_for_another_identity_is_refused(plane: ControlPlane, tmp_path: Path):
    token = _write_token(plane, tmp_path / "istio-token", uid=_uid(plane))
    other = SpiffeId(TD, "demo", "other")
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, token) as client:
        with pytest.raises(CaRefused, match="may only obtain") as info:
            await client.create_certificate(certs.build_csr(certs.generate_key(), other), None)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(CaRefused, match="not accepted on the token CA port") as info:
            await client.create_certificate(certs.build_csr(certs.generate_key(), other), other)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert _refusals(plane, "csr_identity_mismatch") == 1.0
    assert _refusals(plane, "token_impersonation") == 1.0


async def test_the_token_file_is_read_at_every_call(plane: ControlPlane, tmp_path: Path):
    uid = _uid(plane)
    token = _write_token(plane, tmp_path / "istio-token", uid=uid, issued=datetime.now(UTC) - timedelta(hours=3))
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, token) as client:
        provider = CaCertificateProvider(client, impersonate=False)
        with pytest.raises(CaRefused, match="expired"):
            await provider.fetch(WAYPOINT)
        _write_token(plane, token, uid=uid)  # the kubelet refreshed it
        assert (await provider.fetch(WAYPOINT)).identity == WAYPOINT


async def test_a_missing_token_file_is_a_retryable_local_error(plane: ControlPlane, tmp_path: Path):
    async with token_ca_client(f"127.0.0.1:{plane.token_ca_port}", plane.ca.roots_pem, tmp_path / "none") as client:
        with pytest.raises(TokenUnavailable, match="ISTIO_TOKEN_PATH"):
            await CaCertificateProvider(client, impersonate=False).fetch(WAYPOINT)


async def test_the_token_port_serves_no_xds(plane: ControlPlane):
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{plane.token_ca_port}", channel_credentials(plane.ca.roots_pem), options=channel_options()
    )
    try:
        stub = discovery_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.DeltaAggregatedResources(iter([discovery_pb2.DeltaDiscoveryRequest()]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await channel.close()


async def test_waypoint_pods_are_told_the_token_port(tmp_path: Path):
    cp = ControlPlane(
        IstiodConfig(
            state_dir=tmp_path, xds_host="127.0.0.1", xds_port=0, monitoring_host="127.0.0.1", monitoring_port=0,
            waypoint_xds_address="10.0.0.9:15012", waypoint_ca_address="10.0.0.9:15011",
        )
    )
    await cp.start()
    try:
        cp.store.apply([r.ns("demo"), r.waypoint("waypoint", "demo")])
        deployments = DeploymentController(cp.store)
        deadline = asyncio.get_running_loop().time() + 10
        pods = []
        while not pods and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            deployments.sync()  # the local cluster's Deployment controller makes the pod
            pods = cp.store.list("Pod", "demo")
        assert pods, "the waypoint controller's Deployment made no pod within 10 s"
        env = {e["name"]: e.get("value") for e in pods[0].spec["containers"][0]["env"]}
        assert (env["XDS_ADDRESS"], env["CA_ADDRESS"]) == ("10.0.0.9:15012", "10.0.0.9:15011")
    finally:
        await cp.stop(grace=0)

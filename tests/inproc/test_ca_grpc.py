"""istiod_lite's CA over real gRPC+TLS on loopback, and mesh mTLS handshakes with the certificates it issues."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry

from istiod_lite.ca.authority import CertificateAuthority, IssuedCredential
from istiod_lite.ca.service import CaServicer, add_to_server, server_credentials
from meshcore.aio.ca_client import (
    CaCertificateProvider,
    CaClient,
    CaRefused,
    CaResponseInvalid,
    CaUnavailable,
)
from meshcore.identity import SpiffeId
from meshcore.proto import ca_pb2, ca_pb2_grpc
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls import certs
from meshcore.tls.contexts import (
    channel_credentials,
    channel_options,
    client_context,
    server_context,
    verify_connection,
)
from meshcore.tls.errors import PeerVerificationError, UnexpectedIdentity, WrongTrustDomain

TD = "cluster.local"
ALICE = SpiffeId(TD, "default", "alice")  # runs on node-a
BOB = SpiffeId(TD, "default", "bob")  # runs on node-b
PODS = {"node-a": frozenset({ALICE}), "node-b": frozenset({BOB})}
DEADLINE = 10


@dataclass
class CaEnv:
    ca: CertificateAuthority
    target: str
    registry: CollectorRegistry
    node_a: IssuedCredential

    def client(self, key_pem: str, chain_pem) -> CaClient:
        return CaClient(self.target, self.ca.roots_pem, key_pem, chain_pem)

    def stub_channel(self, key_pem: str | None = None, chain_pem=None) -> grpc.aio.Channel:
        creds = channel_credentials(self.ca.roots_pem, key_pem, chain_pem)
        return grpc.aio.secure_channel(self.target, creds, options=channel_options())

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels or None) or 0.0


def _new_ca() -> CertificateAuthority:
    now = datetime.now(UTC)
    key = certs.generate_key()
    root = certs.build_ca_certificate(
        key, common_name="test root", organization=TD, not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=30),
    )
    return CertificateAuthority(key, root, TD)


@contextlib.asynccontextmanager
async def _serve(servicer, ca: CertificateAuthority, *, require_client_auth: bool = True) -> AsyncIterator[str]:
    server = grpc.aio.server()
    try:
        if isinstance(servicer, CaServicer):
            add_to_server(server, servicer)
        else:
            ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, server)
        cred = ca.issue_server_cert([], ["127.0.0.1"], datetime.now(UTC))
        port = server.add_secure_port(
            "127.0.0.1:0", server_credentials(ca, cred, require_client_auth=require_client_auth)
        )
        await server.start()
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def env() -> AsyncIterator[CaEnv]:
    ca = _new_ca()
    registry = CollectorRegistry()
    servicer = CaServicer(ca, lambda node: PODS.get(node, frozenset()), registry=registry)
    async with _serve(servicer, ca) as target:
        yield CaEnv(ca, target, registry, ca.issue_node_credential("node-a", datetime.now(UTC)))


async def _raw_call(env: CaEnv, csr: str, impersonate: str | None = None, cred: IssuedCredential | None = None):
    cred = cred or env.node_a
    metadata = struct_pb2.Struct()
    if impersonate:
        metadata.update({"ImpersonatedIdentity": impersonate})
    async with env.stub_channel(cred.key_pem, cred.chain_pem) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        return await stub.CreateCertificate(
            ca_pb2.IstioCertificateRequest(csr=csr, metadata=metadata), timeout=DEADLINE
        )


# --- the CA service -------------------------------------------------------------------------------


async def test_node_agent_gets_a_certificate_for_a_pod_on_its_node(env):
    async with env.client(env.node_a.key_pem, env.node_a.chain_pem) as client:
        bundle = await CaCertificateProvider(client).fetch(ALICE)
    assert bundle.identity == ALICE
    assert bundle.roots_pem == env.ca.roots_pem
    certs.load_chain(bundle.chain_pem[0])[0].verify_directly_issued_by(env.ca.signing_cert)
    assert bundle.not_after - bundle.not_before == timedelta(hours=24, minutes=1)  # 24h + clock skew backdate
    assert env.metric("citadel_server_csr_count_total") == 1
    assert env.metric("citadel_server_success_cert_issuance_count_total") == 1


async def test_node_agent_is_refused_a_pod_identity_of_another_node(env):
    async with env.client(env.node_a.key_pem, env.node_a.chain_pem) as client:
        with pytest.raises(CaRefused) as exc:
            await CaCertificateProvider(client).fetch(BOB)
    assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert f"no pod with identity {BOB} on node node-a" in exc.value.message
    assert env.metric("istiod_lite_ca_refusals_total", reason="identity_not_on_node") == 1
    assert env.metric("citadel_server_csr_count_total") == 1
    assert env.metric("citadel_server_success_cert_issuance_count_total") == 0


async def test_garbage_csr_is_invalid_argument(env):
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _raw_call(env, "this is not a CSR", ALICE.uri)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert env.metric("citadel_server_csr_parsing_err_count_total") == 1
    assert env.metric("istiod_lite_ca_refusals_total", reason="csr_parse_error") == 1


async def test_csr_with_an_extra_san_is_refused(env):
    key = certs.generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE.uri), x509.DNSName("evil.example")]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _raw_call(env, csr, ALICE.uri)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one URI SAN" in exc.value.details()
    assert env.metric("istiod_lite_ca_refusals_total", reason="csr_san_invalid") == 1
    assert env.metric("citadel_server_success_cert_issuance_count_total") == 0


async def test_a_workload_renews_its_own_identity_but_cannot_impersonate(env):
    async with env.client(env.node_a.key_pem, env.node_a.chain_pem) as client:
        alice = await CaCertificateProvider(client).fetch(ALICE)
    async with env.client(alice.key_pem, alice.chain_pem) as client:
        renewed = await CaCertificateProvider(client, impersonate=False).fetch(ALICE)
        assert renewed.identity == ALICE
        with pytest.raises(CaRefused) as exc:
            await CaCertificateProvider(client).fetch(ALICE)
    assert exc.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert env.metric("istiod_lite_ca_refusals_total", reason="not_node_account") == 1


async def test_without_client_certificate_the_handshake_is_refused(env):
    async with env.stub_channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(
                ca_pb2.IstioCertificateRequest(csr="x"), timeout=DEADLINE
            )
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert env.metric("citadel_server_csr_count_total") == 0


async def test_when_client_certs_are_optional_a_call_without_one_is_unauthenticated():
    ca = _new_ca()
    registry = CollectorRegistry()
    servicer = CaServicer(ca, lambda node: PODS.get(node, frozenset()), registry=registry)
    async with _serve(servicer, ca, require_client_auth=False) as target:
        env = CaEnv(ca, target, registry, ca.issue_node_credential("node-a", datetime.now(UTC)))
        csr = certs.build_csr(certs.generate_key(), ALICE)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async with env.stub_channel() as channel:
                await ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(
                    ca_pb2.IstioCertificateRequest(csr=csr), timeout=DEADLINE
                )
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert env.metric("citadel_server_authentication_failure_count_total") == 1
    assert env.metric("istiod_lite_ca_refusals_total", reason="unauthenticated") == 1


async def test_a_client_certificate_from_another_ca_is_refused_at_the_handshake(env):
    foreign = FakeCa().issue(SpiffeId(TD, "istio-system", "ztunnel"))
    async with env.client(foreign.key_pem, foreign.chain_pem) as client:
        with pytest.raises(CaUnavailable):
            await CaCertificateProvider(client).fetch(ALICE)
    assert env.metric("citadel_server_success_cert_issuance_count_total") == 0


async def test_a_failing_registry_lookup_is_internal_and_the_service_keeps_serving():
    ca = _new_ca()
    calls = []

    def flaky_on_node(node: str) -> frozenset[SpiffeId]:
        calls.append(node)
        if len(calls) == 1:
            raise RuntimeError("registry index not ready")
        return PODS.get(node, frozenset())

    servicer = CaServicer(ca, flaky_on_node, registry=CollectorRegistry())
    node = ca.issue_node_credential("node-a", datetime.now(UTC))
    async with _serve(servicer, ca) as target:
        async with CaClient(target, ca.roots_pem, node.key_pem, node.chain_pem) as client:
            with pytest.raises(CaRefused) as exc:
                await CaCertificateProvider(client).fetch(ALICE)
            assert exc.value.code == grpc.StatusCode.INTERNAL
            assert "see istiod_lite logs" in exc.value.message
            assert (await CaCertificateProvider(client).fetch(ALICE)).identity == ALICE


class _WrongIdentityCa(ca_pb2_grpc.IstioCertificateServiceServicer):
    """A misbehaving CA that signs every CSR for BOB, whatever was asked."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    async def CreateCertificate(self, request, context):  # noqa: N802
        chain = self.ca.sign_workload(request.csr, BOB, 0, datetime.now(UTC))
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)


async def test_client_refuses_a_certificate_for_another_identity_than_requested():
    ca = _new_ca()
    node = ca.issue_node_credential("node-a", datetime.now(UTC))
    async with _serve(_WrongIdentityCa(ca), ca) as target:
        async with CaClient(target, ca.roots_pem, node.key_pem, node.chain_pem) as client:
            with pytest.raises(CaResponseInvalid, match="issued a certificate for .*bob.*asked for .*alice"):
                await CaCertificateProvider(client).fetch(ALICE)


# --- mesh mTLS with the issued certificates -------------------------------------------------------


@dataclass
class TlsServer:
    port: int
    outcomes: asyncio.Queue  # SpiffeId of each verified client, or the PeerVerificationError
    sni: list


@contextlib.asynccontextmanager
async def _tls_server(bundle: certs.CertBundle) -> AsyncIterator[TlsServer]:
    outcomes: asyncio.Queue = asyncio.Queue()
    sni: list = []
    ctx = server_context(bundle)
    ctx.sni_callback = lambda sslobj, name, _ctx: sni.append(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = verify_connection(writer.get_extra_info("ssl_object"), trust_domain=TD)
        except PeerVerificationError as e:
            outcomes.put_nowait(e)
            writer.close()
            return
        outcomes.put_nowait(peer)
        try:
            writer.write(await reader.readexactly(4))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield TlsServer(server.sockets[0].getsockname()[1], outcomes, sni)
    finally:
        server.close()
        await server.wait_closed()


async def _connect(port: int, bundle: certs.CertBundle):
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=client_context(bundle), server_hostname=""), DEADLINE
    )


@pytest.fixture
async def issued(env) -> dict[SpiffeId, certs.CertBundle]:
    async with env.client(env.node_a.key_pem, env.node_a.chain_pem) as client:
        alice = await CaCertificateProvider(client).fetch(ALICE)
    node_b = env.ca.issue_node_credential("node-b", datetime.now(UTC))
    async with env.client(node_b.key_pem, node_b.chain_pem) as client:
        bob = await CaCertificateProvider(client).fetch(BOB)
    return {ALICE: alice, BOB: bob}


async def test_mtls_between_issued_certificates_verifies_both_identities(issued):
    async with _tls_server(issued[BOB]) as server:
        reader, writer = await _connect(server.port, issued[ALICE])
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            assert verify_connection(ssl_object, expected=[BOB]) == BOB
            assert ssl_object.version() == "TLSv1.3"
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), DEADLINE) == b"ping"
        finally:
            writer.close()
        assert await asyncio.wait_for(server.outcomes.get(), DEADLINE) == ALICE
        assert server.sni == [None]


async def test_client_refuses_a_server_with_an_unexpected_identity(issued):
    async with _tls_server(issued[BOB]) as server:
        _, writer = await _connect(server.port, issued[ALICE])
        try:
            with pytest.raises(UnexpectedIdentity):
                verify_connection(writer.get_extra_info("ssl_object"), expected=[ALICE])
        finally:
            writer.close()


async def test_server_refuses_a_client_of_another_trust_domain_under_the_same_root(issued):
    # Same root as the server's trust anchors, so OpenSSL accepts the chain; only SPIFFE checks catch it.
    ca = FakeCa()
    server_bundle = ca.issue(BOB)
    intruder = ca.issue(SpiffeId("evil.local", "default", "alice"))
    async with _tls_server(server_bundle) as server:
        _, writer = await _connect(server.port, intruder)
        try:
            outcome = await asyncio.wait_for(server.outcomes.get(), DEADLINE)
        finally:
            writer.close()
    assert isinstance(outcome, WrongTrustDomain)


@pytest.mark.parametrize("client", ["foreign", "anonymous"], ids=["a client from another root", "a client without certificate"])
async def test_server_handshake_fails_without_a_mesh_client_certificate(issued, client):
    async with _tls_server(issued[BOB]) as server:
        if client == "foreign":
            ctx = client_context(FakeCa().issue(ALICE))
            ctx.load_verify_locations(cadata=issued[BOB].roots_pem)  # the client trusts the server; not vice versa
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.load_verify_locations(cadata=issued[BOB].roots_pem)
            ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, server_hostname=""), DEADLINE
        )
        try:
            # TLS 1.3: the client finishes first; the server's alert arrives on the first read.
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                writer.write(b"ping")
                assert await asyncio.wait_for(reader.read(4), DEADLINE) == b""
        finally:
            writer.close()
        assert server.outcomes.empty()

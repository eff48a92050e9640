"""Probes against istiod_lite's CA (IstioCertificateService/CreateCertificate) on 15012: a real ControlPlane,
gRPC over mTLS on 127.0.0.1. Each test replays a probe that once misbehaved:
- ``validity_duration = 2**62`` answered INTERNAL with an OverflowError traceback;
- a 150 MB CSR was received and parsed (RSS 68 -> 425 MB) before being refused;
- TLS refusals on 15012 (no client certificate, one from a foreign CA) were counted nowhere.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from istiod_lite.app import ControlPlane
from istiod_lite.ca.authority import CertificateAuthority, IssuedCredential
from istiod_lite.ca.nodeauth import MAX_CSR_BYTES
from istiod_lite.config import IstiodConfig
from meshcore.identity import SpiffeId
from meshcore.proto import ca_pb2, ca_pb2_grpc
from meshcore.testing.h2attack import rss_bytes
from meshcore.tls import certs
from meshcore.tls.contexts import channel_credentials, channel_options

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 30.0
MiB = 1 << 20
ZTUNNEL = SpiffeId("cluster.local", "istio-system", "ztunnel")

# Sends one CreateCertificate with a CSR of N MiB from its own process (so the bytes built here do not
# count against the server's memory), prints the status code name.
BIG_CSR_SENDER = textwrap.dedent(
    """
    import asyncio, pathlib, sys
    import grpc
    from meshcore.proto import ca_pb2, ca_pb2_grpc
    from meshcore.tls.contexts import channel_credentials, channel_options

    async def main(target, mib, cred_dir):
        d = pathlib.Path(cred_dir)
        creds = channel_credentials(
            (d / "root-cert.pem").read_text(), (d / "key.pem").read_text(), (d / "cert-chain.pem").read_text()
        )
        csr = "-----BEGIN CERTIFICATE REQUEST-----\\n" + "QUFB" * (mib * 262144) + "\\n-----END CERTIFICATE REQUEST-----\\n"
        async with grpc.aio.secure_channel(target, creds, options=channel_options()) as channel:
            try:
                await ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(
                    ca_pb2.IstioCertificateRequest(csr=csr), timeout=60
                )
                print("OK", flush=True)
            except grpc.aio.AioRpcError as e:
                print(e.code().name, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


class Plane:
    def __init__(self, cp: ControlPlane, cred: IssuedCredential, cred_dir: Path) -> None:
        self.cp = cp
        self.cred = cred
        self.cred_dir = cred_dir
        self.target = f"127.0.0.1:{cp.xds_port}"

    def metric(self, name: str, **labels: str) -> float:
        return self.cp.metrics.get_sample_value(name, labels) or 0.0

    def channel(self, key_pem: str | None = None, chain_pem: tuple[str, ...] | None = None) -> grpc.aio.Channel:
        if key_pem is None:
            key_pem, chain_pem = self.cred.key_pem, self.cred.chain_pem
        creds = channel_credentials(self.cp.ca.roots_pem, key_pem, chain_pem)
        return grpc.aio.secure_channel(self.target, creds, options=channel_options())


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    state = tmp_path / "state"
    state.mkdir()
    cp = ControlPlane(
        IstiodConfig(
            state_dir=state, xds_host="127.0.0.1", xds_port=0, monitoring_host="127.0.0.1", monitoring_port=0
        )
    )
    await cp.start()
    cred = cp.ca.issue_node_credential("node-1", datetime.now(UTC))
    cred_dir = tmp_path / "cred"
    cred_dir.mkdir()
    (cred_dir / "key.pem").write_text(cred.key_pem)
    (cred_dir / "cert-chain.pem").write_text("".join(cred.chain_pem))
    (cred_dir / "root-cert.pem").write_text(cred.roots_pem)
    try:
        yield Plane(cp, cred, cred_dir)
    finally:
        await cp.stop(grace=0)


async def create(plane: Plane, csr: str, validity: int = 0, channel: grpc.aio.Channel | None = None):
    async with channel or plane.channel() as ch:
        return await ca_pb2_grpc.IstioCertificateServiceStub(ch).CreateCertificate(
            ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=validity, metadata=struct_pb2.Struct()),
            timeout=DEADLINE,
        )


async def test_a_validity_of_2_to_the_62_is_invalid_argument_and_counted(plane: Plane) -> None:
    csr = certs.build_csr(certs.generate_key(), ZTUNNEL)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await create(plane, csr, validity=2**62)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "validity_duration 4611686018427387904 s is outside" in (exc.value.details() or "")
    assert plane.metric("istiod_lite_ca_refusals_total", reason="validity_invalid") == 1
    # The same caller with a sane validity is served: the refusal took nothing else down.
    response = await create(plane, csr, validity=3600)
    assert len(response.cert_chain) == 2


async def test_a_csr_over_the_size_limit_is_refused_before_parsing(plane: Plane) -> None:
    oversized = "-----BEGIN CERTIFICATE REQUEST-----\n" + "QUFB" * (MAX_CSR_BYTES // 4 + 1) + "\n"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await create(plane, oversized)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_CSR_BYTES} are accepted" in (exc.value.details() or "")
    assert plane.metric("istiod_lite_ca_refusals_total", reason="csr_too_large") == 1
    assert plane.metric("citadel_server_csr_parsing_err_count_total") == 0  # never handed to the parser


async def test_a_150_mib_csr_is_refused_without_being_held_in_memory(plane: Plane) -> None:
    before = rss_bytes()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BIG_CSR_SENDER, plane.target, "150", str(plane.cred_dir),
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out.decode().strip() == "RESOURCE_EXHAUSTED"
    grown = rss_bytes() - before
    assert grown < 32 * MiB, f"server RSS grew by {grown // MiB} MiB for a refused request"
    assert plane.metric("citadel_server_csr_count_total") == 0  # refused by gRPC before our handler
    response = await create(plane, certs.build_csr(certs.generate_key(), ZTUNNEL))  # still serving
    assert response.cert_chain


def _foreign_credential() -> IssuedCredential:
    now = datetime.now(UTC)
    key = certs.generate_key()
    root = certs.build_ca_certificate(
        key, common_name="foreign root", organization="cluster.local", not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=2),
    )
    return CertificateAuthority(key, root, "cluster.local").issue_node_credential("node-1", now)


async def test_tls_refusals_on_the_port_are_counted(plane: Plane) -> None:
    csr = certs.build_csr(certs.generate_key(), ZTUNNEL)
    handshakes = plane.metric("istiod_lite_grpc_tls_handshakes_total")
    verified = plane.metric("istiod_lite_grpc_tls_connections_verified_total")

    foreign = _foreign_credential()
    no_cert = grpc.aio.secure_channel(
        plane.target, channel_credentials(plane.cp.ca.roots_pem), options=channel_options()
    )
    for channel in (no_cert, plane.channel(foreign.key_pem, foreign.chain_pem)):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await create(plane, csr, channel=channel)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE

    refused_handshakes = plane.metric("istiod_lite_grpc_tls_handshakes_total") - handshakes
    assert refused_handshakes >= 2
    assert plane.metric("istiod_lite_grpc_tls_connections_verified_total") == verified
    assert plane.metric("citadel_server_csr_count_total") == 0

    await create(plane, csr)
    assert plane.metric("istiod_lite_grpc_tls_handshakes_total") - handshakes == refused_handshakes + 1
    assert plane.metric("istiod_lite_grpc_tls_connections_verified_total") == verified + 1

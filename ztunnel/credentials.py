"""How ztunnel authenticates to istiod_lite: the node credential (local cluster) or its service-account token.

Role: ``ca_client_for(config)`` builds the CA client the ``SecretManager`` fetches workload certificates
through, and ``TokenXdsSource`` is the xDS connection of token mode. Selected by ``CA_AUTH``:

* ``node-credential`` (default, the local cluster): ``NODE_CREDENTIAL_DIR`` holds a certificate istiod_lite
  issued for this node; it is the TLS client certificate on 15012 for both xDS and the CA, and the CA reads
  the node from it.
* ``token`` (Kubernetes, as Istio's ztunnel): no pre-shared credential. Every CA call goes to the token CA
  port (``CA_ADDRESS``, 15011) with ``authorization: Bearer <projected token>`` read from
  ``ISTIO_TOKEN_PATH`` at that call (the kubelet rotates the file) and ``ImpersonatedIdentity`` naming the
  pod. istiod_lite verifies the token (TokenReview), binds it to this node through the token's pod
  claims and applies the same node authorization as for a node credential. The xDS port (15012) wants a
  TLS client certificate, so ztunnel first obtains its own (``spiffe://<td>/ns/istio-system/sa/ztunnel``)
  the same way, without impersonation, kept renewed at half-life by its own ``SecretManager``; each
  xDS (re)connection presents the current one. istiod is verified with ``CA_ROOT_CA``.

Invariants: the token is never logged nor cached; a missing/unreadable token file or an unreachable CA is
retried with backoff (``TokenUnavailable``/``CaUnavailable``), never a reason to fall back to anything
weaker; xDS never connects without a certificate from the CA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import structlog

from meshcore.aio.ca_client import CaCertificateProvider, CaClient, load_node_credential, token_ca_client
from meshcore.aio.secrets import CertificateUnavailable, SecretManager, SecretManagerClosed
from meshcore.aio.state_cell import StateCell
from meshcore.aio.xds_client import XdsClient, run_setting_ready
from meshcore.identity import SpiffeId
from meshcore.state import ProxyState
from meshcore.tls import certs
from meshcore.tls.contexts import channel_credentials, channel_options
from ztunnel.config import CaAuth, ZtunnelConfig

log = structlog.get_logger("ztunnel.credentials")

RETRY_MIN_SECONDS = 0.5  # first wait after a failed own-certificate fetch when the manager gives no time
RETRY_MAX_SECONDS = 30.0


class CredentialError(Exception):
    """The configured credential cannot be used; the message names the setting to fix."""


def own_identity(config: ZtunnelConfig) -> SpiffeId:
    """ztunnel's own identity in token mode: its pod's service account (``istio-system/ztunnel``)."""
    return SpiffeId(config.trust_domain, config.pod_namespace, config.service_account)


def node_credential(config: ZtunnelConfig, user: str) -> tuple[str, str, str]:
    """``(key, chain, roots)`` from ``NODE_CREDENTIAL_DIR``; ``CredentialError`` saying what to do."""
    directory = config.node_credential_dir
    if directory is None:
        raise CredentialError(f"{user} needs NODE_CREDENTIAL_DIR (key.pem, cert-chain.pem, root-cert.pem)")
    try:
        return load_node_credential(directory)
    except (OSError, ValueError) as exc:
        raise CredentialError(
            f"NODE_CREDENTIAL_DIR={directory}: cannot load the node credential: {exc} "
            "(write one with `istiod-lite node-credential NODE --out DIR`)"
        ) from exc


def read_root(path: Path) -> str:
    """The mesh root(s) that verify istiod (``CA_ROOT_CA``), checked to parse."""
    try:
        roots = path.read_text(encoding="ascii")
        certs.load_chain(roots)
    except (OSError, ValueError) as exc:
        raise CredentialError(
            f"CA_ROOT_CA={path}: cannot read the mesh root certificate: {exc} (mount the istio-ca-root-cert "
            "ConfigMap there)"
        ) from exc
    return roots


def ca_client_for(config: ZtunnelConfig) -> CaClient:
    """The client of the CA for workload certificates, as ``CA_AUTH`` says (see module doc)."""
    assert config.ca_address is not None  # parse_config guarantees a CA unless FAKE_CA
    if config.ca_auth is CaAuth.TOKEN:
        return token_ca_client(config.ca_address, read_root(config.ca_root_path), config.token_path)
    key, chain, roots = node_credential(config, "CA_ADDRESS")
    return CaClient(config.ca_address, roots, key, chain)


class TokenXdsSource:
    """Delta ADS to istiod on 15012 with ztunnel's own certificate (fetched over the token CA port).

    ``run()`` waits for the first certificate (retrying with capped backoff while the CA or the token is
    not there yet), then runs the ``XdsClient``; the client asks for credentials at every connection
    attempt, so a renewed certificate is used from the next reconnect on.
    """

    def __init__(
        self,
        target: str,
        ca: CaClient,
        identity: SpiffeId,
        *,
        node_id: str,
        metadata: Mapping[str, Any],
        cell: StateCell[ProxyState],
        cluster_id: str,
        ttl_seconds: int,
    ) -> None:
        self.target = target
        self.identity = identity
        self.ready = asyncio.Event()
        self.secrets = SecretManager(CaCertificateProvider(ca, impersonate=False, ttl_seconds=ttl_seconds))
        self._xds_args = (node_id, metadata, cell, cluster_id)
        self._client: XdsClient[ProxyState] | None = None
        self._closed = asyncio.Event()
        self._bundle: certs.CertBundle | None = None

    @property
    def client(self) -> XdsClient[ProxyState] | None:
        return self._client

    async def run(self) -> None:
        try:
            self._bundle = await self._first_certificate()
        except SecretManagerClosed:
            return
        if self._bundle is None:  # closed while waiting
            return
        node_id, metadata, cell, cluster_id = self._xds_args
        self._client = XdsClient(
            self.target, self._credentials, node_id, metadata, cell, cluster_id=cluster_id,
            channel_options=channel_options(),
        )
        await run_setting_ready(self._client, self.ready)

    def close(self) -> None:
        self._closed.set()
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        self.close()
        await self.secrets.close()

    def _credentials(self) -> grpc.ChannelCredentials:
        current = self.secrets.find_certificate(self.identity)
        if current is not None:
            self._bundle = current
        bundle = self._bundle  # an expired one fails the handshake: retried with backoff until renewed
        assert bundle is not None  # run() creates the client only after the first certificate
        return channel_credentials(bundle.roots_pem, bundle.key_pem, bundle.chain_pem)

    async def _first_certificate(self) -> certs.CertBundle | None:
        delay = RETRY_MIN_SECONDS
        while not self._closed.is_set():
            try:
                bundle = await self.secrets.fetch_certificate(self.identity)
            except CertificateUnavailable as exc:
                log.warning("own certificate for xDS not available yet; retrying", identity=str(self.identity),
                            error=str(exc), retry_in_s=delay)
                closed = asyncio.ensure_future(self._closed.wait())
                try:
                    await asyncio.wait([closed], timeout=delay)
                finally:
                    closed.cancel()
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            log.info("own certificate for xDS obtained", identity=str(self.identity))
            return bundle
        return None


def token_xds_source(config: ZtunnelConfig, ca: CaClient, cell: StateCell[ProxyState],
                     node_id: str, metadata: Mapping[str, Any]) -> TokenXdsSource:
    assert config.xds_address is not None
    return TokenXdsSource(
        config.xds_address, ca, own_identity(config), node_id=node_id, metadata=metadata, cell=cell,
        cluster_id=config.cluster_id, ttl_seconds=config.secret_ttl_seconds,
    )


"""TLS contexts per local identity, made from the SecretManager's certificates and kept current.

``client(identity)`` is what the HBONE pool dials with; ``server(identity)`` is what a workload's 15008
listener terminates with. Both wait for the identity's certificate (``fetch_certificate``) the first
time. A context is cached per identity and, when the SecretManager renews the certificate, reloaded
*in place* (``load_cert_chain`` on the same ``SSLContext``): a listener holding the context presents the
new certificate on its next handshake without being rebuilt; live connections keep theirs. Roots are
added, never removed, by a reload (OpenSSL cannot forget a loaded root): a root rotation is complete
only after a restart. ``run()`` follows ``SecretManager.changed``; ``refresh()`` does one pass.
"""

from __future__ import annotations

import ssl

import structlog

from meshcore.aio.secrets import SecretManager
from meshcore.identity import SpiffeId
from meshcore.tls.certs import CertBundle
from meshcore.tls.contexts import client_context, load_key_and_chain, server_context

log = structlog.get_logger("meshcore.tls")


class _Cached:
    __slots__ = ("context", "roots", "serial")

    def __init__(self, context: ssl.SSLContext, bundle: CertBundle) -> None:
        self.context = context
        self.serial = bundle.serial
        self.roots = bundle.roots_pem


class TlsContexts:
    """Client and server contexts for the identities of local workloads (see the module docstring)."""

    def __init__(self, secrets: SecretManager) -> None:
        self._secrets = secrets
        self._client: dict[SpiffeId, _Cached] = {}
        self._server: dict[SpiffeId, _Cached] = {}

    async def client(self, identity: SpiffeId) -> ssl.SSLContext:
        """The context to originate mTLS as ``identity`` (waits for its first certificate)."""
        bundle = await self._secrets.fetch_certificate(identity)
        cached = self._client.get(identity)
        if cached is None or cached.serial != bundle.serial:
            # A fresh context per certificate: a pool's connections keep theirs, new dials use this one.
            cached = self._client[identity] = _Cached(client_context(bundle), bundle)
        return cached.context

    async def server(self, identity: SpiffeId) -> ssl.SSLContext:
        """The context to terminate mTLS as ``identity``; the same object for the identity's lifetime."""
        bundle = await self._secrets.fetch_certificate(identity)
        cached = self._server.get(identity)
        if cached is None:
            cached = self._server[identity] = _Cached(server_context(bundle), bundle)
        elif cached.serial != bundle.serial:
            self._reload(cached, bundle)
        return cached.context

    def forget(self, identity: SpiffeId) -> None:
        """Drop the contexts of an identity no longer served here."""
        self._client.pop(identity, None)
        self._server.pop(identity, None)

    def refresh(self) -> int:
        """Reload every server context whose certificate was renewed; drop those of forgotten identities.
        Returns how many were reloaded."""
        reloaded = 0
        managed = self._secrets.identities
        for identity in list(self._server):
            if identity not in managed:
                self.forget(identity)
                continue
            bundle = self._secrets.find_certificate(identity)
            cached = self._server[identity]
            if bundle is not None and bundle.serial != cached.serial:
                self._reload(cached, bundle)
                reloaded += 1
        for identity in list(self._client):
            if identity not in managed:
                self._client.pop(identity, None)
        return reloaded

    async def run(self) -> None:
        """Refresh whenever the SecretManager reports a change; until cancelled."""
        version = self._secrets.version
        while True:
            version = await self._secrets.changed(version)
            self.refresh()

    def _reload(self, cached: _Cached, bundle: CertBundle) -> None:
        if bundle.roots_pem != cached.roots:
            cached.context.load_verify_locations(cadata=bundle.roots_pem)
            cached.roots = bundle.roots_pem
        load_key_and_chain(cached.context, bundle.key_pem, bundle.chain_pem)
        log.info(
            "serving a renewed certificate", identity=str(bundle.identity), serial=f"{bundle.serial:x}",
            not_after=bundle.not_after.isoformat(),
        )
        cached.serial = bundle.serial

"""TLS configuration for mesh mTLS (HBONE on 15008) and for gRPC to istiod_lite (15012).

``client_context`` / ``server_context`` build ``ssl.SSLContext`` objects as ztunnel configures rustls:
TLS 1.3 only, ALPN ``h2``, a certificate required from both sides, trust = mesh roots only, no session
resumption. Hostname checks are off: mesh peers are identified by SPIFFE URI SAN, not DNS. Users MUST:

* send no SNI (ztunnel does not): ``wrap_socket``/``wrap_bio(server_hostname=None)``; with asyncio
  ``open_connection(..., server_hostname="")``, since asyncio replaces None by the host it dials, and
* call ``verify_connection`` right after the handshake, with the expected identities (client side) or the
  trust domain (server side). Until then the peer is only known to hold *some* mesh certificate.

Private keys: ``ssl`` cannot load a key from memory, so the key is written to a 0600 file inside a fresh
0700 directory (on ``/dev/shm`` when available, so it never reaches a disk), loaded, and deleted before
the builder returns. Known deviation: Python 3.11 cannot restrict TLS 1.3 cipher suites, so OpenSSL's
defaults (AES-GCM and ChaCha20-Poly1305) stay enabled where ztunnel allows AES-GCM only.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence

import grpc

from meshcore.identity import SpiffeId
from meshcore.tls.certs import CertBundle
from meshcore.tls.errors import AlpnNotNegotiated, CertificateError
from meshcore.tls.verify import verify_peer

ALPN_H2 = "h2"

ISTIOD_SAN = "istiod.istio-system.svc"
"""The DNS name istiod_lite's serving certificate carries and gRPC clients verify (Istio's name)."""

# Memory-backed when present: the key file never reaches a disk.
_KEY_DIRS = ("/dev/shm",)


def client_context(bundle: CertBundle) -> ssl.SSLContext:
    """Context for originating mesh mTLS: send no SNI (see module doc), then ``verify_connection``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # identity is the SPIFFE URI SAN, checked by verify_connection
    _configure(ctx, bundle)
    return ctx


def server_context(bundle: CertBundle) -> ssl.SSLContext:
    """Context for terminating mesh mTLS; clients without a mesh certificate fail the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0  # no resumption: every connection presents and verifies a certificate
    _configure(ctx, bundle)
    return ctx


def verify_connection(
    ssl_object: ssl.SSLObject | ssl.SSLSocket,
    *,
    expected: Sequence[SpiffeId] | None = None,
    trust_domain: str | None = None,
    require_h2: bool = True,
) -> SpiffeId:
    """The peer's identity on a completed handshake; raises ``PeerVerificationError`` if unacceptable.

    For asyncio streams pass ``writer.get_extra_info("ssl_object")``. The chain was verified by OpenSSL;
    this checks ALPN and the SPIFFE identity (see ``meshcore.tls.verify.verify_peer``).
    """
    if require_h2 and ssl_object.selected_alpn_protocol() != ALPN_H2:
        raise AlpnNotNegotiated(ssl_object.selected_alpn_protocol())
    return verify_peer(ssl_object.getpeercert(binary_form=True), expected=expected, trust_domain=trust_domain)


def _configure(ctx: ssl.SSLContext, bundle: CertBundle) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.set_alpn_protocols([ALPN_H2])
    try:
        ctx.load_verify_locations(cadata=bundle.roots_pem)
    except ssl.SSLError as e:
        raise CertificateError(f"mesh roots do not load into OpenSSL: {e}") from e
    load_key_and_chain(ctx, bundle.key_pem, bundle.chain_pem)


def load_key_and_chain(ctx: ssl.SSLContext, key_pem: str, chain_pem: Sequence[str]) -> None:
    """Load a PEM key and chain (leaf first) into ``ctx`` via a short-lived 0600 file (see module doc)."""
    base = next((d for d in _KEY_DIRS if os.path.isdir(d) and os.access(d, os.W_OK)), None)
    with tempfile.TemporaryDirectory(prefix="mesh-tls-", dir=base) as tmp:  # mkdtemp: mode 0700
        key_path = os.path.join(tmp, "key.pem")
        chain_path = os.path.join(tmp, "chain.pem")
        _write_private(key_path, key_pem)
        _write_private(chain_path, "".join(_with_newline(p) for p in chain_pem))
        try:
            ctx.load_cert_chain(chain_path, key_path)
        except ssl.SSLError as e:
            raise CertificateError(f"certificate chain and key do not load into OpenSSL: {e}") from e
        finally:
            os.unlink(key_path)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def _with_newline(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"


# --- gRPC to istiod_lite (xDS and CA on 15012) ----------------------------------------------------


def channel_credentials(
    roots_pem: str, key_pem: str | None = None, chain_pem: str | Sequence[str] | None = None
) -> grpc.ChannelCredentials:
    """gRPC TLS credentials trusting the mesh roots; with key and chain, also a client certificate.

    Use with ``channel_options()`` so the server is checked against ``ISTIOD_SAN`` whatever address
    the channel dials.
    """
    if (key_pem is None) != (chain_pem is None):
        raise ValueError("pass both key_pem and chain_pem for a client certificate, or neither")
    chain = None
    if chain_pem is not None:
        chain = chain_pem if isinstance(chain_pem, str) else "".join(_with_newline(p) for p in chain_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=roots_pem.encode("ascii"),
        private_key=key_pem.encode("ascii") if key_pem is not None else None,
        certificate_chain=chain.encode("ascii") if chain is not None else None,
    )


def channel_options(server_name: str = ISTIOD_SAN) -> list[tuple[str, str]]:
    """Channel options that verify the server certificate against ``server_name``."""
    return [("grpc.ssl_target_name_override", server_name)]

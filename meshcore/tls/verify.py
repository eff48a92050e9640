"""Peer identity verification after a mesh mTLS handshake (sans-IO: bytes in, SpiffeId or error out).

Python's ``ssl`` verifies the chain against the mesh roots (``CERT_REQUIRED``) but knows nothing about
SPIFFE, so hostname checks are off and this module does what ztunnel's rustls verifiers do on top:
``IdentityVerifier`` (client side: the server's URI SAN must be one of the expected identities) and
``TrustDomainVerifier`` (server side: the client must be in our trust domain).

Rules: the leaf must carry exactly one URI SAN and it must be a valid mesh SPIFFE id; the trust domain is
checked before the expected list, so the error names the more fundamental mismatch. This module never
touches sockets, ``ssl`` or the clock; chain validity was OpenSSL's job before we are called.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509

from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.tls.certs import uri_sans
from meshcore.tls.errors import (
    MalformedPeerCertificate,
    NoPeerCertificate,
    NoSpiffeIdentity,
    UnexpectedIdentity,
    WrongTrustDomain,
)


def verify_peer(
    leaf_der: bytes | None,
    *,
    expected: Sequence[SpiffeId] | None = None,
    trust_domain: str | None = None,
) -> SpiffeId:
    """Return the peer's SPIFFE identity from its (already chain-verified) DER leaf certificate.

    ``leaf_der`` is ``getpeercert(binary_form=True)``, None when the peer sent no certificate.
    ``expected``: when given, the identity must be one of them (an empty list accepts nobody).
    ``trust_domain``: when given, the identity must be in it.
    Raises a ``PeerVerificationError`` subclass on any failure.
    """
    if not leaf_der:
        raise NoPeerCertificate()
    try:
        cert = x509.load_der_x509_certificate(leaf_der)
        sans = uri_sans(cert)
    except ValueError as e:
        raise MalformedPeerCertificate(str(e)) from e
    if len(sans) != 1:
        raise NoSpiffeIdentity(sans, f"found {len(sans)} URI SANs")
    try:
        identity = SpiffeId.parse(sans[0])
    except InvalidSpiffeId as e:
        raise NoSpiffeIdentity(sans, str(e)) from e
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise WrongTrustDomain(trust_domain, identity)
    if expected is not None and identity not in expected:
        raise UnexpectedIdentity(expected, identity)
    return identity

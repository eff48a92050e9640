"""Typed errors of meshcore.tls: bad certificate material, and peers that fail identity verification.

Two families, both under ``TlsError``:

* ``CertificateError``: a CSR, certificate, key or bundle we were handed is unusable (malformed PEM,
  bad signature, key that does not match the leaf, missing or ambiguous SPIFFE identity).
* ``PeerVerificationError``: the TLS handshake succeeded (OpenSSL verified the chain against the mesh
  roots) but the peer's SPIFFE identity is not acceptable. Callers close the connection and count it.

Messages name what was found and what the operator should check; they never include key material.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshcore.identity import SpiffeId


class TlsError(Exception):
    """Base of every meshcore.tls error."""


# --- certificate material ------------------------------------------------------------------------


class CertificateError(TlsError):
    """A CSR, certificate, key or bundle is unusable; the message says which and why."""


class InvalidCsr(CertificateError):
    """A certificate signing request that cannot be used.

    ``reason`` is a short stable label for metrics: ``not_pem``, ``malformed`` or ``bad_signature``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidCertificate(CertificateError):
    """PEM or DER that does not hold the certificate(s) expected."""


class InvalidPrivateKey(CertificateError):
    """PEM that does not hold an unencrypted private key of a supported type (EC or RSA)."""


class KeyMismatch(CertificateError):
    """The private key does not belong to the certificate it is paired with."""


class CertificateIdentityError(CertificateError):
    """A certificate that should name one SPIFFE identity names none, several, or an invalid one."""


# --- peer verification (after a successful TLS handshake) ----------------------------------------


class PeerVerificationError(TlsError):
    """The peer completed the handshake but its identity is not acceptable; close the connection."""


class NoPeerCertificate(PeerVerificationError):
    """The peer presented no certificate at all."""

    def __init__(self) -> None:
        super().__init__(
            "peer presented no certificate; mesh mTLS requires one on both sides "
            "(is the peer a mesh proxy, and is its certificate loaded?)"
        )


class MalformedPeerCertificate(PeerVerificationError):
    """The peer's leaf certificate could not be parsed."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"peer certificate is not valid DER X.509 ({detail})")


class NoSpiffeIdentity(PeerVerificationError):
    """The peer's leaf does not carry exactly one valid SPIFFE URI SAN."""

    def __init__(self, uri_sans: Sequence[str], detail: str) -> None:
        super().__init__(
            f"peer certificate does not name exactly one mesh identity ({detail}; URI SANs: "
            f"{list(uri_sans)}); mesh certificates carry one spiffe://<td>/ns/<ns>/sa/<sa> URI SAN "
            "and are issued by the mesh CA"
        )
        self.uri_sans = tuple(uri_sans)


class WrongTrustDomain(PeerVerificationError):
    """The peer's identity belongs to another trust domain."""

    def __init__(self, expected: str, got: SpiffeId) -> None:
        super().__init__(
            f"peer identity {got} is in trust domain {got.trust_domain!r}, this proxy accepts only "
            f"{expected!r}; check that both sides use the same mesh CA and trust domain"
        )
        self.expected = expected
        self.got = got


class UnexpectedIdentity(PeerVerificationError):
    """The peer's identity is valid but not one of those the caller expected for this destination."""

    def __init__(self, expected: Sequence[SpiffeId], got: SpiffeId) -> None:
        names = ", ".join(str(e) for e in expected) or "(none)"
        super().__init__(
            f"peer identity {got} is not one of the expected identities [{names}]; the destination may "
            "run under another service account, or the address may belong to another workload"
        )
        self.expected = tuple(expected)
        self.got = got


class AlpnNotNegotiated(PeerVerificationError):
    """The peer did not agree to the mesh ALPN protocol (``h2``)."""

    def __init__(self, got: str | None) -> None:
        super().__init__(
            f"peer negotiated ALPN {got!r}, the mesh requires 'h2'; the peer is probably not a mesh proxy"
        )
        self.got = got

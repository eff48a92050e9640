"""Keys, CSRs, certificates and the signing primitives the mesh CA and the fake CA share.

Pure functions over ``cryptography`` objects and PEM strings: no files, no sockets, no clock. Every
validity period is given by the caller (``now`` and durations), always as timezone-aware UTC datetimes.

Invariants:
* Workload keys are ECDSA P-256 (what ztunnel's rcgen uses); a workload certificate carries exactly one
  URI SAN, its ``spiffe://`` identity, and an empty subject (so the SAN extension is critical, RFC 5280
  §4.2.1.6).
* Certificates built here carry subject and authority key identifiers, basic constraints and key usage,
  so they pass strict X.509 verification (OpenSSL ``X509_V_FLAG_X509_STRICT``).
* The CA never copies anything from a CSR but its public key: names come from the caller's decision.
* Private keys are only ever returned as objects or PEM strings; ``CertBundle`` hides its key from repr.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.tls.errors import (
    CertificateIdentityError,
    InvalidCertificate,
    InvalidCsr,
    InvalidPrivateKey,
    KeyMismatch,
)

SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""Key types the CA can sign with: EC (ours) or RSA (common for plugged-in enterprise CAs)."""

_CSR_PEM_MARKER = "-----BEGIN CERTIFICATE REQUEST-----"
_CERT_PEM_MARKER = "-----BEGIN CERTIFICATE-----"


# --- keys -----------------------------------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key (the mesh's workload key type)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: SigningKey) -> str:
    """PKCS#8 PEM, unencrypted: callers keep it in memory or in 0600 files only."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def load_private_key(pem: str | bytes) -> SigningKey:
    """Parse an unencrypted EC or RSA private key; raise ``InvalidPrivateKey`` otherwise."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise InvalidPrivateKey(f"not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidPrivateKey(f"unsupported private key type {type(key).__name__}; use EC or RSA")
    return key


def public_key_matches(key: SigningKey, cert: x509.Certificate) -> bool:
    """True when ``cert`` certifies ``key``'s public half."""
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


# --- CSRs -----------------------------------------------------------------------------------------


def build_csr(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> str:
    """A PEM CSR whose only name is the URI SAN ``identity`` (empty subject, as ztunnel sends)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def parse_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature; raise ``InvalidCsr`` (with a ``reason``) otherwise."""
    if isinstance(pem, bytes):
        try:
            pem = pem.decode("ascii")
        except UnicodeDecodeError as e:
            raise InvalidCsr("CSR is not ASCII PEM text", reason="not_pem") from e
    if _CSR_PEM_MARKER not in pem:
        raise InvalidCsr(f"CSR is not PEM (no {_CSR_PEM_MARKER!r} line)", reason="not_pem")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise InvalidCsr(f"CSR PEM does not decode: {e}", reason="malformed") from e
    try:
        valid = csr.is_signature_valid
        # Touch the public key now so an unsupported algorithm fails here, not in the signer.
        csr.public_key()
    except (ValueError, x509.UnsupportedGeneralNameType) as e:
        raise InvalidCsr(f"CSR is malformed: {e}", reason="malformed") from e
    if not valid:
        raise InvalidCsr(
            "CSR signature does not verify with its own public key; it was altered or signed with another key",
            reason="bad_signature",
        )
    return csr


def csr_names(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    """Every subject alternative name the CSR asks for (empty when it has no SAN extension)."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value)


# --- certificates ---------------------------------------------------------------------------------


def load_chain(pems: str | bytes | Iterable[str | bytes]) -> list[x509.Certificate]:
    """Parse one PEM blob or a sequence of them (each may hold several certificates), in order.

    Raises ``InvalidCertificate`` when an element holds no certificate or does not parse.
    """
    items: Iterable[str | bytes] = [pems] if isinstance(pems, str | bytes) else pems
    out: list[x509.Certificate] = []
    for i, item in enumerate(items):
        data = item.encode("ascii") if isinstance(item, str) else item
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise InvalidCertificate(f"element {i} of the certificate chain is not PEM X.509: {e}") from e
        out.extend(certs)
    if not out:
        raise InvalidCertificate("certificate chain is empty")
    return out


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI subject alternative names, in order (empty when it has none)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def identity_of(cert: x509.Certificate) -> SpiffeId:
    """The single SPIFFE identity a mesh certificate carries; ``CertificateIdentityError`` otherwise."""
    sans = uri_sans(cert)
    if len(sans) != 1:
        raise CertificateIdentityError(
            f"certificate has {len(sans)} URI SANs {sans}; a mesh certificate carries exactly one spiffe:// SAN"
        )
    try:
        return SpiffeId.parse(sans[0])
    except InvalidSpiffeId as e:
        raise CertificateIdentityError(f"certificate URI SAN is not a mesh identity: {e}") from e


def is_issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``child`` and the names link (no validity or usage checks)."""
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# --- signing primitives (shared by istiod_lite's CA and meshcore.testing.fake_ca) -----------------


def build_ca_certificate(
    key: SigningKey,
    *,
    common_name: str,
    organization: str,
    not_before: datetime,
    not_after: datetime,
    issuer: tuple[x509.Certificate, SigningKey] | None = None,
    path_length: int | None = None,
) -> x509.Certificate:
    """A CA certificate for ``key``: self-signed (a root) when ``issuer`` is None, else an intermediate."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    issuer_name, signer, aki = subject, key, _aki_from_key(key.public_key())
    if issuer is not None:
        issuer_name, signer, aki = issuer[0].subject, issuer[1], _aki_from_cert(issuer[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(signer, hashes.SHA256())


def build_leaf_certificate(
    public_key: CertificatePublicKeyTypes,
    *,
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    not_before: datetime,
    not_after: datetime,
    uris: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
    subject: x509.Name | None = None,
    server_auth: bool = True,
    client_auth: bool = True,
) -> x509.Certificate:
    """An end-entity certificate for ``public_key`` signed by ``issuer_key``.

    With no ``subject`` the subject is empty and the SAN extension is marked critical. ``ips`` are
    textual IPv4/IPv6 addresses (``ValueError`` for anything else).
    """
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if not names:
        raise ValueError("a leaf certificate needs at least one subject alternative name")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server_auth + [ExtendedKeyUsageOID.CLIENT_AUTH] * client_auth
    if not usages:
        raise ValueError("a leaf certificate needs server_auth, client_auth or both")
    subject = subject if subject is not None else x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki_from_cert(issuer_cert), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def build_workload_certificate(
    public_key: CertificatePublicKeyTypes,
    identity: SpiffeId,
    *,
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A mesh workload certificate: URI SAN ``identity`` only, usable as TLS client and server."""
    return build_leaf_certificate(
        public_key,
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        not_before=not_before,
        not_after=not_after,
        uris=[identity.uri],
    )


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"datetime {when!r} is naive; pass timezone-aware UTC times")
    return when


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _aki_from_key(public_key: CertificatePublicKeyTypes) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)  # type: ignore[arg-type]


def _aki_from_cert(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return _aki_from_key(issuer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


# --- the bundle a proxy holds for one identity ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertBundle:
    """Key, chain and roots for one mesh identity, as a proxy uses them for mTLS.

    ``chain_pem`` is leaf first, then intermediates (no root); ``roots_pem`` is one or more
    concatenated root PEMs, the last element of the CA's ``cert_chain`` (Istio's convention).
    """

    key_pem: str = field(repr=False)
    chain_pem: tuple[str, ...]
    roots_pem: str
    identity: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime

    @property
    def refresh_at(self) -> datetime:
        """When to renew: half-way through the validity period (ztunnel's ``refresh_at``)."""
        return self.not_before + (self.not_after - self.not_before) / 2

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def is_valid_at(self, now: datetime) -> bool:
        """True while ``now`` is inside [not_before, not_after]."""
        return self.not_before <= now <= self.not_after

    @classmethod
    def from_ca_response(cls, key_pem: str, cert_chain: Sequence[str]) -> CertBundle:
        """Build from a key and a CA ``cert_chain`` (leaf, intermediates..., roots last).

        Checks that the key matches the leaf and that the leaf names exactly one SPIFFE identity;
        raises ``CertificateError`` subclasses otherwise.
        """
        if len(cert_chain) < 2:
            raise InvalidCertificate(
                f"CA returned {len(cert_chain)} certificate(s); expected at least a leaf and a root"
            )
        leaf_pem, *intermediates, roots_pem = cert_chain
        leaf = load_chain(leaf_pem)
        if len(leaf) != 1:
            raise InvalidCertificate(f"first element of the chain holds {len(leaf)} certificates, expected 1")
        roots = load_chain(roots_pem)
        above = [load_chain(pem) for pem in intermediates]
        if not public_key_matches(load_private_key(key_pem), leaf[0]):
            raise KeyMismatch("the issued leaf certificate does not certify our private key")
        # Catch a CA that returns mismatched pieces now, not at every peer's handshake.
        issuers = above[0][:1] if above else roots
        if not any(is_issued_by(leaf[0], issuer) for issuer in issuers):
            raise InvalidCertificate(
                "the leaf is not signed by the next certificate of the chain (or, with no intermediates, a root)"
            )
        return cls(
            key_pem=key_pem,
            chain_pem=(leaf_pem, *intermediates),
            roots_pem=roots_pem,
            identity=identity_of(leaf[0]),
            serial=leaf[0].serial_number,
            not_before=leaf[0].not_valid_before_utc,
            not_after=leaf[0].not_valid_after_utc,
        )


def issue_workload_bundle(
    identity: SpiffeId,
    *,
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    not_before: datetime,
    not_after: datetime,
) -> CertBundle:
    """A fresh key and its workload certificate for ``identity``, signed by the root ``issuer_cert``: what
    a CA that makes the key itself hands out (the fake CAs; istiod_lite's CA signs the caller's CSR)."""
    key = generate_key()
    leaf = build_workload_certificate(
        key.public_key(),
        identity,
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        not_before=not_before,
        not_after=not_after,
    )
    return CertBundle.from_ca_response(key_to_pem(key), [cert_to_pem(leaf), cert_to_pem(issuer_cert)])

"""The certificate authority: signs workload certificates, node credentials and istiod_lite's own cert.

Pure given ``now`` (no files, no clock, no network); ``storage`` loads the material, ``service`` calls it
after ``nodeauth`` has decided *which* identity a request may have. Invariants:

* Only the public key is taken from a CSR; names, usages and validity are the CA's decision.
* Workload certificates: one URI SAN (the identity), empty subject, client+server usage, validity
  ``ttl`` capped at ``max_ttl`` and at the signing certificate's own expiry, backdated by
  ``CLOCK_SKEW`` so a node whose clock is slightly behind accepts them.
* Node credentials bind ``spiffe://<td>/ns/istio-system/sa/ztunnel`` to one node: subject
  ``O=ambient-mesh-node, CN=<node>``, client usage only. Only this CA puts ``NODE_MARKER_ORG`` in a
  subject (workload certificates have an empty one), so a verified certificate carrying it is a node
  credential for exactly that node.
* Responses are Istio's ``cert_chain``: leaf, intermediates, then the root PEM(s) as the last element.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from istiod_lite.ca.errors import CaMaterialInvalid, CsrUnparseable, ForeignTrustDomain
from meshcore.identity import SpiffeId
from meshcore.tls import certs
from meshcore.tls.contexts import ISTIOD_SAN
from meshcore.tls.errors import InvalidCsr

NODE_MARKER_ORG = "ambient-mesh-node"
"""Subject O of node credentials; the CN is the node name. Never put in workload certificates."""

NODE_AGENT_NAMESPACE = "istio-system"
NODE_AGENT_SERVICE_ACCOUNT = "ztunnel"

DEFAULT_TTL = timedelta(hours=24)  # Istio DEFAULT_WORKLOAD_CERT_TTL
MAX_TTL = timedelta(days=90)  # Istio MAX_WORKLOAD_CERT_TTL
NODE_CREDENTIAL_TTL = timedelta(days=30)
SERVER_CERT_TTL = timedelta(days=30)
CLOCK_SKEW = timedelta(minutes=1)

# Kubernetes node names are DNS-1123 subdomains.
_NODE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A key and certificate the CA generated itself (node credential, istiod_lite serving cert)."""

    key_pem: str = field(repr=False)
    chain_pem: tuple[str, ...]  # leaf first, then intermediates; no root
    roots_pem: str  # the mesh roots, concatenated PEM


class CertificateAuthority:
    """Signs with ``signing_key``/``signing_cert``: a self-signed root, or a plugged-in intermediate.

    ``chain`` lists the certificates between ``signing_cert`` and the root (exclusive); ``roots`` are
    the trust anchors handed to clients (default: ``signing_cert`` itself, which must then be self-signed).
    """

    def __init__(
        self,
        signing_key: certs.SigningKey,
        signing_cert: x509.Certificate,
        trust_domain: str,
        *,
        chain: Sequence[x509.Certificate] = (),
        roots: Sequence[x509.Certificate] | None = None,
        default_ttl: timedelta = DEFAULT_TTL,
        max_ttl: timedelta = MAX_TTL,
    ) -> None:
        if not certs.public_key_matches(signing_key, signing_cert):
            raise CaMaterialInvalid("CA private key does not match the CA certificate")
        if not _is_ca(signing_cert):
            raise CaMaterialInvalid("CA certificate lacks basicConstraints CA:TRUE; it cannot sign certificates")
        if not timedelta(0) < default_ttl <= max_ttl:
            raise ValueError(f"default TTL {default_ttl} must be positive and at most the maximum {max_ttl}")
        self.trust_domain = trust_domain
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._key = signing_key
        self._cert = signing_cert
        self._chain = tuple(chain)
        self._roots = tuple(roots) if roots is not None else (signing_cert,)
        self._self_signed = signing_cert in self._roots
        # Sent to issued leafs' peers: intermediates (the signing cert first unless it is the root).
        self._intermediates_pem = tuple(
            certs.cert_to_pem(c) for c in ((() if self._self_signed else (signing_cert,)) + self._chain)
        )
        self.roots_pem = "".join(certs.cert_to_pem(c) for c in self._roots)

    @property
    def signing_cert(self) -> x509.Certificate:
        return self._cert

    @property
    def node_account(self) -> SpiffeId:
        """The identity node credentials carry (``istio-system/ztunnel`` in our trust domain)."""
        return SpiffeId(self.trust_domain, NODE_AGENT_NAMESPACE, NODE_AGENT_SERVICE_ACCOUNT)

    def sign_workload(self, csr_pem: str, identity: SpiffeId, ttl_seconds: int, now: datetime) -> list[str]:
        """Sign ``csr_pem``'s key for ``identity``; returns leaf, intermediates, roots (Istio's cert_chain).

        ``ttl_seconds <= 0`` means the default; anything above ``max_ttl`` is capped. The caller has
        already authorized ``identity`` for this request (``nodeauth.authorize``).
        """
        if identity.trust_domain != self.trust_domain:
            raise ForeignTrustDomain(identity, self.trust_domain)
        try:
            csr = certs.parse_csr(csr_pem)
        except InvalidCsr as e:
            raise CsrUnparseable(str(e)) from e
        # Capped in seconds first: timedelta(seconds=2**62) raises OverflowError.
        capped = min(ttl_seconds, int(self.max_ttl.total_seconds()))
        ttl = timedelta(seconds=capped) if ttl_seconds > 0 else self.default_ttl
        leaf = certs.build_workload_certificate(
            csr.public_key(),
            identity,
            issuer_cert=self._cert,
            issuer_key=self._key,
            not_before=now - CLOCK_SKEW,
            not_after=self._cap(now + min(ttl, self.max_ttl)),
        )
        return [certs.cert_to_pem(leaf), *self._intermediates_pem, self.roots_pem]

    def issue_node_credential(
        self, node: str, now: datetime, ttl: timedelta = NODE_CREDENTIAL_TTL
    ) -> IssuedCredential:
        """A client credential for the node agent (ztunnel) on ``node``; it may impersonate that node's pods."""
        if not _NODE_NAME_RE.match(node):
            raise ValueError(f"node name {node!r} is not a valid Kubernetes node name (DNS-1123 subdomain)")
        key = certs.generate_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_MARKER_ORG),
                x509.NameAttribute(NameOID.COMMON_NAME, node),
            ]
        )
        leaf = certs.build_leaf_certificate(
            key.public_key(),
            issuer_cert=self._cert,
            issuer_key=self._key,
            not_before=now - CLOCK_SKEW,
            not_after=self._cap(now + ttl),
            uris=[self.node_account.uri],
            subject=subject,
            server_auth=False,
        )
        return self._credential(key, leaf)

    def issue_server_cert(
        self, dns_names: Sequence[str], ips: Sequence[str], now: datetime, ttl: timedelta = SERVER_CERT_TTL
    ) -> IssuedCredential:
        """istiod_lite's serving certificate for 15012: DNS SAN ``ISTIOD_SAN`` plus the given names/IPs."""
        names = [ISTIOD_SAN, *(d for d in dns_names if d != ISTIOD_SAN)]
        key = certs.generate_key()
        leaf = certs.build_leaf_certificate(
            key.public_key(),
            issuer_cert=self._cert,
            issuer_key=self._key,
            not_before=now - CLOCK_SKEW,
            not_after=self._cap(now + ttl),
            dns_names=names,
            ips=ips,
            client_auth=False,
        )
        return self._credential(key, leaf)

    def issued_by_us(self, cert: x509.Certificate, now: datetime) -> bool:
        """True when ``cert`` was signed by our signing key and is valid at ``now``.

        A second check behind gRPC's own chain verification: every client certificate we accept
        (node credential or workload certificate) is signed directly by the signing certificate.
        """
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return False
        return certs.is_issued_by(cert, self._cert)

    def _cap(self, not_after: datetime) -> datetime:
        return min(not_after, self._cert.not_valid_after_utc)

    def _credential(self, key: ec.EllipticCurvePrivateKey, leaf: x509.Certificate) -> IssuedCredential:
        return IssuedCredential(
            key_pem=certs.key_to_pem(key),
            chain_pem=(certs.cert_to_pem(leaf), *self._intermediates_pem),
            roots_pem=self.roots_pem,
        )


def node_of(cert: x509.Certificate) -> str | None:
    """The node a node credential is bound to, or None for any other certificate."""
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [o.value for o in orgs] != [NODE_MARKER_ORG] or len(cns) != 1:
        return None
    node = cns[0].value
    return node if isinstance(node, str) and _NODE_NAME_RE.match(node) else None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False

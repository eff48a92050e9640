"""Who may obtain a certificate for which identity: the CA's pure authorization decision.

``authorize`` answers one ``CreateCertificate`` call with the identity to sign for, or raises a
``CsrRefused`` subclass. It reads no clock, no network and no store; the pods-on-node view arrives as a
function. Rules, in order (first failing rule wins; the table tests list one case per rule):

1. a caller authenticated by a certificate from this CA, in our trust domain;
2. request bounds, checked before anything is parsed: the CSR at most ``max_csr_bytes`` long and
   ``validity_seconds`` within +-``MAX_VALIDITY_SECONDS`` (a value past it overflows date arithmetic);
3. a PEM CSR whose self-signature verifies, with an ECDSA P-256 key;
4. exactly one subject alternative name, a URI that is a valid SPIFFE id in our trust domain (no
   DNS/IP/extra names);
5. with ``ImpersonatedIdentity``: the caller is a trusted node account, its credential is bound to a
   node, the target is in our trust domain, and a pod running as the target is scheduled on that
   node (Istio's node authorizer); without it: the target is the caller's own identity;
6. the CSR's URI SAN equals the target.
The CSR subject is ignored: the CA never copies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.ca.authority import node_of
from istiod_lite.ca.errors import (
    CsrIdentityMismatch,
    CsrNamesInvalid,
    CsrTooLarge,
    CsrUnparseable,
    ForeignTrustDomain,
    IdentityNotOnNode,
    InvalidImpersonation,
    NodeUnknown,
    NotNodeAccount,
    Unauthenticated,
    UnsupportedKey,
    ValidityInvalid,
)
from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.tls import certs
from meshcore.tls.errors import CertificateIdentityError, InvalidCsr

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
"""The ``IstioCertificateRequest.metadata`` key node agents set (Istio's name)."""

TRUSTED_NODE_ACCOUNTS = frozenset({"istio-system/ztunnel"})
"""Istio's ``CA_TRUSTED_NODE_ACCOUNTS`` default: ``<namespace>/<service account>`` entries."""

MAX_CSR_BYTES = 64 * 1024
"""Default CSR size limit; a P-256 CSR with one URI SAN is under 1 KiB."""

MAX_VALIDITY_SECONDS = 100 * 365 * 86400
"""|validity_duration| beyond this (100 years) is refused rather than capped: no client means it."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated client of a CSR call, from its verified TLS client certificate."""

    identity: SpiffeId
    node: str | None = None  # set only for node credentials (see authority.node_of)


@dataclass(frozen=True, slots=True)
class CsrRequest:
    """The fields of ``IstioCertificateRequest`` the decision needs, as received."""

    csr_pem: str
    validity_seconds: int = 0
    impersonated_identity: str | None = None  # raw metadata value; None or "" when absent


@dataclass(frozen=True, slots=True)
class NodeAuthConfig:
    trust_domain: str
    trusted_node_accounts: frozenset[str] = TRUSTED_NODE_ACCOUNTS
    max_csr_bytes: int = MAX_CSR_BYTES  # checked on the PEM text before parsing (PEM is ASCII)


def authorize(
    request: CsrRequest,
    caller: Caller | None,
    identities_on_node: Callable[[str], frozenset[SpiffeId]],
    *,
    config: NodeAuthConfig,
) -> SpiffeId:
    """The identity ``request`` may be signed for; raises ``CsrRefused`` subclasses (see module doc)."""
    if caller is None:
        raise Unauthenticated("no verified client certificate on the connection")
    if caller.identity.trust_domain != config.trust_domain:
        raise ForeignTrustDomain(caller.identity, config.trust_domain)
    if len(request.csr_pem) > config.max_csr_bytes:
        raise CsrTooLarge(len(request.csr_pem), config.max_csr_bytes)
    if abs(request.validity_seconds) > MAX_VALIDITY_SECONDS:
        raise ValidityInvalid(request.validity_seconds, MAX_VALIDITY_SECONDS)

    try:
        csr = certs.parse_csr(request.csr_pem)
    except InvalidCsr as e:
        raise CsrUnparseable(str(e)) from e
    key = csr.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise UnsupportedKey(_describe_key(key))
    requested = _requested_identity(csr)
    if requested.trust_domain != config.trust_domain:
        raise ForeignTrustDomain(requested, config.trust_domain)

    if request.impersonated_identity:
        target = _impersonation_target(request.impersonated_identity, caller, identities_on_node, config)
    else:
        target = caller.identity
    if requested != target:
        raise CsrIdentityMismatch(str(requested), target)
    return target


def grant_ttl(requested_seconds: int, *, default: timedelta, maximum: timedelta) -> int:
    """Validity to grant in seconds: the requested one when positive, else the default; at most ``maximum``.

    Compares in seconds, so no requested value can overflow ``timedelta``.
    """
    cap = int(maximum.total_seconds())
    if requested_seconds > 0:
        return min(requested_seconds, cap)
    return min(int(default.total_seconds()), cap)


def caller_from_certificate(cert: x509.Certificate) -> Caller:
    """The caller a verified client certificate stands for; ``Unauthenticated`` if it names no identity.

    The certificate must already be known to come from this CA (gRPC chain check plus
    ``CertificateAuthority.issued_by_us``): only then is the node marker trustworthy.
    """
    try:
        identity = certs.identity_of(cert)
    except CertificateIdentityError as e:
        raise Unauthenticated(f"client certificate is not a mesh certificate ({e})") from e
    return Caller(identity=identity, node=node_of(cert))


def _requested_identity(csr: x509.CertificateSigningRequest) -> SpiffeId:
    names = certs.csr_names(csr)
    if len(names) != 1:
        raise CsrNamesInvalid(f"found {len(names)} names {[_describe_name(n) for n in names]}")
    name = names[0]
    if not isinstance(name, x509.UniformResourceIdentifier):
        raise CsrNamesInvalid(f"found {_describe_name(name)}")
    try:
        return SpiffeId.parse(name.value)
    except InvalidSpiffeId as e:
        raise CsrNamesInvalid(str(e)) from e


def _impersonation_target(
    raw: str,
    caller: Caller,
    identities_on_node: Callable[[str], frozenset[SpiffeId]],
    config: NodeAuthConfig,
) -> SpiffeId:
    try:
        target = SpiffeId.parse(raw)
    except InvalidSpiffeId as e:
        raise InvalidImpersonation(str(e)) from e
    if target.trust_domain != config.trust_domain:
        raise ForeignTrustDomain(target, config.trust_domain)
    account = f"{caller.identity.namespace}/{caller.identity.service_account}"
    if account not in config.trusted_node_accounts:
        raise NotNodeAccount(caller.identity, config.trusted_node_accounts)
    if caller.node is None:
        raise NodeUnknown(caller.identity)
    if target not in identities_on_node(caller.node):
        raise IdentityNotOnNode(target, caller.node)
    return target


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    size = getattr(key, "key_size", None)
    return f"{type(key).__name__.removeprefix('_')}" + (f" ({size} bits)" if size else "")


def _describe_name(name: x509.GeneralName) -> str:
    kind = {
        x509.UniformResourceIdentifier: "URI",
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
    }.get(type(name), type(name).__name__)
    return f"{kind}:{name.value}"

"""Typed errors of istiod_lite's CA: refusals of certificate requests, and CA storage problems.

``CsrRefused`` subclasses are the node-authorization decisions that say no. Each carries:
* ``grpc_code``: the *name* of the gRPC status code (``"PERMISSION_DENIED"``), so the pure decision
  code needs no grpc import; the servicer maps it with ``grpc.StatusCode[name]``;
* ``reason``: a short stable label for ``istiod_lite_ca_refusals_total{reason}`` and logs;
* a message telling the caller what was wrong and what to do. It goes back to the client verbatim, so
  it names identities and nodes but never key material.

``CaStorageError`` subclasses stop istiod_lite at start-up: the CA files are missing, unreadable, or
inconsistent, and the message names the file.
"""

from __future__ import annotations

from meshcore.identity import SpiffeId


class CaError(Exception):
    """Base of every istiod_lite CA error."""


# --- refusals of CreateCertificate ----------------------------------------------------------------


class CsrRefused(CaError):
    """A certificate request the CA will not sign."""

    grpc_code: str = "PERMISSION_DENIED"
    reason: str = "refused"


class Unauthenticated(CsrRefused):
    grpc_code = "UNAUTHENTICATED"
    reason = "unauthenticated"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"caller is not authenticated: {detail}; present a node credential or workload certificate "
            "issued by this CA as the TLS client certificate"
        )


class CsrUnparseable(CsrRefused):
    grpc_code = "INVALID_ARGUMENT"
    reason = "csr_parse_error"

    def __init__(self, detail: str) -> None:
        super().__init__(f"certificate signing request rejected: {detail}; send a PEM PKCS#10 CSR")


class UnsupportedKey(CsrRefused):
    grpc_code = "INVALID_ARGUMENT"
    reason = "csr_key_type"

    def __init__(self, got: str) -> None:
        super().__init__(f"CSR public key is {got}; the mesh requires an ECDSA P-256 key")


class CsrNamesInvalid(CsrRefused):
    """The CSR asks for names other than exactly one URI SAN."""

    grpc_code = "INVALID_ARGUMENT"
    reason = "csr_san_invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"CSR subject alternative names rejected: {detail}; a mesh CSR carries exactly one URI SAN, "
            "the requested spiffe:// identity"
        )


class CsrTooLarge(CsrRefused):
    """The CSR is longer than the configured limit; refused before it is parsed."""

    grpc_code = "INVALID_ARGUMENT"
    reason = "csr_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"CSR is {size} bytes; at most {limit} are accepted (a mesh CSR, ECDSA P-256 with one URI SAN, "
            "is under 1 KiB): send one PEM PKCS#10 CSR"
        )


class ValidityInvalid(CsrRefused):
    """``validity_duration`` is beyond any certificate lifetime (it would overflow date arithmetic)."""

    grpc_code = "INVALID_ARGUMENT"
    reason = "validity_invalid"

    def __init__(self, seconds: int, limit: int) -> None:
        super().__init__(
            f"validity_duration {seconds} s is outside -{limit}..{limit} s; send the wanted certificate "
            "lifetime in seconds (e.g. 86400), or 0 for the default; lifetimes above MAX_WORKLOAD_CERT_TTL "
            "are capped to it"
        )


class CsrIdentityMismatch(CsrRefused):
    """The CSR's URI SAN is not the identity the caller may obtain."""

    grpc_code = "PERMISSION_DENIED"
    reason = "csr_identity_mismatch"

    def __init__(self, requested: str, allowed: SpiffeId) -> None:
        super().__init__(
            f"CSR asks for {requested} but this request may only obtain {allowed}; put the target "
            "identity in the CSR (and in ImpersonatedIdentity when acting for a pod)"
        )


class ForeignTrustDomain(CsrRefused):
    grpc_code = "PERMISSION_DENIED"
    reason = "foreign_trust_domain"

    def __init__(self, identity: SpiffeId, trust_domain: str) -> None:
        super().__init__(
            f"identity {identity} is in trust domain {identity.trust_domain!r}; this CA signs only "
            f"{trust_domain!r}"
        )


class InvalidImpersonation(CsrRefused):
    """The ``ImpersonatedIdentity`` metadata value is not a SPIFFE identity."""

    grpc_code = "INVALID_ARGUMENT"
    reason = "impersonated_identity_invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"metadata ImpersonatedIdentity is invalid: {detail}; send spiffe://<td>/ns/<ns>/sa/<sa>"
        )


class NotNodeAccount(CsrRefused):
    """Impersonation requested by a caller that is not a trusted node agent."""

    grpc_code = "PERMISSION_DENIED"
    reason = "not_node_account"

    def __init__(self, caller: SpiffeId, trusted: frozenset[str]) -> None:
        super().__init__(
            f"caller {caller} may not request certificates for other identities; only node agents "
            f"({', '.join(sorted(trusted))}) may, and only for pods on their node"
        )


class NodeUnknown(CsrRefused):
    """A node account credential without a node binding tried to impersonate."""

    grpc_code = "PERMISSION_DENIED"
    reason = "caller_node_unknown"

    def __init__(self, caller: SpiffeId) -> None:
        super().__init__(
            f"caller {caller} is a node account but its certificate is not bound to a node; use the "
            "node credential istiod_lite issued for this node"
        )


class IdentityNotOnNode(CsrRefused):
    grpc_code = "PERMISSION_DENIED"
    reason = "identity_not_on_node"

    def __init__(self, identity: SpiffeId, node: str) -> None:
        super().__init__(
            f"no pod with identity {identity} on node {node}; a node agent may only obtain certificates "
            "for pods scheduled on its own node (is the pod registered and scheduled there yet?)"
        )
        self.identity = identity
        self.node = node


# --- CA storage -----------------------------------------------------------------------------------


class CaStorageError(CaError):
    """CA key/certificate files are missing, unreadable or inconsistent; the message names the file."""


class CaFileUnreadable(CaStorageError):
    pass


class CaMaterialInvalid(CaStorageError):
    pass

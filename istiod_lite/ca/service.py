"""gRPC face of the CA: ``istio.v1.auth.IstioCertificateService/CreateCertificate`` on istiod_lite's 15012.

Thin shell: it reads the caller from the TLS client certificate (``auth_context()["x509_pem_cert"]``,
chain-checked by gRPC against our roots and re-checked by ``CertificateAuthority.issued_by_us``), the
``ImpersonatedIdentity`` metadata, asks ``nodeauth.authorize`` and signs. A refusal aborts the call with
the refusal's gRPC code and message, is counted (Istio's ``citadel_server_*`` counters plus
``istiod_lite_ca_refusals_total{reason}``) and logged once. No refusal affects other calls.

gRPC Python cannot *request* a client certificate without *requiring* one (``require_client_auth=False``
means the server never asks, so every CSR would be UNAUTHENTICATED). ``server_credentials`` therefore
requires client certificates by default; xDS clients on the same port then need a mesh certificate too.

TLS refusals (no client certificate, one from a foreign CA) happen inside gRPC's C core: the connection
is closed before any Python code sees it, and gRPC Python offers no handshake-outcome hook (no custom
verifier, no callback, no per-connection event). ``TlsAccounting`` counts what *is* observable: every
handshake gRPC starts (the per-handshake certificate-configuration fetcher of
``dynamic_ssl_server_credentials``), and every connection that got past it (its first call; gRPC
delivers calls only on verified connections). Refused handshakes are the difference, up to handshakes
still in progress and verified connections that never made a call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import grpc
import structlog
from cryptography import x509
from google.protobuf import struct_pb2
from prometheus_client import CollectorRegistry, Counter

from istiod_lite.ca.authority import CertificateAuthority, IssuedCredential
from istiod_lite.ca.errors import CsrRefused, CsrUnparseable, InvalidImpersonation, Unauthenticated
from istiod_lite.ca.nodeauth import (
    IMPERSONATED_IDENTITY,
    Caller,
    CsrRequest,
    NodeAuthConfig,
    authorize,
    caller_from_certificate,
    grant_ttl,
)
from meshcore.identity import SpiffeId
from meshcore.proto import ca_pb2, ca_pb2_grpc
from meshcore.tls import certs

log = structlog.get_logger("istiod_lite.ca")

PEER_CERT_KEY = "x509_pem_cert"


class CaMetrics:
    """The CA's counters, registered in the given registry (Istio's names; exposed with ``_total``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.csr = Counter("citadel_server_csr_count", "CSR requests received.", registry=registry)
        self.issued = Counter(
            "citadel_server_success_cert_issuance_count", "Certificates issued.", registry=registry
        )
        self.authn_failures = Counter(
            "citadel_server_authentication_failure_count",
            "CSR requests whose caller could not be authenticated.",
            registry=registry,
        )
        self.parse_errors = Counter(
            "citadel_server_csr_parsing_err_count", "CSR requests whose CSR could not be parsed.", registry=registry
        )
        self.refusals = Counter(
            "istiod_lite_ca_refusals", "CSR requests refused, by reason.", ["reason"], registry=registry
        )

    def refused(self, error: CsrRefused) -> None:
        self.refusals.labels(reason=error.reason).inc()
        if isinstance(error, Unauthenticated):
            self.authn_failures.inc()
        elif isinstance(error, CsrUnparseable):
            self.parse_errors.inc()


class TlsAccounting:
    """Counts TLS handshakes on the gRPC port and the connections that passed them (see module doc).

    ``handshake_started`` runs on a gRPC core thread (prometheus counters are thread-safe);
    ``call_seen`` runs on the event loop, from every servicer on the port. A connection is recognised by
    its peer address among the last ``max_peers`` seen, so memory stays bounded; a client port reused
    after its connection closed is not counted again (undercount, never overcount, of passed handshakes).
    """

    def __init__(self, registry: CollectorRegistry, *, max_peers: int = 65_536) -> None:
        self.handshakes = Counter(
            "istiod_lite_grpc_tls_handshakes",
            "TLS handshakes started on the xDS/CA port (one per accepted TCP connection).",
            registry=registry,
        )
        self.connections = Counter(
            "istiod_lite_grpc_tls_connections_verified",
            "Connections on the xDS/CA port whose client certificate verified, counted at their first call. "
            "Handshakes minus this is the TLS refusals (no or foreign client certificate) plus those in progress.",
            registry=registry,
        )
        self._max_peers = max_peers
        self._peers: OrderedDict[str, None] = OrderedDict()

    def handshake_started(self) -> None:
        """The certificate-configuration fetcher: count, keep the current configuration (None)."""
        self.handshakes.inc()

    def call_seen(self, peer: str) -> None:
        if peer in self._peers:
            self._peers.move_to_end(peer)
            return
        self._peers[peer] = None
        self.connections.inc()
        if len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)


class CaServicer(ca_pb2_grpc.IstioCertificateServiceServicer):
    """Answers CreateCertificate. ``identities_on_node(node)`` is the registry's view of which identities
    have pods scheduled on ``node``; ``clock`` returns timezone-aware UTC time."""

    def __init__(
        self,
        ca: CertificateAuthority,
        identities_on_node: Callable[[str], frozenset[SpiffeId]],
        *,
        registry: CollectorRegistry,
        config: NodeAuthConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        self._ca = ca
        self._on_call = on_call
        self._identities_on_node = identities_on_node
        self._config = config or NodeAuthConfig(trust_domain=ca.trust_domain)
        self._clock = clock
        self.metrics = CaMetrics(registry)

    async def CreateCertificate(  # noqa: N802 (gRPC method name)
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        self.metrics.csr.inc()
        if self._on_call is not None:
            self._on_call(context.peer())
        now = self._clock()
        caller: Caller | None = None
        impersonated: str | None = None
        try:
            caller = self._caller(context.auth_context(), now)
            impersonated = _impersonated_identity(request.metadata)
            csr_request = CsrRequest(
                csr_pem=request.csr,
                validity_seconds=request.validity_duration,
                impersonated_identity=impersonated,
            )
            identity = authorize(csr_request, caller, self._identities_on_node, config=self._config)
            ttl = grant_ttl(request.validity_duration, default=self._ca.default_ttl, maximum=self._ca.max_ttl)
            chain = self._ca.sign_workload(request.csr, identity, ttl, now)
        except CsrRefused as e:
            self.metrics.refused(e)
            log.warning(
                "certificate request refused",
                reason=e.reason,
                code=e.grpc_code,
                caller=str(caller.identity) if caller else None,
                node=caller.node if caller else None,
                requested=impersonated or _csr_identity_hint(request.csr, self._config.max_csr_bytes),
                error=str(e),
            )
            await context.abort(grpc.StatusCode[e.grpc_code], str(e))
            raise AssertionError("unreachable: context.abort raises") from e
        except Exception as e:  # a bug, not the caller's fault: keep serving others, say where to look
            log.exception("certificate request failed", caller=str(caller.identity) if caller else None)
            await context.abort(grpc.StatusCode.INTERNAL, "internal CA error; see istiod_lite logs")
            raise AssertionError("unreachable: context.abort raises") from e
        self.metrics.issued.inc()
        log.info(
            "certificate issued",
            identity=str(identity),
            caller=str(caller.identity),
            node=caller.node,
            ttl_seconds=ttl,
        )
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)

    def _caller(self, auth: Mapping[str, Sequence[bytes]], now: datetime) -> Caller:
        pems = auth.get(PEER_CERT_KEY) or []
        if not pems:
            raise Unauthenticated("no client certificate on the connection")
        try:
            cert = x509.load_pem_x509_certificate(pems[0])
        except ValueError as e:
            raise Unauthenticated(f"client certificate does not parse: {e}") from e
        if not self._ca.issued_by_us(cert, now):
            raise Unauthenticated("client certificate was not issued by this CA or is not valid now")
        return caller_from_certificate(cert)


def _impersonated_identity(metadata: struct_pb2.Struct) -> str | None:
    if IMPERSONATED_IDENTITY not in metadata.fields:
        return None
    value = metadata.fields[IMPERSONATED_IDENTITY]
    if value.WhichOneof("kind") != "string_value":
        raise InvalidImpersonation(f"expected a string, got {value.WhichOneof('kind')}")
    return value.string_value or None


def _csr_identity_hint(csr_pem: str, max_bytes: int) -> str | None:
    """The URI the CSR asks for, for logs only; None when the CSR is too large or does not parse."""
    if len(csr_pem) > max_bytes:
        return None
    try:
        sans = certs.csr_names(certs.parse_csr(csr_pem))
    except Exception:  # logging aid only: the refusal already says what was wrong
        return None
    uris = [n.value for n in sans if isinstance(n, x509.UniformResourceIdentifier)]
    return uris[0] if uris else None


def add_to_server(server: grpc.aio.Server, servicer: CaServicer) -> None:
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


def server_credentials(
    ca: CertificateAuthority,
    server_cert: IssuedCredential,
    *,
    require_client_auth: bool = True,
    accounting: TlsAccounting | None = None,
) -> grpc.ServerCredentials:
    """TLS for 15012: serve ``server_cert`` (from ``ca.issue_server_cert``), trust client certs from ``ca``.

    Keep ``require_client_auth=True`` whenever the CA is served on the port: with False, gRPC never asks
    for a client certificate and every CSR is refused UNAUTHENTICATED (see module doc). With
    ``accounting``, every handshake is counted (same TLS settings, through gRPC's dynamic credentials).
    """
    chain = "".join(p if p.endswith("\n") else p + "\n" for p in server_cert.chain_pem)
    pairs = [(server_cert.key_pem.encode("ascii"), chain.encode("ascii"))]
    roots = ca.roots_pem.encode("ascii")
    if accounting is None:
        return grpc.ssl_server_credentials(pairs, root_certificates=roots, require_client_auth=require_client_auth)
    fetcher = accounting.handshake_started
    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration(pairs, root_certificates=roots),
        fetcher,  # type: ignore[arg-type]  # returning None keeps the configuration
        require_client_authentication=require_client_auth,
    )

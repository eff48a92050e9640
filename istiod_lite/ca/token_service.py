"""gRPC face of the token CA port: ``IstioCertificateService/CreateCertificate`` for bearer-token callers.

A second gRPC server (default port 15011) beside 15012, because gRPC Python cannot ask for a client
certificate without requiring one (see ``service``), and a pod that has no certificate yet must still
reach the CA. TLS here is server-authenticated only (istiod's serving certificate; no client
certificate requested) and only this one service is registered: no xDS. The caller is authenticated
by ``authorization: Bearer <service-account token>`` alone: the token checked by the verifier
(``tokenreview``: the local issuer's key, or the API server's TokenReview on Kubernetes), then
``tokenauth.authorize_verified``. A node agent (ztunnel on Kubernetes) authenticates here too and sends
``ImpersonatedIdentity`` for the pods on its node: its token is bound to its node through the token's
pod claims and the same node authorization as 15012 applies.
Refusals are counted in the same counters as 15012's (``CaMetrics``: Istio's ``citadel_server_*`` and
``istiod_lite_ca_refusals_total{reason}``) and logged once with ``port="token"``; tokens are never logged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import structlog
from cryptography import x509

from istiod_lite.ca.authority import CertificateAuthority, IssuedCredential
from istiod_lite.ca.errors import CsrRefused
from istiod_lite.ca.nodeauth import IMPERSONATED_IDENTITY, TRUSTED_NODE_ACCOUNTS, CsrRequest, grant_ttl
from istiod_lite.ca.service import CaMetrics
from istiod_lite.ca.tokenauth import (
    AUTHORIZATION,
    PodFacts,
    TokenAuthConfig,
    authorize_verified,
    bearer_token,
)
from istiod_lite.ca.tokenreview import LocalVerifier, Verifier
from meshcore.identity import SpiffeId
from meshcore.proto import ca_pb2, ca_pb2_grpc
from meshcore.tls import certs

log = structlog.get_logger("istiod_lite.ca")

LOG_HINT_MAX_CSR_BYTES = 64 * 1024  # a larger CSR is not parsed for the log line (the refusal says why)


class TokenCaServicer(ca_pb2_grpc.IstioCertificateServiceServicer):
    """Answers CreateCertificate for token-authenticated callers. ``find_pod(namespace, name)`` is the
    store's view of that pod (None when it does not exist)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        find_pod: Callable[[str, str], PodFacts | None],
        *,
        metrics: CaMetrics,
        config: TokenAuthConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        verify: Verifier | None = None,
        identities_on_node: Callable[[str], frozenset[SpiffeId]] | None = None,
        trusted_node_accounts: frozenset[str] = TRUSTED_NODE_ACCOUNTS,
    ) -> None:
        """``verify``: who a token stands for (``ca.tokenreview``); default: the local issuer's key.
        ``identities_on_node`` (the registry's view, as 15012's servicer has it): node agents of
        ``trusted_node_accounts`` may impersonate the pods on their token's node; None: nobody may."""
        self._ca = ca
        self._find_pod = find_pod
        self._identities_on_node = identities_on_node
        self._trusted_node_accounts = trusted_node_accounts
        self._config = config
        self._clock = clock
        self._verify = verify or LocalVerifier(config, clock)
        self.metrics = metrics

    async def CreateCertificate(  # noqa: N802 (gRPC method name)
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        self.metrics.csr.inc()
        now = self._clock()
        authorization = [
            v for k, v in (context.invocation_metadata() or ()) if k.lower() == AUTHORIZATION and isinstance(v, str)
        ]
        # Any ImpersonatedIdentity (even a malformed one) is refused, after the token check.
        fields = request.metadata.fields
        present = IMPERSONATED_IDENTITY in fields and fields[IMPERSONATED_IDENTITY].WhichOneof("kind") is not None
        impersonated = fields[IMPERSONATED_IDENTITY].string_value or "(not a string)" if present else None
        try:
            csr_request = CsrRequest(
                csr_pem=request.csr, validity_seconds=request.validity_duration, impersonated_identity=impersonated
            )
            claims = await self._verify(bearer_token(authorization))
            identity = authorize_verified(
                csr_request, claims, self._find_pod, trust_domain=self._config.trust_domain,
                identities_on_node=self._identities_on_node, trusted_node_accounts=self._trusted_node_accounts,
            )
            ttl = grant_ttl(request.validity_duration, default=self._ca.default_ttl, maximum=self._ca.max_ttl)
            chain = self._ca.sign_workload(request.csr, identity, ttl, now)
        except CsrRefused as e:
            self.metrics.refused(e)
            log.warning(
                "certificate request refused",
                port="token",
                reason=e.reason,
                code=e.grpc_code,
                peer=context.peer(),
                requested=_csr_identity_hint(request.csr),
                error=str(e),
            )
            await context.abort(grpc.StatusCode[e.grpc_code], str(e))
            raise AssertionError("unreachable: context.abort raises") from e
        except Exception as e:  # a bug, not the caller's fault: keep serving others, say where to look
            log.exception("certificate request failed", port="token")
            await context.abort(grpc.StatusCode.INTERNAL, "internal CA error; see istiod_lite logs")
            raise AssertionError("unreachable: context.abort raises") from e
        self.metrics.issued.inc()
        log.info("certificate issued", port="token", identity=str(identity), ttl_seconds=ttl,
                 caller=f"{claims.namespace}/{claims.service_account}")
        return ca_pb2.IstioCertificateResponse(cert_chain=chain)


def _csr_identity_hint(csr_pem: str) -> str | None:
    """The URI the CSR asks for, for logs only; None when the CSR is too large or does not parse."""
    if len(csr_pem) > LOG_HINT_MAX_CSR_BYTES:
        return None
    try:
        sans = certs.csr_names(certs.parse_csr(csr_pem))
    except Exception:  # logging aid only: the refusal already says what was wrong
        return None
    uris = [n.value for n in sans if isinstance(n, x509.UniformResourceIdentifier)]
    return uris[0] if uris else None


def token_server_credentials(server_cert: IssuedCredential) -> grpc.ServerCredentials:
    """TLS for the token port: serve ``server_cert``; no client certificate is asked for."""
    chain = "".join(p if p.endswith("\n") else p + "\n" for p in server_cert.chain_pem)
    return grpc.ssl_server_credentials(
        [(server_cert.key_pem.encode("ascii"), chain.encode("ascii"))], require_client_auth=False
    )


def add_to_server(server: grpc.aio.Server, servicer: TokenCaServicer) -> None:
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

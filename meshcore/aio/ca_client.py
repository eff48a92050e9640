"""Client of istiod_lite's CA (``IstioCertificateService/CreateCertificate``) and the provider protocol
the SecretManager fetches certificates through.

``CaClient`` authenticates with the node credential (mTLS client certificate), sets
``ImpersonatedIdentity`` when acting for a pod, and, like ztunnel, refuses a response whose leaf is not
the identity it asked for. ``token_ca_client`` is the other way in, for pods that are not node agents
(the waypoint): server-authenticated TLS only (no client certificate) to istiod_lite's token CA port
(15011), with ``authorization: Bearer <service-account token>`` read from the token file at every call,
since the kubelet rewrites it before it expires (Istio's istio-agent sends the same header on 15012). gRPC failures become typed errors: ``CaUnavailable`` (retry with backoff) or
``CaRefused`` (the CA said no; retrying the same request will not help until the cluster changes).
``CaCertificateProvider`` turns that into ``fetch(identity) -> CertBundle``: a fresh P-256 key per
fetch that never leaves this process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509
from google.protobuf import struct_pb2

from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.proto import ca_pb2, ca_pb2_grpc
from meshcore.tls import certs
from meshcore.tls.contexts import ISTIOD_SAN, channel_credentials, channel_options
from meshcore.tls.errors import CertificateError

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
AUTHORIZATION = "authorization"  # gRPC metadata key of the bearer token (lower case, as gRPC requires)
MAX_TOKEN_BYTES = 16 * 1024

# File names of a node credential on disk (Istio's /etc/certs convention); istiod_lite writes them.
CREDENTIAL_KEY_FILE = "key.pem"
CREDENTIAL_CHAIN_FILE = "cert-chain.pem"
CREDENTIAL_ROOT_FILE = "root-cert.pem"
DEFAULT_TTL_SECONDS = 86400  # ztunnel's SECRET_TTL default

# Statuses that mean "try again later" rather than "the CA refused this request".
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class CaClientError(Exception):
    """Base of CA client errors."""


class CaUnavailable(CaClientError):
    """The CA could not be reached or did not answer in time; retry with backoff."""


class CaRefused(CaClientError):
    """The CA answered with an error status; ``code`` is the gRPC status, ``message`` the CA's reason."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"CA refused the certificate request ({code.name}): {message}")
        self.code = code
        self.message = message


class CaResponseInvalid(CaClientError):
    """The CA answered with a chain we must not use (wrong identity, unparseable, key mismatch)."""


class TokenUnavailable(CaUnavailable):
    """The service-account token file is missing, empty or not a token; retried like an unreachable CA
    (the kubelet writes and refreshes the file)."""


class CertificateProvider(Protocol):
    """Where the SecretManager gets certificates: istiod_lite's CA in production, FakeCa in tests."""

    async def fetch(self, identity: SpiffeId) -> certs.CertBundle: ...


class CaClient:
    """One gRPC channel to the CA; create inside the event loop, ``await close()`` (or ``async with``)."""

    def __init__(
        self,
        target: str,
        roots_pem: str,
        node_key_pem: str | None,
        node_chain_pem: str | Sequence[str] | None,
        *,
        timeout: float = 10.0,
        server_name: str = ISTIOD_SAN,
        call_metadata: Callable[[], Sequence[tuple[str, str]]] | None = None,
    ) -> None:
        """``node_key_pem``/``node_chain_pem`` None: no client certificate (the token port);
        ``call_metadata`` is evaluated at every call (e.g. the bearer token from its file)."""
        self.target = target
        self._timeout = timeout
        self._call_metadata = call_metadata
        self._channel = grpc.aio.secure_channel(
            target,
            channel_credentials(roots_pem, node_key_pem, node_chain_pem),
            options=channel_options(server_name),
        )
        self._stub = ca_pb2_grpc.IstioCertificateServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def create_certificate(
        self, csr_pem: str, impersonate: SpiffeId | None, ttl_seconds: int = DEFAULT_TTL_SECONDS
    ) -> list[str]:
        """Ask for ``csr_pem`` to be signed; returns Istio's cert_chain (leaf, intermediates, roots last).

        The leaf must carry the identity the CSR asks for (and ``impersonate``, when given).
        """
        requested = _csr_identity(csr_pem)
        if impersonate is not None and impersonate != requested:
            raise ValueError(f"CSR asks for {requested} but impersonation targets {impersonate}")
        metadata = struct_pb2.Struct()
        if impersonate is not None:
            metadata.update({IMPERSONATED_IDENTITY: impersonate.uri})
        request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_seconds, metadata=metadata)
        call_metadata = tuple(self._call_metadata()) if self._call_metadata is not None else None
        try:
            response = await self._stub.CreateCertificate(request, timeout=self._timeout, metadata=call_metadata)
        except grpc.aio.AioRpcError as e:
            if e.code() in _TRANSIENT:
                raise CaUnavailable(f"CA at {self.target} unavailable ({e.code().name}): {e.details()}") from e
            raise CaRefused(e.code(), e.details() or "") from e
        chain = list(response.cert_chain)
        if not chain:
            raise CaResponseInvalid(f"CA at {self.target} returned an empty certificate chain")
        try:
            got = certs.identity_of(certs.load_chain(chain[0])[0])
        except CertificateError as e:
            raise CaResponseInvalid(f"CA at {self.target} returned an unusable leaf: {e}") from e
        if got != requested:
            raise CaResponseInvalid(f"CA at {self.target} issued a certificate for {got}, we asked for {requested}")
        return chain

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> CaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class CaCertificateProvider:
    """``CertificateProvider`` on top of ``CaClient``: new key, CSR, signed chain, checked bundle.

    ``impersonate=True`` is ztunnel's shared (node agent) mode: the request names the pod's identity in
    ``ImpersonatedIdentity``. With False the caller asks for its own identity.
    """

    def __init__(self, client: CaClient, *, impersonate: bool = True, ttl_seconds: int = DEFAULT_TTL_SECONDS):
        self._client = client
        self._impersonate = impersonate
        self._ttl_seconds = ttl_seconds

    async def fetch(self, identity: SpiffeId) -> certs.CertBundle:
        key = certs.generate_key()
        csr = certs.build_csr(key, identity)
        chain = await self._client.create_certificate(
            csr, identity if self._impersonate else None, self._ttl_seconds
        )
        try:
            return certs.CertBundle.from_ca_response(certs.key_to_pem(key), chain)
        except CertificateError as e:
            raise CaResponseInvalid(f"CA response for {identity} is unusable: {e}") from e


def token_ca_client(target: str, roots_pem: str, token_path: Path) -> CaClient:
    """A ``CaClient`` for istiod_lite's token CA port: server-authenticated TLS (``roots_pem``, istiod's SAN
    checked as for 15012), no client certificate, ``authorization: Bearer <token>`` from ``token_path``
    read at every call. Use with ``CaCertificateProvider(impersonate=False)``."""
    return CaClient(target, roots_pem, None, None, call_metadata=lambda: ((AUTHORIZATION, bearer(token_path)),))


def bearer(token_path: Path) -> str:
    """``Bearer <token>`` from the token file; ``TokenUnavailable`` names the file when it is unusable."""
    try:
        raw = token_path.read_bytes()[: MAX_TOKEN_BYTES + 1]
    except OSError as e:
        raise TokenUnavailable(
            f"cannot read the service-account token {token_path}: {e.strerror}; is ISTIO_TOKEN_PATH right "
            "and the pod's token mounted?"
        ) from e
    token = raw.strip()
    if not token:
        raise TokenUnavailable(f"service-account token file {token_path} is empty")
    if len(token) > MAX_TOKEN_BYTES or not all(0x21 <= b <= 0x7E for b in token):
        raise TokenUnavailable(f"{token_path} does not hold a token (over {MAX_TOKEN_BYTES} bytes or not printable)")
    return "Bearer " + token.decode("ascii")


def load_node_credential(directory: Path) -> tuple[str, str, str]:
    """Read ``(key_pem, chain_pem, roots_pem)`` from key.pem, cert-chain.pem, root-cert.pem in ``directory``.

    Raises ``OSError`` (missing/unreadable file) or ``CertificateError`` (content that does not parse).
    """
    key_pem = (directory / CREDENTIAL_KEY_FILE).read_text("ascii")
    chain_pem = (directory / CREDENTIAL_CHAIN_FILE).read_text("ascii")
    roots_pem = (directory / CREDENTIAL_ROOT_FILE).read_text("ascii")
    certs.load_private_key(key_pem)
    certs.load_chain(chain_pem)
    certs.load_chain(roots_pem)
    return key_pem, chain_pem, roots_pem


def _csr_identity(csr_pem: str) -> SpiffeId:
    """The identity our own CSR asks for; ValueError means a bug in the caller, not a remote problem."""
    names = certs.csr_names(certs.parse_csr(csr_pem))
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        raise ValueError(f"CSR must name exactly one URI identity, it names {names}")
    try:
        return SpiffeId.parse(names[0].value)
    except InvalidSpiffeId as e:
        raise ValueError(f"CSR does not name a mesh identity: {e}") from e

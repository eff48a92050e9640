import base64
import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from istiod_lite.ca import errors
from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.nodeauth import (
    MAX_CSR_BYTES,
    MAX_VALIDITY_SECONDS,
    Caller,
    CsrRequest,
    NodeAuthConfig,
    authorize,
    caller_from_certificate,
    grant_ttl,
)
from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls import certs

TD = "cluster.local"
ALICE = SpiffeId(TD, "default", "alice")
BOB = SpiffeId(TD, "default", "bob")
ZTUNNEL = SpiffeId(TD, "istio-system", "ztunnel")
OTHER_AGENT = SpiffeId(TD, "kube-system", "node-agent")

NODE_A = Caller(ZTUNNEL, "node-a")
NODE_UNBOUND = Caller(ZTUNNEL, None)
WORKLOAD_ALICE = Caller(ALICE)
FOREIGN_CALLER = Caller(SpiffeId("evil.local", "default", "alice"))

PODS = {"node-a": frozenset({ALICE}), "node-b": frozenset({BOB})}
CONFIG = NodeAuthConfig(trust_domain=TD)


def _on_node(node: str) -> frozenset[SpiffeId]:
    return PODS.get(node, frozenset())


def _csr(*names: x509.GeneralName, key=None) -> str:
    key = key or certs.generate_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def uri(identity: SpiffeId | str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(str(identity))


def _tampered() -> str:
    """A well-formed CSR whose signature no longer verifies (last byte of ECDSA ``s`` flipped)."""
    der = bytearray(
        x509.load_pem_x509_csr(certs.build_csr(certs.generate_key(), ALICE).encode()).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-1] ^= 0x01
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


ALLOWED = [
    ("a workload gets its own identity", WORKLOAD_ALICE, _csr(uri(ALICE)), None, ALICE),
    ("a node agent gets an identity with a pod on its node", NODE_A, _csr(uri(ALICE)), ALICE.uri, ALICE),
    ("a node agent gets its own identity without impersonating", NODE_A, _csr(uri(ZTUNNEL)), None, ZTUNNEL),
    ("empty ImpersonatedIdentity means none", WORKLOAD_ALICE, _csr(uri(ALICE)), "", ALICE),
]


@pytest.mark.parametrize(("caller", "csr", "impersonate", "want"), [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_authorize_allows(caller, csr, impersonate, want):
    request = CsrRequest(csr_pem=csr, impersonated_identity=impersonate)
    assert authorize(request, caller, _on_node, config=CONFIG) == want


REFUSED = [
    ("no caller is unauthenticated", None, _csr(uri(ALICE)), None,
     errors.Unauthenticated, "UNAUTHENTICATED"),
    ("a caller from another trust domain is refused", FOREIGN_CALLER, _csr(uri(ALICE)), None,
     errors.ForeignTrustDomain, "PERMISSION_DENIED"),
    ("text that is not a CSR is invalid", WORKLOAD_ALICE, "hello", None,
     errors.CsrUnparseable, "INVALID_ARGUMENT"),
    ("a CSR whose signature does not verify is invalid", WORKLOAD_ALICE, _tampered(), None,
     errors.CsrUnparseable, "INVALID_ARGUMENT"),
    ("an RSA key is refused", WORKLOAD_ALICE,
     _csr(uri(ALICE), key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), None,
     errors.UnsupportedKey, "INVALID_ARGUMENT"),
    ("a P-384 key is refused", WORKLOAD_ALICE, _csr(uri(ALICE), key=ec.generate_private_key(ec.SECP384R1())), None,
     errors.UnsupportedKey, "INVALID_ARGUMENT"),
    ("a CSR without SAN is refused", WORKLOAD_ALICE, _csr(), None,
     errors.CsrNamesInvalid, "INVALID_ARGUMENT"),
    ("an extra DNS SAN is refused", WORKLOAD_ALICE, _csr(uri(ALICE), x509.DNSName("alice.example")), None,
     errors.CsrNamesInvalid, "INVALID_ARGUMENT"),
    ("a DNS-only CSR is refused", WORKLOAD_ALICE, _csr(x509.DNSName("alice.example")), None,
     errors.CsrNamesInvalid, "INVALID_ARGUMENT"),
    ("an extra IP SAN is refused", WORKLOAD_ALICE,
     _csr(uri(ALICE), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))), None,
     errors.CsrNamesInvalid, "INVALID_ARGUMENT"),
    ("two URI SANs are refused", WORKLOAD_ALICE, _csr(uri(ALICE), uri(BOB)), None,
     errors.CsrNamesInvalid, "INVALID_ARGUMENT"),
    ("a URI SAN that is not a mesh identity is refused", WORKLOAD_ALICE, _csr(uri("https://alice.example/")), None,
     errors.CsrNamesInvalid, "INVALID_ARGUMENT"),
    ("a CSR for a foreign trust domain is refused", WORKLOAD_ALICE,
     _csr(uri(SpiffeId("evil.local", "default", "alice"))), None,
     errors.ForeignTrustDomain, "PERMISSION_DENIED"),
    ("a workload cannot ask for another identity", WORKLOAD_ALICE, _csr(uri(BOB)), None,
     errors.CsrIdentityMismatch, "PERMISSION_DENIED"),
    ("a workload cannot impersonate", WORKLOAD_ALICE, _csr(uri(BOB)), BOB.uri,
     errors.NotNodeAccount, "PERMISSION_DENIED"),
    ("an untrusted node agent account cannot impersonate", Caller(OTHER_AGENT, "node-a"), _csr(uri(ALICE)), ALICE.uri,
     errors.NotNodeAccount, "PERMISSION_DENIED"),
    ("a node account without a node binding cannot impersonate", NODE_UNBOUND, _csr(uri(ALICE)), ALICE.uri,
     errors.NodeUnknown, "PERMISSION_DENIED"),
    ("a node agent cannot get an identity whose pods run elsewhere", NODE_A, _csr(uri(BOB)), BOB.uri,
     errors.IdentityNotOnNode, "PERMISSION_DENIED"),
    ("a node agent cannot get an identity with no pods at all", NODE_A,
     _csr(uri(SpiffeId(TD, "x", "nobody"))), "spiffe://cluster.local/ns/x/sa/nobody",
     errors.IdentityNotOnNode, "PERMISSION_DENIED"),
    ("ImpersonatedIdentity that is not a SPIFFE id is invalid", NODE_A, _csr(uri(ALICE)), "alice",
     errors.InvalidImpersonation, "INVALID_ARGUMENT"),
    ("impersonating a foreign trust domain is refused", NODE_A, _csr(uri(ALICE)),
     "spiffe://evil.local/ns/default/sa/alice", errors.ForeignTrustDomain, "PERMISSION_DENIED"),
    ("the CSR must name the impersonated identity", NODE_A, _csr(uri(BOB)), ALICE.uri,
     errors.CsrIdentityMismatch, "PERMISSION_DENIED"),
    ("a node agent must impersonate to get a pod identity", NODE_A, _csr(uri(ALICE)), None,
     errors.CsrIdentityMismatch, "PERMISSION_DENIED"),
]


@pytest.mark.parametrize(
    ("caller", "csr", "impersonate", "error", "code"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_authorize_refuses(caller, csr, impersonate, error, code):
    request = CsrRequest(csr_pem=csr, impersonated_identity=impersonate)
    with pytest.raises(error) as exc:
        authorize(request, caller, _on_node, config=CONFIG)
    assert exc.value.grpc_code == code
    assert exc.value.reason and exc.value.reason != "refused"


def test_no_pod_on_node_message_says_which_identity_and_node():
    request = CsrRequest(csr_pem=_csr(uri(BOB)), impersonated_identity=BOB.uri)
    with pytest.raises(errors.IdentityNotOnNode, match=f"no pod with identity {BOB} on node node-a"):
        authorize(request, NODE_A, _on_node, config=CONFIG)


def test_trusted_node_accounts_are_configurable():
    config = NodeAuthConfig(trust_domain=TD, trusted_node_accounts=frozenset({"kube-system/node-agent"}))
    request = CsrRequest(csr_pem=_csr(uri(ALICE)), impersonated_identity=ALICE.uri)
    assert authorize(request, Caller(OTHER_AGENT, "node-a"), _on_node, config=config) == ALICE
    with pytest.raises(errors.NotNodeAccount):
        authorize(request, NODE_A, _on_node, config=config)


@pytest.mark.parametrize(
    ("requested", "granted"),
    [(0, 86400), (-1, 86400), (3600, 3600), (90 * 86400 + 1, 90 * 86400), (2**62, 90 * 86400)],
    ids=["zero asks for the default", "negative asks for the default", "a positive TTL is granted",
         "above the maximum is capped", "a value too large for a timedelta is capped, not an overflow"],
)
def test_grant_ttl(requested, granted):
    assert grant_ttl(requested, default=timedelta(hours=24), maximum=timedelta(days=90)) == granted


def test_caller_from_certificate_reads_identity_and_node_binding():
    now = datetime.now(UTC)
    key = certs.generate_key()
    root = certs.build_ca_certificate(
        key, common_name="r", organization=TD, not_before=now - timedelta(days=1), not_after=now + timedelta(days=9)
    )
    ca = CertificateAuthority(key, root, TD)
    node_cert = certs.load_chain(ca.issue_node_credential("node-a", now).chain_pem[0])[0]
    workload_cert = certs.load_chain(FakeCa().issue(ALICE).chain_pem[0])[0]
    server_cert = certs.load_chain(ca.issue_server_cert([], [], now).chain_pem[0])[0]
    assert caller_from_certificate(node_cert) == NODE_A
    assert caller_from_certificate(workload_cert) == WORKLOAD_ALICE
    with pytest.raises(errors.Unauthenticated):
        caller_from_certificate(server_cert)


BOUNDS = [
    ("a validity of 2**62 seconds is refused", {"validity_seconds": 2**62}, errors.ValidityInvalid),
    ("a validity of -2**62 seconds is refused", {"validity_seconds": -(2**62)}, errors.ValidityInvalid),
    ("a validity just past 100 years is refused", {"validity_seconds": MAX_VALIDITY_SECONDS + 1}, errors.ValidityInvalid),
    ("a CSR past the size limit is refused", {"csr_pem": "A" * (MAX_CSR_BYTES + 1)}, errors.CsrTooLarge),
    ("a valid CSR padded past the limit is refused", {"csr_pem": _csr(uri(ALICE)) + " " * MAX_CSR_BYTES}, errors.CsrTooLarge),
]


@pytest.mark.parametrize(("fields", "error"), [c[1:] for c in BOUNDS], ids=[c[0] for c in BOUNDS])
def test_requests_out_of_bounds_are_invalid_argument(fields, error):
    request = CsrRequest(**{"csr_pem": _csr(uri(ALICE)), **fields})
    with pytest.raises(error) as info:
        authorize(request, WORKLOAD_ALICE, _on_node, config=CONFIG)
    assert info.value.grpc_code == "INVALID_ARGUMENT"
    assert str(info.value)


def test_the_bounds_themselves_are_accepted():
    request = CsrRequest(csr_pem=_csr(uri(ALICE)), validity_seconds=MAX_VALIDITY_SECONDS)
    assert authorize(request, WORKLOAD_ALICE, _on_node, config=CONFIG) == ALICE
    small = NodeAuthConfig(trust_domain=TD, max_csr_bytes=len(request.csr_pem))
    assert authorize(request, WORKLOAD_ALICE, _on_node, config=small) == ALICE


def test_an_oversized_csr_is_refused_before_it_is_parsed():
    garbage = "not a CSR " * (MAX_CSR_BYTES // 10 + 1)
    with pytest.raises(errors.CsrTooLarge, match=f"at most {MAX_CSR_BYTES} are accepted"):
        authorize(CsrRequest(csr_pem=garbage), WORKLOAD_ALICE, _on_node, config=CONFIG)


def test_an_unauthenticated_caller_is_refused_before_bounds_are_checked():
    with pytest.raises(errors.Unauthenticated):
        authorize(CsrRequest(csr_pem="A" * (MAX_CSR_BYTES + 1), validity_seconds=2**62), None, _on_node, config=CONFIG)

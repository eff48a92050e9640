import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from istiod_lite.ca.authority import CLOCK_SKEW, NODE_MARKER_ORG, CertificateAuthority, node_of
from istiod_lite.ca.errors import CaMaterialInvalid, CsrUnparseable, ForeignTrustDomain
from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls import certs

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = SpiffeId("cluster.local", "default", "alice")


def _root(days: int = 3650) -> tuple[certs.SigningKey, x509.Certificate]:
    key = certs.generate_key()
    return key, certs.build_ca_certificate(
        key, common_name="root", organization="cluster.local", not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=days),
    )


@pytest.fixture
def ca() -> CertificateAuthority:
    key, root = _root()
    return CertificateAuthority(key, root, "cluster.local")


def _csr(identity: SpiffeId = ALICE) -> str:
    return certs.build_csr(certs.generate_key(), identity)


def _cert(pem: str) -> x509.Certificate:
    [cert] = certs.load_chain(pem)
    return cert


def test_workload_chain_is_leaf_then_root_and_the_leaf_names_only_the_identity(ca):
    chain = ca.sign_workload(_csr(), ALICE, 3600, NOW)
    assert len(chain) == 2
    leaf, root = _cert(chain[0]), _cert(chain[1])
    assert root == ca.signing_cert
    assert chain[1] == ca.roots_pem
    leaf.verify_directly_issued_by(root)
    assert certs.identity_of(leaf) == ALICE
    assert len(leaf.subject) == 0
    assert leaf.not_valid_before_utc == NOW - CLOCK_SKEW
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("ttl_seconds", "lifetime"),
    [
        (0, timedelta(hours=24)),
        (-5, timedelta(hours=24)),
        (10**9, timedelta(days=90)),
        (2**62, timedelta(days=90)),
        (600, timedelta(minutes=10)),
    ],
    ids=[
        "zero means the 24h default",
        "a negative TTL means the default",
        "a huge TTL is capped at the 90 day maximum",
        "a TTL too large for a timedelta is capped, not an overflow",
        "a short TTL is granted as asked",
    ],
)
def test_workload_validity(ca, ttl_seconds, lifetime):
    leaf = _cert(ca.sign_workload(_csr(), ALICE, ttl_seconds, NOW)[0])
    assert leaf.not_valid_after_utc - NOW == lifetime


def test_a_leaf_never_outlives_the_signing_certificate():
    key, root = _root(days=2)
    ca = CertificateAuthority(key, root, "cluster.local")
    leaf = _cert(ca.sign_workload(_csr(), ALICE, 30 * 86400, NOW)[0])
    assert leaf.not_valid_after_utc == root.not_valid_after_utc


def test_the_csr_subject_is_never_copied(ca):
    key = certs.generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_MARKER_ORG),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "node-a")]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE.uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    leaf = _cert(ca.sign_workload(pem, ALICE, 0, NOW)[0])
    assert len(leaf.subject) == 0
    assert node_of(leaf) is None


def test_sign_refuses_foreign_identities_and_garbage(ca):
    with pytest.raises(ForeignTrustDomain):
        ca.sign_workload(_csr(), SpiffeId("evil.local", "default", "alice"), 0, NOW)
    with pytest.raises(CsrUnparseable):
        ca.sign_workload("garbage", ALICE, 0, NOW)


def test_intermediate_ca_chain_is_leaf_intermediate_root():
    root_key, root = _root()
    int_key = certs.generate_key()
    intermediate = certs.build_ca_certificate(
        int_key, common_name="intermediate", organization="corp", not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=365), issuer=(root, root_key), path_length=0,
    )
    ca = CertificateAuthority(int_key, intermediate, "cluster.local", roots=[root])
    chain = ca.sign_workload(_csr(), ALICE, 0, NOW)
    assert [_cert(p) for p in chain] == [_cert(chain[0]), intermediate, root]
    _cert(chain[0]).verify_directly_issued_by(intermediate)


def test_node_credential_binds_the_node_account_to_one_node(ca):
    cred = ca.issue_node_credential("node-a", NOW)
    leaf = _cert(cred.chain_pem[0])
    assert certs.identity_of(leaf) == SpiffeId("cluster.local", "istio-system", "ztunnel")
    assert node_of(leaf) == "node-a"
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert certs.public_key_matches(certs.load_private_key(cred.key_pem), leaf)
    assert cred.roots_pem == ca.roots_pem
    assert "PRIVATE" not in repr(cred)


def test_node_names_must_be_kubernetes_names(ca):
    with pytest.raises(ValueError, match="node name"):
        ca.issue_node_credential("Node_A", NOW)


def test_server_cert_carries_the_istiod_name_and_given_names(ca):
    cred = ca.issue_server_cert(["istiod-lite.local"], ["127.0.0.1", "::1"], NOW)
    san = _cert(cred.chain_pem[0]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc", "istiod-lite.local"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def test_issued_by_us_accepts_our_valid_certs_only(ca):
    ours = _cert(ca.issue_node_credential("node-a", NOW).chain_pem[0])
    theirs = certs.load_chain(FakeCa().issue(ALICE).chain_pem[0])[0]
    assert ca.issued_by_us(ours, NOW)
    assert not ca.issued_by_us(ours, NOW + timedelta(days=365))
    assert not ca.issued_by_us(theirs, NOW)


def test_material_must_be_a_matching_ca_pair():
    key, root = _root()
    with pytest.raises(CaMaterialInvalid, match="does not match"):
        CertificateAuthority(certs.generate_key(), root, "cluster.local")
    leaf_key = certs.generate_key()
    leaf = certs.build_workload_certificate(
        leaf_key.public_key(), ALICE, issuer_cert=root, issuer_key=key, not_before=NOW, not_after=NOW + timedelta(days=1)
    )
    with pytest.raises(CaMaterialInvalid, match="CA:TRUE"):
        CertificateAuthority(leaf_key, leaf, "cluster.local")

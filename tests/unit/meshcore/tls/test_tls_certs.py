import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls import certs
from meshcore.tls.errors import (
    CertificateIdentityError,
    InvalidCertificate,
    InvalidCsr,
    InvalidPrivateKey,
    KeyMismatch,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = SpiffeId("cluster.local", "default", "alice")


def _pem(label: str, der: bytes) -> str:
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def test_csr_round_trip_carries_only_the_identity_as_uri_san():
    key = certs.generate_key()
    csr = certs.parse_csr(certs.build_csr(key, ALICE))
    assert isinstance(key.curve, ec.SECP256R1)
    assert len(csr.subject) == 0
    assert [n.value for n in certs.csr_names(csr)] == [ALICE.uri]
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert certs.public_key_matches(key, _self_sign(key))


def _self_sign(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return certs.build_ca_certificate(
        key, common_name="t", organization="t", not_before=NOW, not_after=NOW + timedelta(days=1)
    )


def _tampered_csr() -> str:
    der = bytearray(x509.load_pem_x509_csr(certs.build_csr(certs.generate_key(), ALICE).encode()).public_bytes(
        serialization.Encoding.DER
    ))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s value: still DER, wrong signature
    return _pem("CERTIFICATE REQUEST", bytes(der))


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        ("hello", "not_pem"),
        (b"\xff\xfe", "not_pem"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "malformed"),
        (_tampered_csr(), "bad_signature"),
    ],
    ids=[
        "text without a PEM header is not PEM",
        "non-ASCII bytes are not PEM",
        "a PEM block with a garbage body is malformed",
        "a CSR whose signature does not verify is refused",
    ],
)
def test_parse_csr_refuses_bad_input_with_a_reason(pem, reason):
    with pytest.raises(InvalidCsr) as exc:
        certs.parse_csr(pem)
    assert exc.value.reason == reason


def test_load_chain_reads_concatenated_and_listed_pems_in_order():
    a, b = FakeCa(), FakeCa()
    chain = certs.load_chain([a.roots_pem + b.roots_pem, a.roots_pem])
    assert chain == [a.root, b.root, a.root]


@pytest.mark.parametrize(
    "pems",
    [[], "", "garbage", ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]],
    ids=["an empty list is no chain", "an empty string is no chain", "text is no chain", "garbage PEM body"],
)
def test_load_chain_refuses_what_holds_no_certificate(pems):
    with pytest.raises(InvalidCertificate):
        certs.load_chain(pems)


@pytest.mark.parametrize(
    ("uris", "ok"),
    [
        ([ALICE.uri], True),
        ([], False),
        ([ALICE.uri, "spiffe://cluster.local/ns/default/sa/bob"], False),
        (["https://example.com/x"], False),
    ],
    ids=[
        "one spiffe URI SAN is the identity",
        "no URI SAN is refused",
        "two URI SANs are ambiguous and refused",
        "a non-spiffe URI SAN is refused",
    ],
)
def test_identity_of_requires_exactly_one_spiffe_uri(uris, ok):
    bundle = FakeCa().issue_with_sans(uris)
    leaf = certs.load_chain(bundle.chain_pem[0])[0]
    assert certs.uri_sans(leaf) == uris
    if ok:
        assert certs.identity_of(leaf) == ALICE
    else:
        with pytest.raises(CertificateIdentityError):
            certs.identity_of(leaf)


def test_workload_certificate_shape():
    ca = FakeCa(clock=lambda: NOW)
    leaf = certs.load_chain(ca.issue(ALICE).chain_pem[0])[0]
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    leaf.verify_directly_issued_by(ca.root)


def test_bundle_from_ca_response_splits_leaf_intermediates_and_roots_and_refreshes_at_half_life():
    ca = FakeCa(clock=lambda: NOW, ttl=timedelta(hours=24))
    bundle = ca.issue(ALICE)
    assert bundle.identity == ALICE
    assert bundle.roots_pem == ca.roots_pem
    assert bundle.not_before == NOW
    assert bundle.not_after == NOW + timedelta(hours=24)
    assert bundle.refresh_at == NOW + timedelta(hours=12)
    assert bundle.is_valid_at(NOW + timedelta(hours=23))
    assert not bundle.is_valid_at(NOW + timedelta(hours=25))
    assert "PRIVATE KEY" not in repr(bundle)


def test_bundle_refuses_a_leaf_that_does_not_certify_our_key():
    ca = FakeCa()
    bundle = ca.issue(ALICE)
    other_key = certs.key_to_pem(certs.generate_key())
    with pytest.raises(KeyMismatch):
        certs.CertBundle.from_ca_response(other_key, [*bundle.chain_pem, bundle.roots_pem])


def test_bundle_refuses_a_chain_without_a_root():
    bundle = FakeCa().issue(ALICE)
    with pytest.raises(InvalidCertificate):
        certs.CertBundle.from_ca_response(bundle.key_pem, [bundle.chain_pem[0]])


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        .decode(),
    ],
    ids=["text is not a key", "an encrypted key cannot be loaded without a password"],
)
def test_load_private_key_refuses_unusable_keys(pem):
    with pytest.raises(InvalidPrivateKey):
        certs.load_private_key(pem)


def test_rsa_ca_keys_can_sign_for_plugged_in_enterprise_cas():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = certs.build_ca_certificate(
        key, common_name="corp", organization="corp", not_before=NOW, not_after=NOW + timedelta(days=1)
    )
    leaf = certs.build_workload_certificate(
        certs.generate_key().public_key(), ALICE, issuer_cert=root, issuer_key=key,
        not_before=NOW, not_after=NOW + timedelta(hours=1),
    )
    leaf.verify_directly_issued_by(root)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive"):
        certs.build_ca_certificate(
            certs.generate_key(), common_name="t", organization="t",
            not_before=datetime(2026, 1, 1), not_after=datetime(2027, 1, 1),
        )


def test_bundle_refuses_a_leaf_not_signed_by_the_returned_roots():
    bundle = FakeCa().issue(ALICE)
    with pytest.raises(InvalidCertificate, match="not signed"):
        certs.CertBundle.from_ca_response(bundle.key_pem, [bundle.chain_pem[0], FakeCa().roots_pem])


def test_an_issued_workload_bundle_holds_a_fresh_key_certified_by_the_root_for_exactly_its_window():
    key = certs.generate_key()
    root = certs.build_ca_certificate(
        key, common_name="t", organization="t", not_before=NOW, not_after=NOW + timedelta(days=1)
    )
    bundle = certs.issue_workload_bundle(
        ALICE, issuer_cert=root, issuer_key=key, not_before=NOW, not_after=NOW + timedelta(hours=1)
    )
    leaf = certs.load_chain(bundle.chain_pem)[0]
    leaf.verify_directly_issued_by(root)
    assert certs.public_key_matches(certs.load_private_key(bundle.key_pem), leaf)
    assert not certs.public_key_matches(key, leaf)
    assert (bundle.identity, bundle.roots_pem) == (ALICE, certs.cert_to_pem(root))
    assert (bundle.not_before, bundle.not_after) == (NOW, NOW + timedelta(hours=1))

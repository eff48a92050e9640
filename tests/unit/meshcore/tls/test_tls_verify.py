import pytest
from cryptography.hazmat.primitives import serialization

from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls import certs
from meshcore.tls.errors import (
    MalformedPeerCertificate,
    NoPeerCertificate,
    NoSpiffeIdentity,
    UnexpectedIdentity,
    WrongTrustDomain,
)
from meshcore.tls.verify import verify_peer

ALICE = SpiffeId("cluster.local", "default", "alice")
BOB = SpiffeId("cluster.local", "default", "bob")
MALLORY = SpiffeId("evil.local", "default", "alice")

_CA = FakeCa()


def _der(bundle: certs.CertBundle) -> bytes:
    return certs.load_chain(bundle.chain_pem[0])[0].public_bytes(serialization.Encoding.DER)


def _leaf(identity: SpiffeId) -> bytes:
    return _der(_CA.issue(identity))


def _leaf_with(uris: list[str]) -> bytes:
    return _der(_CA.issue_with_sans(uris))


@pytest.mark.parametrize(
    ("leaf", "expected", "trust_domain", "outcome"),
    [
        (_leaf(ALICE), [ALICE], "cluster.local", ALICE),
        (_leaf(ALICE), [BOB, ALICE], None, ALICE),
        (_leaf(ALICE), None, "cluster.local", ALICE),
        (_leaf(ALICE), None, None, ALICE),
        (_leaf(BOB), [ALICE], "cluster.local", UnexpectedIdentity),
        (_leaf(ALICE), [], None, UnexpectedIdentity),
        (_leaf(MALLORY), None, "cluster.local", WrongTrustDomain),
        (_leaf(MALLORY), [ALICE], "cluster.local", WrongTrustDomain),
        (_leaf_with([]), None, "cluster.local", NoSpiffeIdentity),
        (_leaf_with([ALICE.uri, BOB.uri]), [ALICE], None, NoSpiffeIdentity),
        (_leaf_with(["spiffe://cluster.local/workload/alice"]), None, None, NoSpiffeIdentity),
        (None, [ALICE], None, NoPeerCertificate),
        (b"", None, None, NoPeerCertificate),
        (b"\x30\x03\x02\x01\x01", None, None, MalformedPeerCertificate),
    ],
    ids=[
        "the expected identity in our trust domain is accepted",
        "any one of several expected identities is accepted",
        "a server checking only the trust domain accepts any identity in it",
        "with no constraints the identity is just returned",
        "another service account than expected is refused",
        "an empty expected list accepts nobody",
        "a peer from another trust domain is refused",
        "the trust domain is checked before the expected list",
        "a certificate without URI SAN names no identity",
        "two URI SANs are ambiguous and refused even if one is expected",
        "a non-SPIFFE-shaped URI is refused",
        "no peer certificate is refused",
        "an empty certificate is refused",
        "bytes that are not a certificate are refused",
    ],
)
def test_verify_peer(leaf, expected, trust_domain, outcome):
    if isinstance(outcome, SpiffeId):
        assert verify_peer(leaf, expected=expected, trust_domain=trust_domain) == outcome
    else:
        with pytest.raises(outcome):
            verify_peer(leaf, expected=expected, trust_domain=trust_domain)


def test_unexpected_identity_message_names_both_sides():
    with pytest.raises(UnexpectedIdentity) as exc:
        verify_peer(_leaf(BOB), expected=[ALICE])
    assert exc.value.got == BOB
    assert exc.value.expected == (ALICE,)
    assert str(BOB) in str(exc.value) and str(ALICE) in str(exc.value)

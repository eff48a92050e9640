"""Service-account tokens: what verifies, what is refused and why, and the issuer key pair on disk."""

from __future__ import annotations

import base64
import json
import multiprocessing
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from meshcore import satoken
from meshcore.satoken import BoundObject, issue_token, verify_token

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
POD = BoundObject("waypoint-abcde", "0d3c6a1e-uid")
NODE = BoundObject("node-1")


def _token(key=KEY, **kw) -> str:
    args = dict(namespace="default", service_account="waypoint", pod=POD, node=NODE, now=NOW)
    args.update(kw)
    return issue_token(key, **args)


def _signed(claims: dict, key=KEY, alg="ES256", headers=None) -> str:
    """A token with arbitrary claims, signed properly (to test the claim checks behind the signature)."""
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def _claims(**over) -> dict:
    base = {
        "iss": satoken.DEFAULT_ISSUER,
        "sub": "system:serviceaccount:default:waypoint",
        "aud": ["istio-ca"],
        "iat": int(NOW.timestamp()),
        "nbf": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 3600,
        "kubernetes.io": {
            "namespace": "default",
            "serviceaccount": {"name": "waypoint"},
            "pod": {"name": "waypoint-abcde", "uid": "0d3c6a1e-uid"},
        },
    }
    for k, v in over.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


def test_an_issued_token_verifies_to_the_pod_it_names():
    got = verify_token(_token(), KEY.public_key(), now=NOW + timedelta(minutes=5))
    assert (got.namespace, got.service_account) == ("default", "waypoint")
    assert got.pod == POD
    assert got.node == NODE
    assert got.subject == "system:serviceaccount:default:waypoint"
    assert got.audiences == ("istio-ca",)
    assert got.expires_at == NOW + satoken.DEFAULT_TTL


def test_an_issued_token_has_kubernetes_claims_and_a_key_id():
    token = _token(service_account_uid="sa-uid")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["kid"] == satoken.key_id(KEY.public_key())
    assert claims["aud"] == ["istio-ca"]
    assert claims["kubernetes.io"] == {
        "namespace": "default",
        "serviceaccount": {"name": "waypoint", "uid": "sa-uid"},
        "pod": {"name": "waypoint-abcde", "uid": "0d3c6a1e-uid"},
        "node": {"name": "node-1"},
    }
    assert claims["exp"] - claims["iat"] == 3600


def _swap_payload(token: str, claims: dict) -> str:
    header, _, sig = token.split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{sig}"


REFUSED = [
    ("a token past its expiry plus leeway is expired", _token(), NOW + timedelta(hours=1, minutes=2),
     satoken.TokenExpired, "expired"),
    ("a token used before nbf minus leeway is not yet valid", _token(), NOW - timedelta(minutes=5),
     satoken.TokenNotYetValid, "not valid before"),
    ("a token for another audience is refused", _token(audiences=("api",)), NOW,
     satoken.TokenWrongAudience, "requires 'istio-ca'"),
    ("a token signed by another issuer key is refused", _token(key=OTHER_KEY), NOW,
     satoken.TokenBadSignature, "another issuer key"),
    ("a token signed by another key without a kid fails the signature check",
     _signed(_claims(), key=OTHER_KEY), NOW, satoken.TokenBadSignature, "does not verify"),
    ("a token whose payload was changed fails the signature check",
     _swap_payload(_token(), _claims(sub="system:serviceaccount:default:admin")), NOW,
     satoken.TokenBadSignature, "does not verify"),
    ("an HS256 token is refused", jwt.encode(_claims(), "secret" * 8, algorithm="HS256"), NOW,
     satoken.TokenBadSignature, "only ES256"),
    ("an unsigned token is refused", jwt.encode(_claims(), None, algorithm="none"), NOW,
     satoken.TokenBadSignature, "only ES256"),
    ("a string that is not a JWT is malformed", "not-a-token", NOW, satoken.TokenMalformed, "not a JWT"),
    ("a JWT whose header is not JSON is malformed", "e30x.e30.e30", NOW, satoken.TokenMalformed, "header"),
    ("an oversized token is malformed", "a." + "b" * 20000 + ".c", NOW, satoken.TokenMalformed, "bytes"),
    ("a token from another issuer is refused", _signed(_claims(iss="https://evil.example")), NOW,
     satoken.TokenWrongIssuer, "issuer"),
    ("a token without exp is refused", _signed(_claims(exp=None)), NOW, satoken.TokenClaimsInvalid, "'exp'"),
    ("a token whose exp is a string is refused", _signed(_claims(exp="tomorrow")), NOW,
     satoken.TokenClaimsInvalid, "'exp'"),
    ("a token that expires before it starts is refused",
     _signed(_claims(exp=int(NOW.timestamp()) - 10)), NOW, satoken.TokenClaimsInvalid, "before it becomes valid"),
    ("a token without kubernetes claims is refused", _signed(_claims(**{"kubernetes.io": None})), NOW,
     satoken.TokenClaimsInvalid, "kubernetes.io"),
    ("a token whose subject disagrees with its claims is refused",
     _signed(_claims(sub="system:serviceaccount:kube-system:admin")), NOW, satoken.TokenClaimsInvalid, "subject"),
    ("a token with a bad namespace name is refused",
     _signed(_claims(**{"kubernetes.io": {"namespace": "Bad_NS", "serviceaccount": {"name": "w"}}})), NOW,
     satoken.TokenClaimsInvalid, "namespace"),
    ("a pod binding without a uid is refused",
     _signed(_claims(**{"kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "waypoint"},
                                           "pod": {"name": "p"}}})), NOW, satoken.TokenClaimsInvalid, "uid"),
    ("aud that is a number is refused", _signed(_claims(aud=7)), NOW, satoken.TokenClaimsInvalid, "'aud'"),
]


@pytest.mark.parametrize(("token", "now", "error", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_verify_refuses(token, now, error, words):
    with pytest.raises(error, match=words) as info:
        verify_token(token, KEY.public_key(), now=now)
    assert info.value.reason.startswith("token_")


ACCEPTED = [
    ("a token within the leeway after exp still verifies", NOW + timedelta(hours=1, seconds=30)),
    ("a token within the leeway before nbf still verifies", NOW - timedelta(seconds=30)),
]


@pytest.mark.parametrize("now", [r[1] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_verify_tolerates_clock_skew(now):
    verify_token(_token(), KEY.public_key(), now=now)


def test_zero_leeway_makes_the_expiry_exact():
    with pytest.raises(satoken.TokenExpired):
        verify_token(_token(), KEY.public_key(), now=NOW + timedelta(hours=1), leeway=timedelta(0))


def test_a_single_string_audience_is_accepted_as_in_rfc_7519():
    got = verify_token(_signed(_claims(aud="istio-ca")), KEY.public_key(), now=NOW)
    assert got.audiences == ("istio-ca",)


def test_an_unbound_token_verifies_without_a_pod():
    claims = _claims(**{"kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "waypoint"}}})
    got = verify_token(_signed(claims), KEY.public_key(), now=NOW)
    assert got.pod is None and got.node is None


@given(st.text(max_size=300))
def test_arbitrary_text_is_refused_with_a_token_error(text):
    with pytest.raises(satoken.TokenError):
        verify_token(text, KEY.public_key(), now=NOW)


@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0, max_value=2))
def test_a_corrupted_part_is_refused_with_a_token_error(junk, part):
    parts = _token().split(".")
    parts[part] = base64.urlsafe_b64encode(junk).rstrip(b"=").decode()
    with pytest.raises(satoken.TokenError):
        verify_token(".".join(parts), KEY.public_key(), now=NOW)


ISSUE_REFUSED = [
    ("a service account that is not a Kubernetes name", {"service_account": "Not Valid"}),
    ("a zero lifetime", {"ttl": timedelta(0)}),
    ("no audience", {"audiences": ()}),
]


@pytest.mark.parametrize("kw", [r[1] for r in ISSUE_REFUSED], ids=[r[0] for r in ISSUE_REFUSED])
def test_issue_refuses(kw):
    with pytest.raises(ValueError):
        _token(**kw)


# --- the issuer key pair ----------------------------------------------------------------------------


def test_the_issuer_pair_is_created_private_and_reloaded_unchanged(tmp_path: Path):
    key = satoken.ensure_issuer_key(tmp_path)
    directory = tmp_path / "sa-issuer"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "pub.pem").stat().st_mode) == 0o644
    again = satoken.ensure_issuer_key(tmp_path)
    assert satoken.key_id(again.public_key()) == satoken.key_id(key.public_key())
    public = satoken.load_issuer_public_key(tmp_path)
    assert satoken.key_id(public) == satoken.key_id(key.public_key())
    assert [p.name for p in tmp_path.iterdir()] == ["sa-issuer"]  # no temporary directory left


def _ensure_kid(state_dir: str) -> str:
    return satoken.key_id(satoken.ensure_issuer_key(Path(state_dir)).public_key())


def test_concurrent_creators_end_with_one_pair(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        kids = pool.map(_ensure_kid, [str(tmp_path)] * 8)
    assert len(set(kids)) == 1
    assert satoken.key_id(satoken.load_issuer_public_key(tmp_path)) == kids[0]


def test_a_group_readable_issuer_key_is_refused(tmp_path: Path):
    satoken.ensure_issuer_key(tmp_path)
    (tmp_path / "sa-issuer" / "key.pem").chmod(0o640)
    with pytest.raises(satoken.IssuerKeyError, match="chmod 600"):
        satoken.ensure_issuer_key(tmp_path)


def test_a_damaged_public_key_says_what_to_do(tmp_path: Path):
    satoken.ensure_issuer_key(tmp_path)
    (tmp_path / "sa-issuer" / "pub.pem").write_text("garbage")
    with pytest.raises(satoken.IssuerKeyError, match="restore"):
        satoken.load_issuer_public_key(tmp_path)


def test_a_missing_public_key_names_the_file(tmp_path: Path):
    with pytest.raises(satoken.IssuerKeyError, match="pub.pem"):
        satoken.load_issuer_public_key(tmp_path)


def test_a_token_file_is_replaced_atomically_with_its_mode(tmp_path: Path):
    path = tmp_path / "istio-token"
    satoken.write_private_file(path, b"one")
    satoken.write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["istio-token"]

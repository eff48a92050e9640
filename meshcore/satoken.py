"""Service-account tokens shaped like Kubernetes' projected tokens: issue, verify, and the issuer key.

A token is a JWT signed ES256 (ECDSA P-256, SHA-256) with Kubernetes' claims::

    iss  issuer URL                       sub  system:serviceaccount:<namespace>:<service account>
    aud  [audiences] (the CA wants "istio-ca")   iat / nbf / exp  seconds since the epoch
    kubernetes.io: {namespace, serviceaccount: {name, uid?}, pod: {name, uid}, node: {name, uid?}}

``issue_token`` signs one (the local cluster's kubelet, once per pod start and before expiry);
``verify_token`` checks signature, algorithm, issuer, audience, ``nbf``/``exp`` against ``now`` (with a
leeway for clock skew, as Kubernetes' validator has) and the claims' shape, and returns a typed
``ServiceAccountToken`` or raises a ``TokenError`` subclass whose message says what is wrong. Time
arrives as ``now``; these two functions read no clock and no file.

How this maps to Kubernetes: there, the kubelet asks the API server for a projected token (TokenRequest)
and mounts it at ``/var/run/secrets/tokens/istio-token``; istiod checks it with a TokenReview, and the API
server refuses tokens whose pod is gone or was re-created (uid bound in the token). On the local
cluster the embedded store plays the API server, so the issuer key pair lives beside it in the state
directory (``<state-dir>/sa-issuer/``: ``key.pem`` 0600 in a 0700 directory, ``pub.pem`` readable);
the kubelet signs with the private key, istiod_lite verifies with the public key and looks the pod up
in the store itself (``istiod_lite.ca.tokenauth``). ``ensure_issuer_key`` creates the pair atomically
(both files appear at once, whichever process comes first wins; the others load its pair).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
CA_AUDIENCE = "istio-ca"  # the audience Istio's CA requires (Istio's default TOKEN_AUDIENCES)
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"  # Kubernetes' default --service-account-issuer
DEFAULT_TTL = timedelta(hours=1)
DEFAULT_LEEWAY = timedelta(seconds=60)  # clock skew tolerated on nbf/exp (Kubernetes' validator allows 60 s)
MAX_TOKEN_BYTES = 16 * 1024  # a projected token is ~1 KiB; anything far larger is not one of ours
SUBJECT_PREFIX = "system:serviceaccount:"
K8S_CLAIM = "kubernetes.io"

ISSUER_DIR = "sa-issuer"
ISSUER_KEY_FILE = "key.pem"
ISSUER_PUB_FILE = "pub.pem"

# Kubernetes object names in tokens: DNS-1123 subdomains (namespaces and service accounts are a subset).
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


# --- errors -----------------------------------------------------------------------------------------


class TokenError(ValueError):
    """A token that does not verify; ``reason`` is a short stable label for metrics and logs."""

    reason = "token_invalid"


class TokenMalformed(TokenError):
    reason = "token_malformed"


class TokenBadSignature(TokenError):
    reason = "token_bad_signature"


class TokenExpired(TokenError):
    reason = "token_expired"


class TokenNotYetValid(TokenError):
    reason = "token_not_yet_valid"


class TokenWrongAudience(TokenError):
    reason = "token_wrong_audience"


class TokenWrongIssuer(TokenError):
    reason = "token_wrong_issuer"


class TokenClaimsInvalid(TokenError):
    reason = "token_claims_invalid"


class IssuerKeyError(Exception):
    """The issuer key files are unreadable, damaged or too open; the message names the file and the fix."""


# --- values -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoundObject:
    """An object a token is bound to (pod or node): its name and, when known, uid."""

    name: str
    uid: str = ""


@dataclass(frozen=True, slots=True)
class ServiceAccountToken:
    """What a verified token says: who (namespace, service account) and which pod on which node."""

    namespace: str
    service_account: str
    pod: BoundObject | None  # None: the token is not bound to a pod (a legacy or TokenRequest-only token)
    node: BoundObject | None
    service_account_uid: str
    issuer: str
    audiences: tuple[str, ...]
    issued_at: datetime
    not_before: datetime
    expires_at: datetime

    @property
    def subject(self) -> str:
        return f"{SUBJECT_PREFIX}{self.namespace}:{self.service_account}"


# --- issue / verify ---------------------------------------------------------------------------------


def issue_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    namespace: str,
    service_account: str,
    pod: BoundObject,
    node: BoundObject | None,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
    audiences: Sequence[str] = (CA_AUDIENCE,),
    issuer: str = DEFAULT_ISSUER,
    service_account_uid: str = "",
) -> str:
    """A signed projected token for ``pod`` running as ``namespace/service_account``, valid ``ttl`` from ``now``."""
    for what, value in (("namespace", namespace), ("service account", service_account), ("pod", pod.name)):
        if not _NAME_RE.match(value):
            raise ValueError(f"{what} {value!r} is not a valid Kubernetes name")
    if ttl <= timedelta(0):
        raise ValueError(f"token lifetime {ttl} must be positive")
    if not audiences:
        raise ValueError("a token needs at least one audience")
    iat = int(now.timestamp())
    k8s: dict[str, Any] = {
        "namespace": namespace,
        "serviceaccount": {"name": service_account, **({"uid": service_account_uid} if service_account_uid else {})},
        "pod": {"name": pod.name, "uid": pod.uid},
    }
    if node is not None:
        k8s["node"] = {"name": node.name, **({"uid": node.uid} if node.uid else {})}
    claims = {
        "iss": issuer,
        "sub": f"{SUBJECT_PREFIX}{namespace}:{service_account}",
        "aud": list(audiences),
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(ttl.total_seconds()),
        K8S_CLAIM: k8s,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id(key.public_key())})


def verify_token(
    token: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: datetime,
    audience: str = CA_AUDIENCE,
    issuer: str | None = DEFAULT_ISSUER,
    leeway: timedelta = DEFAULT_LEEWAY,
) -> ServiceAccountToken:
    """The verified content of ``token``; raises a ``TokenError`` subclass saying what is wrong.

    ``issuer=None`` accepts any ``iss`` (the key alone decides). Checks, in order: size and shape,
    header (ES256, ``kid`` of ``public_key`` when present), signature, issuer, audience, times, claims.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenMalformed(f"token is {len(token)} bytes; a service-account token is at most {MAX_TOKEN_BYTES}")
    if token.count(".") != 2:
        raise TokenMalformed("token is not a JWT (expected three dot-separated parts); send the projected token file")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise TokenMalformed(f"token header does not decode: {e}") from e
    if header.get("alg") != ALGORITHM:
        raise TokenBadSignature(f"token is signed with {header.get('alg')!r}; only {ALGORITHM} tokens are accepted")
    expected_kid = key_id(public_key)
    kid = header.get("kid")
    if kid is not None and kid != expected_kid:
        raise TokenBadSignature(
            f"token is signed by another issuer key (kid {kid!r}, expected {expected_kid!r}); was it issued by "
            "another cluster, or before the issuer key was replaced? Restart the pod for a fresh token"
        )
    try:
        claims = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.InvalidSignatureError as e:
        raise TokenBadSignature("token signature does not verify with the issuer's public key") from e
    except jwt.DecodeError as e:
        raise TokenMalformed(f"token does not decode: {e}") from e
    except jwt.PyJWTError as e:
        raise TokenMalformed(f"token rejected: {e}") from e
    return _check_claims(claims, now=now, audience=audience, issuer=issuer, leeway=leeway)


def _check_claims(
    claims: Mapping[str, Any], *, now: datetime, audience: str, issuer: str | None, leeway: timedelta
) -> ServiceAccountToken:
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise TokenClaimsInvalid("token has no 'iss' (issuer) claim")
    if issuer is not None and iss != issuer:
        raise TokenWrongIssuer(f"token issuer is {iss!r}; this CA accepts tokens of {issuer!r}")
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else None
    if audiences is None or not all(isinstance(a, str) for a in audiences):
        raise TokenClaimsInvalid("token 'aud' claim must be a string or a list of strings")
    if audience not in audiences:
        raise TokenWrongAudience(
            f"token audiences are {list(audiences)}; this CA requires {audience!r} "
            f"(request the token with audience {audience!r})"
        )
    times = {}
    for name in ("iat", "nbf", "exp"):
        value = claims.get(name)
        if name == "nbf" and value is None:
            value = claims.get("iat")
        if not isinstance(value, int) or isinstance(value, bool):
            raise TokenClaimsInvalid(f"token claim {name!r} must be an integer number of seconds, got {value!r}")
        try:
            times[name] = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as e:
            raise TokenClaimsInvalid(f"token claim {name!r}={value} is not a time") from e
    if times["exp"] <= times["nbf"]:
        raise TokenClaimsInvalid("token expires before it becomes valid ('exp' <= 'nbf')")
    if now >= times["exp"] + leeway:
        raise TokenExpired(
            f"token expired at {times['exp'].isoformat()} (now {now.isoformat()}); the kubelet refreshes it "
            "before expiry: is the pod's token file being refreshed?"
        )
    if now + leeway < times["nbf"]:
        raise TokenNotYetValid(
            f"token is not valid before {times['nbf'].isoformat()} (now {now.isoformat()}); check the clocks"
        )

    k8s = claims.get(K8S_CLAIM)
    if not isinstance(k8s, dict):
        raise TokenClaimsInvalid(f"token has no {K8S_CLAIM!r} claim; it is not a Kubernetes service-account token")
    namespace = _name(k8s.get("namespace"), f"{K8S_CLAIM}.namespace")
    sa = k8s.get("serviceaccount")
    if not isinstance(sa, dict):
        raise TokenClaimsInvalid(f"token has no {K8S_CLAIM}.serviceaccount claim")
    service_account = _name(sa.get("name"), f"{K8S_CLAIM}.serviceaccount.name")
    sub = claims.get("sub")
    want_sub = f"{SUBJECT_PREFIX}{namespace}:{service_account}"
    if sub != want_sub:
        raise TokenClaimsInvalid(f"token subject {sub!r} does not match its {K8S_CLAIM} claims ({want_sub!r})")
    return ServiceAccountToken(
        namespace=namespace,
        service_account=service_account,
        pod=_bound(k8s.get("pod"), "pod", uid_required=True),
        node=_bound(k8s.get("node"), "node", uid_required=False),
        service_account_uid=_uid(sa.get("uid"), f"{K8S_CLAIM}.serviceaccount.uid"),
        issuer=iss,
        audiences=audiences,
        issued_at=times["iat"],
        not_before=times["nbf"],
        expires_at=times["exp"],
    )


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise TokenClaimsInvalid(f"token claim {where} must be a Kubernetes name, got {value!r}")
    return value


def _uid(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 128:
        raise TokenClaimsInvalid(f"token claim {where} must be a uid string, got {value!r}")
    return value


def _bound(value: object, what: str, *, uid_required: bool) -> BoundObject | None:
    if value is None:
        return None
    where = f"{K8S_CLAIM}.{what}"
    if not isinstance(value, dict):
        raise TokenClaimsInvalid(f"token claim {where} must be an object with name and uid")
    uid = _uid(value.get("uid"), f"{where}.uid")
    if uid_required and not uid:
        raise TokenClaimsInvalid(f"token claim {where} has no uid; a pod-bound token names the pod's uid")
    return BoundObject(name=_name(value.get("name"), f"{where}.name"), uid=uid)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The ``kid`` of a key, as Kubernetes derives it: base64url(SHA-256(DER public key)), unpadded."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


# --- the issuer key pair in the state directory -----------------------------------------------------


def issuer_dir(state_dir: Path) -> Path:
    return state_dir / ISSUER_DIR


def ensure_issuer_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The issuer's private key from ``<state_dir>/sa-issuer/``; the pair is generated there if missing.

    Creation is atomic: the pair is written into a private temporary directory that is renamed into
    place, so concurrent callers (istiod_lite, the kubelet) never see half a pair, and all end up
    with the same one. Raises ``IssuerKeyError`` for damaged, unreadable or too open files.
    """
    directory = issuer_dir(state_dir)
    if not directory.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        tmp = Path(tempfile.mkdtemp(prefix=f".{ISSUER_DIR}-", dir=state_dir))  # mode 0700
        try:
            _write(tmp / ISSUER_KEY_FILE, _private_pem(key), 0o600)
            _write(tmp / ISSUER_PUB_FILE, _public_pem(key.public_key()), 0o644)
            try:
                os.rename(tmp, directory)  # fails when another process made it first: use theirs
            except OSError:
                if not directory.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return load_issuer_private_key(state_dir)


def load_issuer_private_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    path = issuer_dir(state_dir) / ISSUER_KEY_FILE
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as e:
        raise IssuerKeyError(f"cannot read the service-account issuer key {path}: {e.strerror}") from e
    if mode & 0o077:
        raise IssuerKeyError(f"{path} has mode {mode:04o}; the token issuer key must be private: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise IssuerKeyError(f"{path} is not a PEM private key ({e}); {_RESTORE.format(dir=path.parent)}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IssuerKeyError(f"{path} is not an ECDSA P-256 key; {_RESTORE.format(dir=path.parent)}")
    return key


def load_issuer_public_key(state_dir: Path) -> ec.EllipticCurvePublicKey:
    path = issuer_dir(state_dir) / ISSUER_PUB_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IssuerKeyError(f"cannot read the service-account issuer public key {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise IssuerKeyError(f"{path} is not a PEM public key ({e}); {_RESTORE.format(dir=path.parent)}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IssuerKeyError(f"{path} is not an ECDSA P-256 public key; {_RESTORE.format(dir=path.parent)}")
    return key


_RESTORE = (
    "restore {dir} from a backup, or remove the directory to generate a new issuer pair (running pods then "
    "need new tokens: restart them)"
)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically with ``data`` at ``mode`` (a token file a reader may open at any time)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    _write(tmp, data, mode)
    os.replace(tmp, path)

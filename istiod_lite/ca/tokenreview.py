"""Who a bearer token stands for: the pluggable verifier of the token CA port (rule 2 of ``tokenauth``).

Role: ``token_verifier`` picks the verifier the store setting implies. On the embedded store it is the
local issuer's public key (``LocalVerifier``). On Kubernetes it is the API server, as istiod
authenticates proxies there (``TokenReviewVerifier``): the token is posted in an
``authentication.k8s.io/v1 TokenReview`` with the audience ``istio-ca``, and ``claims_from_review`` turns
the answer into the same ``ServiceAccountToken`` the local verifier gives, so rules 3-5
(``tokenauth.authorize_verified``) and the node binding (``tokenauth.node_binding``) are the same for both.

Invariants (fail closed):
- Only ``authenticated: true`` with a ``system:serviceaccount:NS:SA`` user whose audiences include the
  one asked for is accepted; anything else is ``TokenUnauthenticated`` with the API server's reason.
- The pod binding comes only from the user's ``extra`` fields ``authentication.kubernetes.io/pod-name``
  and ``pod-uid`` (and ``node-name``), each exactly one value; a token without them is not pod-bound and
  rule 3 refuses it.
- The API server unreachable or answering an error is not the caller's fault: ``VerifierUnavailable``
  (gRPC UNAVAILABLE, retryable), never a grant. Tokens are never logged.
- One ``create`` on ``tokenreviews`` per call (``TOKEN_REVIEW_VERBS``: a ClusterRole rule; Istio's
  istiod has the same).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from istiod_lite.ca.errors import CsrRefused
from istiod_lite.ca.tokenauth import TokenAuthConfig, TokenUnauthenticated, verify_locally
from meshcore import satoken
from meshcore.store.errors import StoreUnavailable
from meshcore.store.kubernetes import ApiFailure, api_call

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
TOKEN_REVIEW_VERBS: tuple[str, ...] = ("create",)
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"

Verifier = Callable[[str], Awaitable[satoken.ServiceAccountToken]]


class VerifierUnavailable(CsrRefused):
    """The token could not be checked (the API server is unreachable or failed): retry later."""

    grpc_code = "UNAVAILABLE"
    reason = "token_review_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(f"the token could not be verified now ({detail}); retry")


@dataclass(frozen=True, slots=True)
class LocalVerifier:
    """Tokens of the local issuer (the embedded store's), checked with its public key."""

    config: TokenAuthConfig
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def __call__(self, token: str) -> satoken.ServiceAccountToken:
        return verify_locally(token, self.config, self.clock())


class TokenReviewVerifier:
    """Tokens checked by the API server's TokenReview (Kubernetes' own and projected tokens)."""

    def __init__(self, api: ApiClient, *, audience: str = satoken.CA_AUDIENCE, timeout: float = 10.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.api = api
        self._audience = audience
        self._timeout = timeout
        self._clock = clock

    async def __call__(self, token: str) -> satoken.ServiceAccountToken:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self._audience]}}
        try:
            review = await api_call(self.api, "POST", TOKEN_REVIEWS, body=body, request_timeout=self._timeout)
        except ApiFailure as e:
            hint = " (RBAC: istiod-lite needs create on tokenreviews)" if e.status == 403 else ""
            raise VerifierUnavailable(f"TokenReview failed: {e}{hint}") from None
        except StoreUnavailable as e:
            raise VerifierUnavailable(str(e)) from None
        return claims_from_review(review, audience=self._audience, now=self._clock())


def claims_from_review(review: Mapping[str, Any], *, audience: str, now: datetime) -> satoken.ServiceAccountToken:
    """What an answered TokenReview vouches for, or ``TokenUnauthenticated`` saying why not (pure)."""
    status = review.get("status")
    if not isinstance(status, Mapping):
        raise TokenUnauthenticated("the API server's TokenReview answer has no status")
    if status.get("authenticated") is not True:
        error = status.get("error")
        raise TokenUnauthenticated(f"the API server did not authenticate the token: {error or 'no reason given'}")
    audiences = status.get("audiences")
    if isinstance(audiences, list) and audience not in audiences:
        raise TokenUnauthenticated(f"token is not for audience {audience!r} (the API server says {audiences})",
                                   "token_audience")
    user = status.get("user")
    user = user if isinstance(user, Mapping) else {}
    username = user.get("username")
    if not isinstance(username, str) or not username.startswith(satoken.SUBJECT_PREFIX):
        raise TokenUnauthenticated(f"token is not a service account's (user {username!r})", "token_not_service_account")
    namespace, sep, account = username[len(satoken.SUBJECT_PREFIX):].partition(":")
    if not sep or not namespace or not account or ":" in account:
        raise TokenUnauthenticated(f"token user {username!r} is not system:serviceaccount:NAMESPACE:NAME",
                                   "token_not_service_account")
    extra = user.get("extra")
    extra = extra if isinstance(extra, Mapping) else {}
    pod_name, pod_uid = _one(extra, EXTRA_POD_NAME), _one(extra, EXTRA_POD_UID)
    node_name = _one(extra, EXTRA_NODE_NAME)
    if bool(pod_name) != bool(pod_uid):
        raise TokenUnauthenticated(f"token names a pod without both {EXTRA_POD_NAME} and {EXTRA_POD_UID}",
                                   "token_not_pod_bound")
    uid = user.get("uid")
    return satoken.ServiceAccountToken(
        namespace=namespace,
        service_account=account,
        pod=satoken.BoundObject(pod_name, pod_uid) if pod_name else None,
        node=satoken.BoundObject(node_name, _one(extra, EXTRA_NODE_UID)) if node_name else None,
        service_account_uid=uid if isinstance(uid, str) else "",
        issuer="kubernetes",  # the API server vouched; its issuer is its own business
        audiences=tuple(a for a in audiences if isinstance(a, str)) if isinstance(audiences, list) else (audience,),
        issued_at=now,
        not_before=now,
        expires_at=now,  # unknown to a TokenReview; valid as of now, checked again at every call
    )


def _one(extra: Mapping[str, Any], key: str) -> str:
    value = extra.get(key)
    if value is None:
        return ""
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], str) or not value[0]:
        raise TokenUnauthenticated(f"token extra field {key} must be exactly one name, got {value!r}",
                                   "token_not_pod_bound")
    return value[0]

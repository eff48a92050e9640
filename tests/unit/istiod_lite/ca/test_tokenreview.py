"""What an API server's TokenReview answer vouches for (``claims_from_review``, table tests), and how a
node account's verified token binds its holder to a node through the token's pod claims
(``tokenauth.node_binding``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from istiod_lite.ca.errors import NotNodeAccount
from istiod_lite.ca.tokenauth import PodFacts, TokenUnauthenticated, node_binding
from istiod_lite.ca.tokenreview import claims_from_review
from meshcore.satoken import BoundObject, ServiceAccountToken

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"


def review(*, authenticated: bool = True, username: str = "system:serviceaccount:istio-system:ztunnel",
           extra: dict[str, Any] | None = None, audiences: Any = ("istio-ca",), error: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"authenticated": authenticated,
                              "user": {"username": username, "uid": "sa-uid", "extra": extra if extra is not None else
                                       {POD_NAME: ["ztunnel-abc"], POD_UID: ["uid-1"], NODE_NAME: ["node-1"]}}}
    if audiences is not None:
        status["audiences"] = list(audiences)
    if error:
        status["error"] = error
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}


def test_an_authenticated_review_gives_the_service_account_and_the_pod_and_node_it_is_bound_to() -> None:
    claims = claims_from_review(review(), audience="istio-ca", now=NOW)
    assert (claims.namespace, claims.service_account) == ("istio-system", "ztunnel")
    assert claims.pod == BoundObject("ztunnel-abc", "uid-1")
    assert claims.node == BoundObject("node-1", "")
    assert claims.service_account_uid == "sa-uid"


def test_a_token_without_pod_claims_is_not_pod_bound() -> None:
    claims = claims_from_review(review(extra={}), audience="istio-ca", now=NOW)
    assert claims.pod is None and claims.node is None


REFUSED = [
    ("a token the api server did not authenticate is refused with its reason",
     review(authenticated=False, error="token has expired"), "token has expired"),
    ("an answer without a status is refused", {"kind": "TokenReview"}, "has no status"),
    ("a token for another audience is refused", review(audiences=["https://kubernetes.default.svc"]),
     "not for audience 'istio-ca'"),
    ("a user that is not a service account is refused", review(username="jane@example.com"),
     "not a service account"),
    ("a malformed service account user is refused", review(username="system:serviceaccount:only-namespace"),
     "is not system:serviceaccount"),
    ("a pod name without its uid is refused", review(extra={POD_NAME: ["p"]}), "without both"),
    ("two pod names are refused", review(extra={POD_NAME: ["p", "q"], POD_UID: ["u"]}), "exactly one name"),
    ("a pod name that is not a list is refused", review(extra={POD_NAME: "p", POD_UID: ["u"]}), "exactly one name"),
]


@pytest.mark.parametrize(("answer", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_what_a_review_does_not_vouch_for_is_refused(answer: dict[str, Any], words: str) -> None:
    with pytest.raises(TokenUnauthenticated, match=words):
        claims_from_review(answer, audience="istio-ca", now=NOW)


def token(sa: str = "ztunnel", pod: BoundObject | None = BoundObject("ztunnel-abc", "uid-1"),
          node: BoundObject | None = None, ns: str = "istio-system") -> ServiceAccountToken:
    return ServiceAccountToken(ns, sa, pod, node, "", "kubernetes", ("istio-ca",), NOW, NOW, NOW)


PODS = {("istio-system", "ztunnel-abc"): PodFacts("istio-system", "ztunnel-abc", "uid-1", "ztunnel", "node-1", "Running"),
        ("istio-system", "ztunnel-pending"): PodFacts("istio-system", "ztunnel-pending", "uid-2", "ztunnel", "", "Pending")}
TRUSTED = frozenset({"istio-system/ztunnel"})


def bind(claims: ServiceAccountToken) -> str:
    return node_binding(claims, lambda ns, n: PODS.get((ns, n)), trust_domain="cluster.local",
                        trusted_node_accounts=TRUSTED)


def test_a_ztunnel_token_binds_to_the_node_its_pod_runs_on() -> None:
    assert bind(token()) == "node-1"
    assert bind(token(node=BoundObject("node-1"))) == "node-1"


BINDING_REFUSED = [
    ("a token of an account that is not a node agent binds to no node", token(sa="waypoint", ns="demo"),
     NotNodeAccount, "only node agents"),
    ("a token bound to no pod binds to no node", token(pod=None), TokenUnauthenticated, "not bound to a pod"),
    ("a token of a deleted pod binds to no node", token(pod=BoundObject("ztunnel-gone", "uid-9")),
     TokenUnauthenticated, "does not exist"),
    ("a token of a re-created pod binds to no node", token(pod=BoundObject("ztunnel-abc", "old-uid")),
     TokenUnauthenticated, "re-created"),
    ("a token whose node claim is not its pod's node binds to no node", token(node=BoundObject("node-2")),
     TokenUnauthenticated, "is on node node-1"),
    ("a pod not yet scheduled binds to no node", token(pod=BoundObject("ztunnel-pending", "uid-2")),
     TokenUnauthenticated, "not scheduled"),
]


@pytest.mark.parametrize(("claims", "error", "words"), [c[1:] for c in BINDING_REFUSED],
                         ids=[c[0] for c in BINDING_REFUSED])
def test_a_token_that_cannot_be_bound_to_a_node_is_refused(
    claims: ServiceAccountToken, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        bind(claims)

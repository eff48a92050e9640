"""What an API server's TokenReview answer vouches for (``claims_from_review``, table tests), and how a
node account's verified token binds its holder to a node through the token's pod claims
(``tokenauth.node_binding``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from istiod_lite.ca.errors import CsrIdentityMismatch, IdentityNotOnNode, NotNodeAccount
from istiod_lite.ca.nodeauth import CsrRequest
from istiod_lite.ca.tokenauth import (
    ImpersonationOnTokenPort,
    PodFacts,
    TokenUnauthenticated,
    authorize_verified,
    node_binding,
)
from istiod_lite.ca.tokenreview import claims_from_review
from meshcore.identity import SpiffeId
from meshcore.satoken import BoundObject, ServiceAccountToken
from meshcore.tls import certs

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
        ("istio-system", "ztunnel-pending"): PodFacts("istio-system", "ztunnel-pending", "uid-2", "ztunnel", "", "Pending"),
        ("istio-system", "ztunnel-deleting"): PodFacts("istio-system", "ztunnel-deleting", "uid-3", "ztunnel", "node-1",
                                                       "Running", deleting=True),
        ("istio-system", "ztunnel-done"): PodFacts("istio-system", "ztunnel-done", "uid-4", "ztunnel", "node-1",
                                                   "Succeeded"),
        ("istio-system", "app-on-node-1"): PodFacts("istio-system", "app-on-node-1", "uid-5", "app", "node-1", "Running"),
        ("demo", "waypoint-x"): PodFacts("demo", "waypoint-x", "uid-6", "waypoint", "node-1", "Running")}
TRUSTED = frozenset({"istio-system/ztunnel"})


def bind(claims: ServiceAccountToken) -> str:
    return node_binding(claims, lambda ns, n: PODS.get((ns, n)), trust_domain="cluster.local",
                        trusted_node_accounts=TRUSTED)


BOUND = [
    ("a ztunnel token without a node claim binds to the node its pod runs on", token(), "node-1"),
    ("a ztunnel token whose node claim agrees with its pod binds to that node", token(node=BoundObject("node-1")),
     "node-1"),
    ("a ztunnel token with a node claim binds to it while the store has not seen the pod scheduled",
     token(pod=BoundObject("ztunnel-pending", "uid-2"), node=BoundObject("node-3")), "node-3"),
]


@pytest.mark.parametrize(("claims", "node"), [c[1:] for c in BOUND], ids=[c[0] for c in BOUND])
def test_a_ztunnel_token_binds_to_its_node(claims: ServiceAccountToken, node: str) -> None:
    assert bind(claims) == node


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
    ("a ztunnel account's token from another namespace binds to no node", token(ns="demo"),
     NotNodeAccount, "only node agents"),
    ("a token of a pod that is being deleted binds to no node", token(pod=BoundObject("ztunnel-deleting", "uid-3")),
     TokenUnauthenticated, "being deleted"),
    ("a token of a pod that has finished binds to no node", token(pod=BoundObject("ztunnel-done", "uid-4")),
     TokenUnauthenticated, "Succeeded"),
    ("a node account's token naming a pod of another account binds to no node",
     token(pod=BoundObject("app-on-node-1", "uid-5")), TokenUnauthenticated, "runs as service account 'app'"),
]


@pytest.mark.parametrize(("claims", "error", "words"), [c[1:] for c in BINDING_REFUSED],
                         ids=[c[0] for c in BINDING_REFUSED])
def test_a_token_that_cannot_be_bound_to_a_node_is_refused(
    claims: ServiceAccountToken, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        bind(claims)


# A node agent's token on the token CA port: bound to its node, it obtains what a node credential obtains
# on 15012 (the identities of pods on that node), nothing more; nobody else may impersonate there.
APP_1 = SpiffeId("cluster.local", "demo", "app-1")
APP_2 = SpiffeId("cluster.local", "demo", "app-2")
ON_NODE = {"node-1": frozenset({APP_1}), "node-2": frozenset({APP_2}), "node-3": frozenset({APP_2})}
ZTUNNEL = SpiffeId("cluster.local", "istio-system", "ztunnel")


def grant(claims: ServiceAccountToken, impersonate: SpiffeId | None, csr_for: SpiffeId | None = None, *,
          agents: bool = True) -> SpiffeId:
    csr = certs.build_csr(certs.generate_key(), csr_for or impersonate or ZTUNNEL)
    return authorize_verified(
        CsrRequest(csr, impersonated_identity=impersonate.uri if impersonate else None), claims,
        lambda ns, n: PODS.get((ns, n)), trust_domain="cluster.local",
        identities_on_node=(lambda node: ON_NODE.get(node, frozenset())) if agents else None,
        trusted_node_accounts=TRUSTED,
    )


GRANTED = [
    ("a ztunnel token obtains the identity of a pod on its node", token(), APP_1, APP_1),
    ("a ztunnel token bound by its node claim obtains the identity of a pod on that node",
     token(pod=BoundObject("ztunnel-pending", "uid-2"), node=BoundObject("node-3")), APP_2, APP_2),
    ("a ztunnel token without impersonation obtains its own identity", token(), None, ZTUNNEL),
]


@pytest.mark.parametrize(("claims", "impersonate", "identity"), [c[1:] for c in GRANTED], ids=[c[0] for c in GRANTED])
def test_a_node_agent_token_obtains_what_a_node_credential_obtains(
    claims: ServiceAccountToken, impersonate: SpiffeId | None, identity: SpiffeId
) -> None:
    assert grant(claims, impersonate) == identity


IMPERSONATION_REFUSED = [
    ("a ztunnel token never obtains the identity of a pod on another node", dict(claims=token(), impersonate=APP_2),
     IdentityNotOnNode, "on node node-1"),
    ("a ztunnel token's csr must name the impersonated identity",
     dict(claims=token(), impersonate=APP_1, csr_for=APP_2), CsrIdentityMismatch, "may only obtain"),
    ("a ztunnel token of a deleted pod impersonates nobody",
     dict(claims=token(pod=BoundObject("ztunnel-gone", "uid-9")), impersonate=APP_1), TokenUnauthenticated,
     "does not exist"),
    ("a ztunnel token of an unscheduled pod impersonates nobody",
     dict(claims=token(pod=BoundObject("ztunnel-pending", "uid-2")), impersonate=APP_1), TokenUnauthenticated,
     "not scheduled"),
    ("a waypoint token may not impersonate a pod on its own node",
     dict(claims=token(sa="waypoint", ns="demo", pod=BoundObject("waypoint-x", "uid-6")), impersonate=APP_1),
     ImpersonationOnTokenPort, "only node agents \\(istio-system/ztunnel\\)"),
    ("a ztunnel token impersonates nobody when the port has no node view",
     dict(claims=token(), impersonate=APP_1, agents=False), ImpersonationOnTokenPort, "not accepted on the token CA port from istio-system/ztunnel"),
]


@pytest.mark.parametrize(("call", "error", "words"), [c[1:] for c in IMPERSONATION_REFUSED],
                         ids=[c[0] for c in IMPERSONATION_REFUSED])
def test_impersonation_on_the_token_port_is_refused_beyond_the_node(
    call: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        grant(**call)

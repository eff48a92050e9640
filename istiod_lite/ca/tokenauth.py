"""Who may obtain a certificate on the token CA port: the pure decision for service-account tokens.

The token CA port (default 15011) serves the same ``IstioCertificateService`` as 15012 with
server-authenticated TLS only: the caller has no certificate yet (a waypoint pod at start), so it
authenticates with ``authorization: Bearer <projected service-account token>`` as istio-agent does
on Kubernetes. ``authorize_token`` answers one call with the identity to sign for, or raises a
``CsrRefused`` subclass. It reads no clock, no network and no store: the pod lookup and ``now``
arrive as arguments. Rules, in order (first failing rule wins; the table tests list one case per rule):

1. exactly one ``authorization`` metadata value of the form ``Bearer <token>`` (UNAUTHENTICATED);
2. the token verifies with the issuer's public key: ES256 signature, issuer, audience ``istio-ca``,
   not expired (``meshcore.satoken.verify_token``; UNAUTHENTICATED);
3. it is bound to a pod, and that pod exists in the store with the token's uid (a deleted or
   re-created pod's token stops working), runs as the token's service account in its namespace, on
   the token's node when the token names one, and has not terminated (phase Succeeded/Failed) or
   begun deleting (``metadata.deletionTimestamp``). This is what the Kubernetes API server's
   TokenReview checks for bound tokens, so these refusals are UNAUTHENTICATED too;
4. ``ImpersonatedIdentity`` only from a node agent: a token of a trusted node account (Istio's
   ``CA_TRUSTED_NODE_ACCOUNTS``, default ``istio-system/ztunnel``) is bound to its node by
   ``node_binding`` and then goes through exactly 15012's node authorization (``nodeauth.authorize``
   with ``Caller(identity, node)``: only identities of pods scheduled on that node); anyone else asking
   to act for others is refused (PERMISSION_DENIED);
5. the CSR rules of 15012 (``nodeauth.authorize`` with the token's identity as the caller): a valid
   P-256 CSR whose single URI SAN is ``spiffe://<td>/ns/<ns>/sa/<sa>`` of the token (or, under rule 4,
   the impersonated identity).

Rule 2 is pluggable (``ca.tokenreview``): on the embedded store istiod_lite checks the token with the
local issuer's key (``verify_locally``); on Kubernetes the API server's TokenReview verifies it and
``authorize_verified`` applies rules 3-5 to what it vouched for, the same rules either way.
``node_binding`` is how a node account's token (ztunnel's) is bound to its node: through the token's pod
claims (the pod must be live, rule 3) to the token's node claim (TokenReview's
``authentication.kubernetes.io/node-name``) where it has one, else that pod's ``spec.nodeName``. A token
so bound grants exactly what a node credential (``authority.issue_node_credential``) grants on 15012,
checked again at every call (a deleted ztunnel pod's token stops working at once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.ca.errors import CsrRefused, NotNodeAccount, Unauthenticated
from istiod_lite.ca.nodeauth import Caller, CsrRequest, NodeAuthConfig, authorize
from meshcore import satoken
from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.store.resource import Resource

AUTHORIZATION = "authorization"
BEARER = "bearer "
TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})


class TokenUnauthenticated(Unauthenticated):
    """The bearer token is missing or does not stand for a live pod."""

    def __init__(self, detail: str, reason: str = "token_invalid") -> None:
        CsrRefused.__init__(self, f"caller is not authenticated: {detail}")
        self.reason = reason


class ImpersonationOnTokenPort(CsrRefused):
    grpc_code = "PERMISSION_DENIED"
    reason = "token_impersonation"

    def __init__(self, account: str = "", trusted: frozenset[str] = frozenset()) -> None:
        who = f" from {account}" if account else ""
        agents = f" ({', '.join(sorted(trusted))})" if trusted else ""
        super().__init__(
            f"ImpersonatedIdentity is not accepted on the token CA port{who}: a service-account token obtains "
            f"only its own identity; only node agents{agents} may act for the pods on their node"
        )


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the decision needs to know about a pod, from the store (``pod_facts``)."""

    namespace: str
    name: str
    uid: str
    service_account: str
    node: str
    phase: str
    # Begun graceful deletion. The embedded store has none (a deleted pod is gone at once, rule 3's
    # "does not exist"); a Kubernetes-backed lookup sets it from metadata.deletionTimestamp.
    deleting: bool = False


@dataclass(frozen=True, slots=True)
class TokenAuthConfig:
    trust_domain: str
    public_key: ec.EllipticCurvePublicKey | None  # None: tokens are verified elsewhere (TokenReview)
    audience: str = satoken.CA_AUDIENCE
    issuer: str | None = satoken.DEFAULT_ISSUER


def pod_facts(pod: Resource) -> PodFacts:
    """The facts of a stored Pod (a missing ``serviceAccountName`` is ``default``, as in Kubernetes)."""
    spec = pod.spec if isinstance(pod.spec, dict) else {}
    status = pod.status if isinstance(pod.status, dict) else {}
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return PodFacts(
        namespace=pod.namespace,
        name=pod.name,
        uid=pod.uid,
        service_account=sa if isinstance(sa, str) else "",
        node=spec.get("nodeName") if isinstance(spec.get("nodeName"), str) else "",
        phase=status.get("phase") if isinstance(status.get("phase"), str) else "",
    )


def bearer_token(authorization: Sequence[str]) -> str:
    """The token of the one ``authorization: Bearer <token>`` value; ``TokenUnauthenticated`` otherwise."""
    if not authorization:
        raise TokenUnauthenticated(
            "no 'authorization: Bearer <token>' metadata; this port authenticates callers by their "
            "service-account token (audience istio-ca)",
            "token_missing",
        )
    if len(authorization) > 1:
        raise TokenUnauthenticated(f"{len(authorization)} authorization values sent; send exactly one", "token_missing")
    value = authorization[0]
    if value[: len(BEARER)].lower() != BEARER or not value[len(BEARER) :].strip():
        raise TokenUnauthenticated("authorization metadata is not 'Bearer <token>'", "token_missing")
    return value[len(BEARER) :].strip()


def authorize_token(
    request: CsrRequest,
    authorization: Sequence[str],
    find_pod: Callable[[str, str], PodFacts | None],
    *,
    config: TokenAuthConfig,
    now: datetime,
) -> SpiffeId:
    """The identity ``request`` may be signed for; raises ``CsrRefused`` subclasses (see module doc)."""
    token = bearer_token(authorization)
    claims = verify_locally(token, config, now)
    return authorize_verified(request, claims, find_pod, trust_domain=config.trust_domain)


def verify_locally(token: str, config: TokenAuthConfig, now: datetime) -> satoken.ServiceAccountToken:
    """Rule 2 with the local issuer's public key (the embedded store's tokens)."""
    if config.public_key is None:
        raise TokenUnauthenticated("no local token issuer key is configured")
    try:
        return satoken.verify_token(token, config.public_key, now=now, audience=config.audience, issuer=config.issuer)
    except satoken.TokenError as e:
        raise TokenUnauthenticated(str(e), e.reason) from e


def authorize_verified(
    request: CsrRequest,
    claims: satoken.ServiceAccountToken,
    find_pod: Callable[[str, str], PodFacts | None],
    *,
    trust_domain: str,
    identities_on_node: Callable[[str], frozenset[SpiffeId]] | None = None,
    trusted_node_accounts: frozenset[str] = frozenset(),
) -> SpiffeId:
    """Rules 3-5 for claims a verifier vouched for (the local key, or the API server's TokenReview).

    ``identities_on_node`` (the registry's view, as 15012 has it) enables rule 4's node agents: a trusted
    node account's token may impersonate the identities of pods on the node it is bound to. None: no
    impersonation at all on this port."""
    account = f"{claims.namespace}/{claims.service_account}"
    try:
        identity = SpiffeId(trust_domain, claims.namespace, claims.service_account)
    except InvalidSpiffeId as e:  # verify_token checked the names; a bad trust domain is our config
        raise TokenUnauthenticated(f"token does not make a mesh identity: {e}") from e
    if request.impersonated_identity and identities_on_node is not None and account in trusted_node_accounts:
        node = node_binding(claims, find_pod, trust_domain=trust_domain, trusted_node_accounts=trusted_node_accounts)
        return authorize(
            request,
            Caller(identity=identity, node=node),
            identities_on_node,
            config=NodeAuthConfig(trust_domain=trust_domain, trusted_node_accounts=trusted_node_accounts),
        )
    _check_pod(claims, find_pod)
    if request.impersonated_identity:
        raise ImpersonationOnTokenPort(account, trusted_node_accounts if identities_on_node is not None else frozenset())
    return authorize(
        request,
        Caller(identity=identity),
        lambda _node: frozenset(),
        config=NodeAuthConfig(trust_domain=trust_domain, trusted_node_accounts=frozenset()),
    )


def node_binding(
    claims: satoken.ServiceAccountToken,
    find_pod: Callable[[str, str], PodFacts | None],
    *,
    trust_domain: str,
    trusted_node_accounts: frozenset[str],
) -> str:
    """The node a verified token's holder runs on and may act for, as Istio binds a ztunnel to its node
    (pure: the pod lookup arrives as ``find_pod``).

    The token must be a trusted node account's (``namespace/serviceaccount``, e.g. istio-system/ztunnel)
    and bound to a live pod of that account (rule 3: exists with the token's uid, not terminating). The
    node is the token's node claim (TokenReview's ``authentication.kubernetes.io/node-name``) when it has
    one, else the pod's ``spec.nodeName``; when both are known they must agree. No node: refused (the pod
    is not scheduled yet). Raises ``TokenUnauthenticated`` or ``NotNodeAccount``."""
    account = f"{claims.namespace}/{claims.service_account}"
    if account not in trusted_node_accounts:
        raise NotNodeAccount(SpiffeId(trust_domain, claims.namespace, claims.service_account), trusted_node_accounts)
    _check_pod(claims, find_pod)
    assert claims.pod is not None  # _check_pod refuses a token bound to no pod
    pod = find_pod(claims.namespace, claims.pod.name)
    node = claims.node.name if claims.node is not None and claims.node.name else (pod.node if pod else "")
    if not node:
        raise TokenUnauthenticated(
            f"pod {claims.namespace}/{claims.pod.name} is not scheduled to a node yet; retry once it runs",
            "token_pod_unscheduled",
        )
    return node


def _check_pod(claims: satoken.ServiceAccountToken, find_pod: Callable[[str, str], PodFacts | None]) -> None:
    who = f"{claims.namespace}/{claims.service_account}"
    if claims.pod is None:
        raise TokenUnauthenticated(
            f"token of {who} is not bound to a pod; use the pod's projected token (ISTIO_TOKEN_PATH)",
            "token_not_pod_bound",
        )
    key = f"{claims.namespace}/{claims.pod.name}"
    pod = find_pod(claims.namespace, claims.pod.name)
    if pod is None:
        raise TokenUnauthenticated(f"pod {key} named by the token does not exist (deleted?)", "token_pod_gone")
    if pod.uid != claims.pod.uid:
        raise TokenUnauthenticated(
            f"pod {key} was re-created (uid {pod.uid}, the token is for uid {claims.pod.uid}); the token of a "
            "deleted pod is no longer valid",
            "token_pod_gone",
        )
    if pod.deleting or pod.phase in TERMINATED_PHASES:
        raise TokenUnauthenticated(
            f"pod {key} is {'being deleted' if pod.deleting else pod.phase}; its token is no longer valid",
            "token_pod_terminated",
        )
    if pod.service_account != claims.service_account:
        raise TokenUnauthenticated(
            f"pod {key} runs as service account {pod.service_account!r}, the token says {claims.service_account!r}",
            "token_pod_mismatch",
        )
    if claims.node is not None and pod.node and pod.node != claims.node.name:
        raise TokenUnauthenticated(
            f"pod {key} is on node {pod.node}, the token says {claims.node.name}", "token_pod_mismatch"
        )

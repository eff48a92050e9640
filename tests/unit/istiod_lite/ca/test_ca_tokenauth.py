"""The token CA port's decision (service-account token -> identity), one case per rule, and the node
rule for waypoint pods: a node credential never obtains the identity of a waypoint on another node."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from istiod_lite.ca import errors
from istiod_lite.ca.nodeauth import Caller, CsrRequest, NodeAuthConfig, authorize
from istiod_lite.ca.tokenauth import (
    ImpersonationOnTokenPort,
    PodFacts,
    TokenAuthConfig,
    TokenUnauthenticated,
    authorize_token,
    pod_facts,
)
from istiod_lite.registry.index import compute
from istiod_lite.waypoints.objects import ControllerSettings, desired
from meshcore import satoken
from meshcore.identity import SpiffeId
from meshcore.satoken import BoundObject
from meshcore.testing import resources as r
from meshcore.tls import certs

TD = "cluster.local"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ISSUER = ec.generate_private_key(ec.SECP256R1())
OTHER_ISSUER = ec.generate_private_key(ec.SECP256R1())
CONFIG = TokenAuthConfig(trust_domain=TD, public_key=ISSUER.public_key())

WAYPOINT = SpiffeId(TD, "demo", "waypoint")
OTHER = SpiffeId(TD, "demo", "other")
POD = PodFacts(namespace="demo", name="waypoint-x7k2p", uid="uid-1", service_account="waypoint", node="node-1",
               phase="Running")
PODS = {("demo", POD.name): POD}


def _find(namespace: str, name: str) -> PodFacts | None:
    return PODS.get((namespace, name))


def _token(*, key=ISSUER, sa="waypoint", pod=POD.name, uid=POD.uid, node: str | None = "node-1",
           now=NOW, audiences=("istio-ca",)) -> str:
    return satoken.issue_token(
        key, namespace="demo", service_account=sa, pod=BoundObject(pod, uid),
        node=BoundObject(node) if node else None, now=now, audiences=audiences,
    )


def _bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]


def _csr(identity: SpiffeId = WAYPOINT) -> str:
    return certs.build_csr(certs.generate_key(), identity)


def _with(**changes) -> dict:
    return {("demo", POD.name): dataclasses.replace(POD, **changes)}


def test_a_waypoint_token_obtains_its_own_service_account_identity():
    got = authorize_token(CsrRequest(_csr()), _bearer(_token()), _find, config=CONFIG, now=NOW)
    assert got == WAYPOINT


def test_the_scheme_is_case_insensitive():
    got = authorize_token(CsrRequest(_csr()), [f"bearer {_token()}"], _find, config=CONFIG, now=NOW)
    assert got == WAYPOINT


# (id, authorization values, pods, csr, impersonation, error, reason, words in the message)
REFUSED = [
    ("no authorization metadata is unauthenticated", [], PODS, _csr(), None,
     TokenUnauthenticated, "token_missing", "no 'authorization"),
    ("two authorization values are unauthenticated", _bearer(_token()) * 2, PODS, _csr(), None,
     TokenUnauthenticated, "token_missing", "exactly one"),
    ("a Basic credential is unauthenticated", ["Basic dXNlcjpwYXNz"], PODS, _csr(), None,
     TokenUnauthenticated, "token_missing", "Bearer"),
    ("a garbage token is unauthenticated", _bearer("garbage"), PODS, _csr(), None,
     TokenUnauthenticated, "token_malformed", "not a JWT"),
    ("an expired token is unauthenticated", _bearer(_token(now=NOW - timedelta(hours=2))), PODS, _csr(), None,
     TokenUnauthenticated, "token_expired", "expired"),
    ("a token for another audience is unauthenticated", _bearer(_token(audiences=("vault",))), PODS, _csr(), None,
     TokenUnauthenticated, "token_wrong_audience", "istio-ca"),
    ("a token from another issuer key is unauthenticated", _bearer(_token(key=OTHER_ISSUER)), PODS, _csr(), None,
     TokenUnauthenticated, "token_bad_signature", "another issuer key"),
    ("the token of a deleted pod is unauthenticated", _bearer(_token()), {}, _csr(), None,
     TokenUnauthenticated, "token_pod_gone", "does not exist"),
    ("the token of a re-created pod (new uid) is unauthenticated", _bearer(_token(uid="old-uid")), PODS, _csr(),
     None, TokenUnauthenticated, "token_pod_gone", "re-created"),
    ("the token of a pod that terminated is unauthenticated", _bearer(_token()), _with(phase="Succeeded"), _csr(),
     None, TokenUnauthenticated, "token_pod_terminated", "Succeeded"),
    ("the token of a pod being deleted is unauthenticated", _bearer(_token()), _with(deleting=True), _csr(), None,
     TokenUnauthenticated, "token_pod_terminated", "being deleted"),
    ("a token for another service account than the pod runs as is unauthenticated",
     _bearer(_token(sa="other")), PODS, _csr(OTHER), None,
     TokenUnauthenticated, "token_pod_mismatch", "runs as service account 'waypoint'"),
    ("a token naming another node than the pod's is unauthenticated", _bearer(_token(node="node-2")), PODS, _csr(),
     None, TokenUnauthenticated, "token_pod_mismatch", "node node-1"),
    ("impersonation is refused on the token port", _bearer(_token()), PODS, _csr(OTHER), OTHER.uri,
     ImpersonationOnTokenPort, "token_impersonation", "not accepted"),
    ("a CSR for another identity is refused", _bearer(_token()), PODS, _csr(OTHER), None,
     errors.CsrIdentityMismatch, "csr_identity_mismatch", "may only obtain"),
    ("a CSR in another trust domain is refused", _bearer(_token()), PODS, _csr(SpiffeId("evil.local", "demo",
     "waypoint")), None, errors.ForeignTrustDomain, "foreign_trust_domain", "evil.local"),
    ("a CSR that is not PEM is refused", _bearer(_token()), PODS, "not a csr", None,
     errors.CsrUnparseable, "csr_parse_error", "PEM"),
]


@pytest.mark.parametrize(
    ("authorization", "pods", "csr", "impersonate", "error", "reason", "words"),
    [c[1:] for c in REFUSED],
    ids=[c[0] for c in REFUSED],
)
def test_authorize_token_refuses(authorization, pods, csr, impersonate, error, reason, words):
    request = CsrRequest(csr_pem=csr, impersonated_identity=impersonate)
    with pytest.raises(error, match=words) as info:
        authorize_token(request, authorization, lambda ns, n: pods.get((ns, n)), config=CONFIG, now=NOW)
    assert info.value.reason == reason
    assert info.value.grpc_code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT")
    if isinstance(info.value, TokenUnauthenticated):
        assert info.value.grpc_code == "UNAUTHENTICATED"


def test_an_unbound_token_is_unauthenticated():
    claims = {
        "iss": satoken.DEFAULT_ISSUER, "sub": "system:serviceaccount:demo:waypoint", "aud": ["istio-ca"],
        "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 600,
        "kubernetes.io": {"namespace": "demo", "serviceaccount": {"name": "waypoint"}},
    }
    import jwt

    token = jwt.encode(claims, ISSUER, algorithm="ES256")
    with pytest.raises(TokenUnauthenticated, match="not bound to a pod"):
        authorize_token(CsrRequest(_csr()), _bearer(token), _find, config=CONFIG, now=NOW)


def test_pod_facts_reads_what_the_store_holds():
    pod = r.pod("waypoint-x7k2p", sa="waypoint", node="node-2", phase="Pending", uid="u-9")
    assert pod_facts(pod) == PodFacts("demo", "waypoint-x7k2p", "u-9", "waypoint", "node-2", "Pending")
    bare = msgspec.structs.replace(pod, spec={})
    assert pod_facts(bare).service_account == "default"


# --- node credentials and waypoint pods (15012's node rule) ------------------------------------------


def _waypoint_pod_on(node: str):
    """The waypoint pod exactly as the controller makes it, scheduled on ``node`` and running."""
    pod = desired(r.waypoint("waypoint", "demo", uid="gw-uid"), ControllerSettings()).pod
    return msgspec.structs.replace(
        pod, spec={**pod.spec, "nodeName": node}, status={"phase": "Running", "podIP": "10.244.2.7"}
    )


SNAPSHOT = compute([r.ns("demo"), r.waypoint("waypoint", "demo", uid="gw-uid"), _waypoint_pod_on("node-b")])
ZTUNNEL = SpiffeId(TD, "istio-system", "ztunnel")

NODE_RULE = [
    ("the node running the waypoint pod may obtain the waypoint identity", "node-b", None),
    ("a node credential may not obtain a waypoint identity for a pod on another node", "node-a",
     errors.IdentityNotOnNode),
]


@pytest.mark.parametrize(("node", "error"), [c[1:] for c in NODE_RULE], ids=[c[0] for c in NODE_RULE])
def test_node_impersonation_of_a_waypoint_follows_its_pod(node, error):
    request = CsrRequest(csr_pem=_csr(WAYPOINT), impersonated_identity=WAYPOINT.uri)
    decide = lambda: authorize(  # noqa: E731
        request, Caller(ZTUNNEL, node), SNAPSHOT.identities_on_node, config=NodeAuthConfig(trust_domain=TD)
    )
    if error is None:
        assert decide() == WAYPOINT
    else:
        with pytest.raises(error, match="node-a"):
            decide()

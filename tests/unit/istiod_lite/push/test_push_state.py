"""Table tests for the per-stream delta-xDS bookkeeping (istiod_lite.push.state)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from istiod_lite.push.errors import (
    InvalidRequestError,
    MissingNodeError,
    NackWithoutNonceError,
    TooManyNamesError,
    TooManySubscriptionsError,
    UnknownNonceError,
    UnknownTypeUrlError,
)
from istiod_lite.push.state import MAX_OUTSTANDING, ConnectionState, StreamLimits
from meshcore.model.convert import ADDRESS_TYPE_URL as ADDR
from meshcore.model.convert import AUTHORIZATION_TYPE_URL as AUTHZ
from meshcore.proto import discovery_pb2

NODE = "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
STORE = {"a": "v1", "b": "v1", "c": "v1"}


def req(
    type_url: str = ADDR,
    *,
    node: str | None = NODE,
    sub: Iterable[str] = (),
    unsub: Iterable[str] = (),
    initial: Mapping[str, str] | None = None,
    nonce: str = "",
    nack: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    r = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(sub),
        resource_names_unsubscribe=list(unsub),
        initial_resource_versions=dict(initial or {}),
        response_nonce=nonce,
    )
    if node is not None:
        r.node.id = node
    if nack is not None:
        r.error_detail.code = 3
        r.error_detail.message = nack
    return r


def conn() -> ConnectionState:
    return ConnectionState("1", "p", (ADDR, AUTHZ), now=100.0)


def send(c: ConnectionState, type_url: str = ADDR, current: Mapping[str, str] = STORE, dirty=None) -> str:
    """Plan and record one response as the shell would; returns its nonce."""
    plan = c.plan_response(type_url, current, dirty)
    nonce = c.next_nonce()
    c.record_sent(type_url, nonce, "7", {n: current[n] for n in plan.send}, plan.remove)
    return nonce


# -- opening a subscription ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "wildcard", "names", "known"),
    [
        (req(), True, set(), {}),
        (req(sub=["*"]), True, set(), {}),
        (req(sub=["a", "b"]), False, {"a", "b"}, {}),
        (req(sub=["*"], unsub=["*"]), False, set(), {}),
        (req(initial={"a": "v1", "z": "v0"}), True, set(), {"a": "v1", "z": "v0"}),
        (req(sub=["a"], initial={"b": "v1"}), False, {"a", "b"}, {"b": "v1"}),
    ],
    ids=[
        "an empty first subscription is a wildcard",
        "an explicit star is a wildcard",
        "named resources are an explicit subscription",
        "on-demand opening (subscribe and unsubscribe star) leaves no wildcard",
        "initial versions of a wildcard proxy are what it holds",
        "a non-wildcard proxy keeps subscribing to what it claims to hold",
    ],
)
def test_first_request_opens_subscription(request_, wildcard, names, known) -> None:
    c = conn()
    outcome = c.receive(request_, now=101.0)
    sub = c.subscriptions[ADDR]
    assert (sub.wildcard, sub.names, sub.known) == (wildcard, names, known)
    assert outcome.first and outcome.full and outcome.respond
    assert c.node_id == NODE


@pytest.mark.parametrize(
    ("request_", "send_", "remove"),
    [
        (req(), ("a", "b", "c"), ()),
        (req(initial={"a": "v1", "b": "v0"}), ("b", "c"), ()),
        (req(initial={"a": "v1", "b": "v1", "c": "v1", "gone": "v3"}), (), ("gone",)),
        (req(sub=["a", "missing"]), ("a",), ("missing",)),
        (req(sub=["*"], unsub=["*"]), (), ()),
        (req(sub=["a"], initial={"a": "v1"}), (), ()),
    ],
    ids=[
        "a new wildcard proxy gets every resource",
        "a reconnecting proxy gets only resources whose version moved or it lacks",
        "a reconnecting proxy is told about resources deleted while it was away",
        "an explicit name that does not exist is answered as removed",
        "an on-demand opening gets an empty answer",
        "an explicit name held at the current version is not resent",
    ],
)
def test_first_response_contents(request_, send_, remove) -> None:
    c = conn()
    c.receive(request_, now=101.0)
    plan = c.plan_response(ADDR, STORE, None)
    assert (plan.send, plan.remove) == (send_, remove)


def test_node_metadata_is_kept_for_syncz() -> None:
    r = req()
    r.node.cluster = "Kubernetes"
    r.node.metadata.update({"NODE_NAME": "node-1", "NAMESPACE": "istio-system"})
    c = conn()
    c.receive(r, now=101.0)
    assert c.node_cluster == "Kubernetes"
    assert c.metadata == {"NODE_NAME": "node-1", "NAMESPACE": "istio-system"}


def test_types_are_independent() -> None:
    c = conn()
    c.receive(req(ADDR), now=1.0)
    outcome = c.receive(req(AUTHZ, node=None), now=1.0)
    assert outcome.first
    assert set(c.subscriptions) == {ADDR, AUTHZ}


# -- answers to responses -----------------------------------------------------------------------------


def test_ack_of_the_last_response_records_nonce_and_version() -> None:
    c = conn()
    c.receive(req(), now=1.0)
    nonce = send(c)
    outcome = c.receive(req(node=None, nonce=nonce), now=2.0)
    sub = c.subscriptions[ADDR]
    assert outcome.acked == nonce and outcome.nack is None
    assert (sub.last_acked_nonce, sub.last_acked_version, sub.status) == (nonce, "7", "SYNCED")
    assert c.synced
    assert not (outcome.full or outcome.dirty or outcome.respond)


def test_nack_is_recorded_with_the_proxy_reason_and_settles_the_nonce() -> None:
    c = conn()
    c.receive(req(), now=1.0)
    nonce = send(c)
    outcome = c.receive(req(node=None, nonce=nonce, nack="bad ip in a"), now=2.0)
    sub = c.subscriptions[ADDR]
    assert outcome.nack is not None
    assert (outcome.nack.nonce, outcome.nack.message, outcome.nack.code, outcome.nack.at) == (
        nonce,
        "bad ip in a",
        3,
        2.0,
    )
    assert list(sub.nacks) == [outcome.nack]
    assert sub.status == "NACKED" and sub.last_acked_nonce == ""
    assert c.synced  # answered, even if rejected: the next change is pushed as usual
    # A NACKed resource is not resent until it changes; a later change of it is.
    assert not c.plan_response(ADDR, STORE, ["a"])
    assert c.plan_response(ADDR, {**STORE, "a": "v2"}, ["a"]).send == ("a",)


def test_ack_of_a_newer_nonce_settles_older_ones() -> None:
    c = conn()
    c.receive(req(), now=1.0)
    first = send(c)
    second = send(c, current={**STORE, "a": "v2"}, dirty=["a"])
    assert c.subscriptions[ADDR].status == "STALE"
    c.receive(req(node=None, nonce=second), now=2.0)
    assert c.synced
    late = c.receive(req(node=None, nonce=first), now=3.0)
    assert late.stale_nonce == first and late.acked == ""
    assert c.subscriptions[ADDR].last_acked_nonce == second


def test_a_proxy_that_never_acks_does_not_grow_outstanding_without_bound() -> None:
    c = conn()
    c.receive(req(), now=1.0)
    nonces = [send(c, current={"a": f"v{i}"}, dirty=["a"]) for i in range(MAX_OUTSTANDING + 5)]
    assert len(c.subscriptions[ADDR].outstanding) == MAX_OUTSTANDING
    assert c.receive(req(node=None, nonce=nonces[0]), now=2.0).stale_nonce == nonces[0]
    assert c.receive(req(node=None, nonce=nonces[-1]), now=2.0).acked == nonces[-1]


# -- changing the subscription ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "change", "expect_dirty", "expect_full", "names", "wildcard"),
    [
        (req(sub=["a"]), req(node=None, sub=["b"]), {"b"}, False, {"a", "b"}, False),
        (req(sub=["a", "b"]), req(node=None, unsub=["b"]), set(), False, {"a"}, False),
        (req(sub=["a"]), req(node=None, sub=["*"]), set(), True, {"a"}, True),
        (req(), req(node=None, unsub=["*"]), set(), False, set(), False),
        (req(sub=["a"]), req(node=None, sub=["a"]), {"a"}, False, {"a"}, False),
        (req(sub=["a"]), req(node=None, sub=["b"], unsub=["b"]), set(), False, {"a"}, False),
    ],
    ids=[
        "subscribing a name asks for that name only",
        "unsubscribing a name asks for nothing",
        "subscribing star turns on wildcard and asks for everything",
        "unsubscribing star turns off wildcard",
        "re-subscribing a held name asks for it again",
        "subscribing and unsubscribing the same name in one request cancels out",
    ],
)
def test_subscription_changes(opening, change, expect_dirty, expect_full, names, wildcard) -> None:
    c = conn()
    c.receive(opening, now=1.0)
    c.receive(req(node=None, nonce=send(c)), now=2.0)
    outcome = c.receive(change, now=3.0)
    sub = c.subscriptions[ADDR]
    assert outcome.dirty == frozenset(expect_dirty)
    assert outcome.full is expect_full
    assert outcome.respond is bool(expect_dirty or expect_full)
    assert (sub.names, sub.wildcard) == (names, wildcard)


def test_unsubscribed_names_are_forgotten_and_not_pushed() -> None:
    c = conn()
    c.receive(req(sub=["a", "b"]), now=1.0)
    send(c)
    c.receive(req(node=None, unsub=["b"]), now=2.0)
    assert "b" not in c.subscriptions[ADDR].known
    assert not c.plan_response(ADDR, {**STORE, "b": "v2"}, ["b"])


def test_dropping_the_wildcard_forgets_what_was_held_only_through_it() -> None:
    c = conn()
    c.receive(req(sub=["*", "a"]), now=1.0)
    send(c)
    c.receive(req(node=None, unsub=["*"]), now=2.0)
    assert c.subscriptions[ADDR].known == {"a": "v1"}


def test_ack_and_subscribe_in_one_request() -> None:
    c = conn()
    c.receive(req(sub=["a"]), now=1.0)
    nonce = send(c)
    outcome = c.receive(req(node=None, nonce=nonce, sub=["c"]), now=2.0)
    assert outcome.acked == nonce and outcome.dirty == {"c"}


# -- pushes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "current", "dirty", "send_", "remove"),
    [
        (req(), {**STORE, "a": "v2"}, ["a"], ("a",), ()),
        (req(), {**STORE, "d": "v1"}, ["d"], ("d",), ()),
        (req(sub=["b"]), {**STORE, "a": "v2"}, ["a"], (), ()),
        (req(), {"b": "v1", "c": "v1"}, ["a"], (), ("a",)),
        (req(), STORE, ["never-there"], (), ()),
        (req(), STORE, ["a"], (), ()),
    ],
    ids=[
        "a changed resource is pushed alone",
        "a new resource reaches wildcard proxies",
        "a change outside an explicit subscription is not pushed",
        "a deleted resource the proxy held is pushed as removed",
        "a deletion of something the proxy never held is not pushed",
        "content identical to what the proxy holds is not pushed",
    ],
)
def test_push_plan(opening, current, dirty, send_, remove) -> None:
    c = conn()
    c.receive(opening, now=1.0)
    c.receive(req(node=None, nonce=send(c)), now=2.0)
    plan = c.plan_response(ADDR, current, dirty)
    assert (plan.send, plan.remove) == (send_, remove)


def test_record_sent_counts_resources_and_tracks_what_the_proxy_holds() -> None:
    c = conn()
    c.receive(req(), now=1.0)
    send(c)
    send(c, current={"a": "v1", "b": "v1"}, dirty=["c"])
    sub = c.subscriptions[ADDR]
    assert sub.resources_sent == 3 and sub.responses_sent == 2
    assert sub.known == {"a": "v1", "b": "v1"}


# -- requests that end the stream ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "error"),
    [
        ([req(node=None)], MissingNodeError),
        ([req(node="")], MissingNodeError),
        ([req("type.googleapis.com/envoy.config.cluster.v3.Cluster")], UnknownTypeUrlError),
        ([req(type_url="")], UnknownTypeUrlError),
        ([req(nonce="p-1")], UnknownNonceError),
        ([req(), req(node=None, nonce="p-99")], UnknownNonceError),
        ([req(), req(node=None, nonce="other-1")], UnknownNonceError),
        ([req(), req(node=None, nonce="garbage")], UnknownNonceError),
        ([req(), req(node=None, nack="no nonce")], NackWithoutNonceError),
    ],
    ids=[
        "a first request without node is rejected",
        "a first request with an empty node id is rejected",
        "an unknown type url is rejected",
        "an empty type url is rejected",
        "an ACK before anything was sent for the type is rejected",
        "an ACK for a nonce beyond the last one sent is rejected",
        "an ACK for another stream's nonce is rejected",
        "an ACK for a malformed nonce is rejected",
        "a NACK that names no nonce is rejected",
    ],
)
def test_invalid_requests(requests, error) -> None:
    c = conn()
    *ok, bad = requests
    for r in ok:
        c.receive(r, now=1.0)
    with pytest.raises(error) as info:
        c.receive(bad, now=2.0)
    assert isinstance(info.value, InvalidRequestError)
    assert str(info.value)  # an operator-readable message


def test_unknown_type_message_names_the_served_types() -> None:
    with pytest.raises(UnknownTypeUrlError, match="istio.workload.Address"):
        conn().receive(req("type.googleapis.com/nope"), now=1.0)


def test_nonce_prefix_must_be_parseable() -> None:
    with pytest.raises(ValueError, match="nonce prefix"):
        ConnectionState("1", "a-b", (ADDR,), now=0.0)


LIMITS = StreamLimits(max_names_per_request=4, max_subscribed_names=6)


def limited() -> ConnectionState:
    return ConnectionState("1", "p", (ADDR, AUTHZ), now=100.0, limits=LIMITS)


def names(n: int, prefix: str = "n") -> list[str]:
    return [f"default/{prefix}{i}" for i in range(n)]


@pytest.mark.parametrize(
    ("requests", "error"),
    [
        ([req(sub=names(5))], TooManyNamesError),
        ([req(sub=names(3), unsub=names(2, "u"))], TooManyNamesError),
        ([req(sub=["*"], initial={n: "v" for n in names(5)})], TooManyNamesError),
        ([req(sub=["*"], unsub=["*"]), req(node=None, sub=names(5))], TooManyNamesError),
        ([req(sub=names(4)), req(node=None, sub=names(3, "m"))], TooManySubscriptionsError),
        ([req(sub=names(4)), req(node=None, sub=names(4, "m"), unsub=names(1))], TooManyNamesError),
    ],
    ids=[
        "a first request subscribing more names than allowed is rejected",
        "subscribe and unsubscribe names count together",
        "initial resource versions count as names",
        "a later request with too many names is rejected",
        "subscriptions accumulated past the per-stream limit are rejected",
        "a later request is limited on the sum of its lists",
    ],
)
def test_requests_past_a_limit_are_rejected(requests, error) -> None:
    c = limited()
    *ok, bad = requests
    for r in ok:
        c.receive(r, now=1.0)
    with pytest.raises(error) as info:
        c.receive(bad, now=2.0)
    assert isinstance(info.value, InvalidRequestError)


def test_the_limit_itself_is_accepted() -> None:
    c = limited()
    c.receive(req(sub=names(4)), now=1.0)
    c.receive(req(node=None, sub=names(2, "m")), now=2.0)
    assert len(c.subscriptions[ADDR].names) == 6


def test_unsubscribing_makes_room_for_new_names() -> None:
    c = limited()
    c.receive(req(sub=names(4)), now=1.0)
    c.receive(req(node=None, unsub=names(3)), now=2.0)
    c.receive(req(node=None, sub=names(4, "m")), now=3.0)
    assert len(c.subscriptions[ADDR].names) == 5


def test_limit_messages_name_the_limit_and_what_to_do() -> None:
    with pytest.raises(TooManyNamesError) as many:
        limited().receive(req(sub=names(5)), now=1.0)
    assert "5 resource names" in str(many.value) and "at most 4 per request" in str(many.value)
    assert "max_names_per_request" in str(many.value)
    c = limited()
    c.receive(req(sub=names(4)), now=1.0)
    with pytest.raises(TooManySubscriptionsError) as held:
        c.receive(req(node=None, sub=names(3, "m")), now=2.0)
    assert "at most 6 per type and stream" in str(held.value) and "wildcard" in str(held.value)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_names_per_request"):
        StreamLimits(max_names_per_request=0)

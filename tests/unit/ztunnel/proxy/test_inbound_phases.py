"""Inbound phase decisions (pure): context (which status refuses what) and authorization on its facts."""

from __future__ import annotations

import msgspec
import pytest

from meshcore.identity import SpiffeId
from meshcore.model import Action, Match, Port, StringMatch
from meshcore.state import ProxyState
from meshcore.testing import builders as b
from ztunnel.proxy.errors import InboundAddressMismatch, InboundSelfCall, InboundWorkloadUnknown
from ztunnel.proxy.inbound import InboundRequest, authorize, build_inbound_context, guess_inbound_service
from ztunnel.proxy.routing import SockAddr
from ztunnel.proxy.telemetry import workload_baggage

SERVER = b.workload("server", "10.0.0.2", services={"default/echo.default.svc.cluster.local": (Port(80, 8080),)})
CLIENT = b.workload("client", "10.0.0.1", node="node-2")
ECHO = b.service("echo", "10.96.0.10", {80: 8080})
OTHER = b.service("other", "10.96.0.11", {90: 8080})
CLIENT_ID = SpiffeId("cluster.local", "default", "client")
STATE = ProxyState.of(SERVER, CLIENT, ECHO)


def request(dst: str = "10.0.0.2", port: int = 8080, *, src: str = "10.0.0.1", identity=CLIENT_ID, headers=()):
    return InboundRequest(
        src=SockAddr(src, 40000), dst=SockAddr(dst, port), identity=identity, hbone=identity is not None,
        local=SockAddr("10.0.0.2", 15008), headers=tuple(headers),
    )


@pytest.mark.parametrize(
    ("state", "req", "error", "status"),
    [
        (ProxyState.of(CLIENT), request(), InboundWorkloadUnknown, 503),
        (STATE, request("10.0.0.9"), InboundAddressMismatch, 400),
        (STATE, request("10.96.0.10", 80), InboundAddressMismatch, 400),
        (STATE, request(port=15008), InboundSelfCall, 400),
        (STATE, request(port=15006, identity=None), InboundSelfCall, 400),
    ],
    ids=[
        "a workload that left the state answers 503",
        "an authority naming another pod answers 400 ip mismatch",
        "an authority naming a service vip answers 400 ip mismatch",
        "a connect to ztunnel's own hbone port answers 400",
        "plaintext to ztunnel's own inbound port answers 400",
    ],
)
def test_context_refusals_carry_their_status(state, req, error, status):
    with pytest.raises(error) as err:
        build_inbound_context(state, SERVER, req)
    assert err.value.status_hint == status


def test_the_ip_mismatch_message_names_both_addresses_as_ztunnel_does():
    with pytest.raises(InboundAddressMismatch, match=r"ip mismatch: 10\.0\.0\.9 != 10\.0\.0\.2"):
        build_inbound_context(STATE, SERVER, request("10.0.0.9"))


def test_a_good_request_yields_the_upstream_facts_source_and_service():
    ctx = build_inbound_context(STATE, SERVER, request())
    assert ctx.upstream == SockAddr("10.0.0.2", 8080)
    assert (ctx.facts.src_ip, ctx.facts.dst_port, ctx.facts.src_identity) == ("10.0.0.1", 8080, CLIENT_ID)
    assert ctx.source == CLIENT and ctx.service == ECHO and ctx.workload == SERVER


def test_the_latest_version_of_the_served_workload_is_used():
    moved = b.workload("server", "10.0.0.2", namespace="default", authorization_policies=("default/p",))
    ctx = build_inbound_context(ProxyState.of(moved), SERVER, request())
    assert ctx.workload.authorization_policies == ("default/p",)


def test_ipv4_mapped_peers_and_authorities_are_canonicalised():
    ctx = build_inbound_context(STATE, SERVER, request("::ffff:10.0.0.2", src="10.0.0.1"))
    assert ctx.upstream.ip == "10.0.0.2"


def test_an_unknown_source_is_described_by_its_baggage_for_labels_only():
    stranger = b.workload("shell", "10.9.9.9", namespace="tools")
    ctx = build_inbound_context(STATE, SERVER, request(src="10.9.9.9", headers=[("baggage", workload_baggage(stranger))]))
    assert ctx.source is not None and (ctx.source.namespace, ctx.source.name, ctx.source.uid) == ("tools", "shell", "")


def test_without_baggage_an_unknown_source_stays_unknown():
    assert build_inbound_context(STATE, SERVER, request(src="10.9.9.9")).source is None


@pytest.mark.parametrize(
    ("services", "port", "host", "expected"),
    [
        ((ECHO,), 8080, None, ECHO),
        ((ECHO, OTHER), 8080, None, None),
        ((ECHO, OTHER), 8080, "other.default.svc.cluster.local", OTHER),
        ((ECHO,), 9999, None, None),
    ],
    ids=[
        "the only service targeting the port is the destination service",
        "two services targeting the port leave it unknown",
        "the forwarded host picks the service",
        "no service targets the port",
    ],
)
def test_guess_inbound_service(services, port, host, expected):
    wl = b.workload("server", "10.0.0.2", services={s.key: () for s in services})
    assert guess_inbound_service(ProxyState.of(wl, *services), wl, port, host) == expected


DENY_CLIENT = b.policy(
    "deny-client", Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/client"),)), action=Action.DENY
)
ALLOW_OTHER = b.policy("allow-other", Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/other"),)))
DENY_PLAINTEXT = b.policy("strict", Match(not_principals=(StringMatch("presence"),)), action=Action.DENY)


@pytest.mark.parametrize(
    ("policies", "identity", "allowed", "message"),
    [
        ((), CLIENT_ID, True, ""),
        ((DENY_CLIENT,), CLIENT_ID, False, "explicitly denied by: default/deny-client"),
        ((ALLOW_OTHER,), CLIENT_ID, False, "allow policies exist, but none allowed"),
        ((DENY_PLAINTEXT,), None, False, "explicitly denied by: default/strict"),
        ((DENY_PLAINTEXT,), CLIENT_ID, True, ""),
    ],
    ids=[
        "no policy allows",
        "a matching deny refuses naming the policy",
        "allow policies that do not match refuse",
        "a deny-without-mtls policy refuses plaintext",
        "a deny-without-mtls policy lets mtls through",
    ],
)
def test_authorize_uses_the_workloads_policies_and_the_connection_facts(policies, identity, allowed, message):
    state = ProxyState.of(SERVER, CLIENT, *policies)
    decision = authorize(state, build_inbound_context(state, SERVER, request(identity=identity)))
    assert decision.allowed is allowed
    assert decision.message.removeprefix("connection closed due to policy rejection: ") == message


def test_a_policy_the_workload_names_but_that_has_not_arrived_refuses_until_it_does():
    named = msgspec.structs.replace(SERVER, authorization_policies=("default/deny-client",))
    waiting = ProxyState.of(named, CLIENT)  # the workload arrived, its DENY policy not yet
    decision = authorize(waiting, build_inbound_context(waiting, named, request(identity=CLIENT_ID)))
    assert not decision.allowed and decision.policy == "default/deny-client"
    assert "has not arrived" in decision.message
    arrived = ProxyState.of(named, CLIENT, DENY_CLIENT)
    decision = authorize(arrived, build_inbound_context(arrived, named, request(identity=CLIENT_ID)))
    assert not decision.allowed and decision.message.endswith("explicitly denied by: default/deny-client")

"""Builders for L7 authorization tests: requests (``RequestFacts``) and policies written as Istio text.

``request()`` describes a GET / from ``cluster.local/ns/client-ns/sa/client`` at 10.0.0.1 to the
``web`` service VIP on port 80; tests state only what differs. ``to``/``from_``/``when`` read Istio's
text forms (``"*"``, ``"x*"``, ``"*x"``, CIDRs, port strings) into model values the way istiod_lite's
compiler does for valid input, so a table row reads like the YAML it stands for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from meshcore.identity import SpiffeId
from meshcore.model import (
    L7Action,
    L7Authorization,
    L7Condition,
    L7ConditionKey,
    L7Operation,
    L7Rule,
    L7Source,
    L7Target,
    PathMatch,
    ServiceAccountMatch,
)
from meshcore.model.l7 import is_path_template
from meshcore.model.policy_text import parse_ip_net, string_match
from meshcore.policy.request import RequestFacts

WAYPOINT = "demo/waypoint"
SERVICE = "web.demo.svc.cluster.local"


def request(
    method: str = "GET",
    path: str = "/",
    *,
    authority: str = SERVICE,
    headers: Mapping[str, Sequence[str]] | None = None,
    ns: str = "client-ns",
    sa: str = "client",
    td: str = "cluster.local",
    mtls: bool = True,
    source_ip: str = "10.0.0.1",
    remote_ip: str | None = None,
    destination_ip: str = "10.96.0.10",
    port: int = 80,
) -> RequestFacts:
    return RequestFacts(
        source_ip=source_ip,
        destination_ip=destination_ip,
        destination_port=port,
        method=method,
        path=path,
        authority=authority,
        headers=headers or {},
        source_principal=SpiffeId(td, ns, sa) if mtls else None,
        remote_ip=remote_ip,
    )


def _path(value: str) -> PathMatch:
    if is_path_template(value):
        return PathMatch("template", value)
    m = string_match(value)
    return PathMatch(m.kind, m.value)


def _sa(value: str, namespace: str = "demo") -> ServiceAccountMatch:
    ns, sep, name = value.partition("/")
    return ServiceAccountMatch(ns, name) if sep else ServiceAccountMatch(namespace, value)


def to(
    *,
    hosts: Sequence[str] = (),
    not_hosts: Sequence[str] = (),
    ports: Sequence[str] = (),
    not_ports: Sequence[str] = (),
    methods: Sequence[str] = (),
    not_methods: Sequence[str] = (),
    paths: Sequence[str] = (),
    not_paths: Sequence[str] = (),
) -> L7Operation:
    """One ``to.operation`` entry."""
    return L7Operation(
        hosts=tuple(string_match(h.lower()) for h in hosts),
        not_hosts=tuple(string_match(h.lower()) for h in not_hosts),
        ports=tuple(int(p) for p in ports),
        not_ports=tuple(int(p) for p in not_ports),
        methods=tuple(map(string_match, methods)),
        not_methods=tuple(map(string_match, not_methods)),
        paths=tuple(map(_path, paths)),
        not_paths=tuple(map(_path, not_paths)),
    )


def from_(
    *,
    principals: Sequence[str] = (),
    not_principals: Sequence[str] = (),
    namespaces: Sequence[str] = (),
    not_namespaces: Sequence[str] = (),
    ip_blocks: Sequence[str] = (),
    not_ip_blocks: Sequence[str] = (),
    remote_ip_blocks: Sequence[str] = (),
    not_remote_ip_blocks: Sequence[str] = (),
    service_accounts: Sequence[str] = (),
    not_service_accounts: Sequence[str] = (),
) -> L7Source:
    """One ``from.source`` entry (a bare service account means namespace ``demo``)."""
    return L7Source(
        principals=tuple(map(string_match, principals)),
        not_principals=tuple(map(string_match, not_principals)),
        namespaces=tuple(map(string_match, namespaces)),
        not_namespaces=tuple(map(string_match, not_namespaces)),
        ip_blocks=tuple(map(parse_ip_net, ip_blocks)),
        not_ip_blocks=tuple(map(parse_ip_net, not_ip_blocks)),
        remote_ip_blocks=tuple(map(parse_ip_net, remote_ip_blocks)),
        not_remote_ip_blocks=tuple(map(parse_ip_net, not_remote_ip_blocks)),
        service_accounts=tuple(map(_sa, service_accounts)),
        not_service_accounts=tuple(map(_sa, not_service_accounts)),
    )


_IP_KEYS = {
    "source.ip": L7ConditionKey.SOURCE_IP,
    "remote.ip": L7ConditionKey.REMOTE_IP,
    "destination.ip": L7ConditionKey.DESTINATION_IP,
}
_STRING_KEYS = {
    "source.namespace": L7ConditionKey.SOURCE_NAMESPACE,
    "source.principal": L7ConditionKey.SOURCE_PRINCIPAL,
}


def when(key: str, values: Sequence[str] = (), not_values: Sequence[str] = ()) -> L7Condition:
    """One ``when`` condition, keyed as in Istio (``request.headers[X-Name]``, ``source.ip``, ...)."""
    if key.startswith("request.headers[") and key.endswith("]"):
        return L7Condition(
            L7ConditionKey.REQUEST_HEADER,
            header=key[len("request.headers[") : -1].lower(),
            values=tuple(map(string_match, values)),
            not_values=tuple(map(string_match, not_values)),
        )
    if key in _IP_KEYS:
        return L7Condition(
            _IP_KEYS[key],
            ip_values=tuple(map(parse_ip_net, values)),
            not_ip_values=tuple(map(parse_ip_net, not_values)),
        )
    if key in _STRING_KEYS:
        return L7Condition(
            _STRING_KEYS[key],
            values=tuple(map(string_match, values)),
            not_values=tuple(map(string_match, not_values)),
        )
    if key == "destination.port":
        return L7Condition(
            L7ConditionKey.DESTINATION_PORT,
            port_values=tuple(int(v) for v in values),
            not_port_values=tuple(int(v) for v in not_values),
        )
    if key == "source.serviceAccount":
        return L7Condition(
            L7ConditionKey.SOURCE_SERVICE_ACCOUNT,
            service_account_values=tuple(map(_sa, values)),
            not_service_account_values=tuple(map(_sa, not_values)),
        )
    raise ValueError(f"no builder for condition key {key!r}")


def rule(
    *,
    from_: Sequence[L7Source] = (),
    to: Sequence[L7Operation] = (),
    when: Sequence[L7Condition] = (),
) -> L7Rule:
    return L7Rule(tuple(from_), tuple(to), tuple(when))


def l7_policy(
    name: str = "p",
    *rules: L7Rule,
    namespace: str = "demo",
    action: L7Action = L7Action.ALLOW,
    dry_run: bool = False,
    targets: Sequence[L7Target] = (L7Target("gateway", WAYPOINT),),
) -> L7Authorization:
    """A policy on the ``demo/waypoint`` Gateway with ``rules`` (none given: a policy without rules)."""
    return L7Authorization(
        name=name, namespace=namespace, action=action, dry_run=dry_run, targets=tuple(targets), rules=rules
    )

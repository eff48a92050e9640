"""Authorization model: an L4 policy as pushed in ``istio.security.Authorization``.

Shape (Istio's semantics): a policy has ``rules`` (any rule matching makes the policy apply, OR);
a rule has ``clauses`` (all must match, AND); a clause has ``matches`` (any may match, OR); within one
match every non-empty field must hold and each ``not_*`` field must not. ``key`` (``namespace/name``)
is the xDS resource name. Evaluation lives in ``meshcore.policy``.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec


class Scope(enum.IntEnum):
    GLOBAL = 0
    NAMESPACE = 1
    WORKLOAD_SELECTOR = 2


class Action(enum.IntEnum):
    ALLOW = 0
    DENY = 1


class StringMatch(msgspec.Struct, frozen=True, gc=False):
    """exact / prefix / suffix match on a string, or presence (any non-empty value)."""

    kind: Literal["exact", "prefix", "suffix", "presence"]
    value: str = ""

    def matches(self, s: str) -> bool:
        if self.kind == "exact":
            return s == self.value
        if self.kind == "prefix":
            return s.startswith(self.value)
        if self.kind == "suffix":
            return s.endswith(self.value)
        return s != ""


class IpNet(msgspec.Struct, frozen=True, gc=False):
    """An address and prefix length, e.g. ``10.0.0.0``/8."""

    address: str
    length: int


class ServiceAccountMatch(msgspec.Struct, frozen=True, gc=False):
    namespace: str
    service_account: str


class Match(msgspec.Struct, frozen=True, gc=False):
    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[IpNet, ...] = ()
    not_source_ips: tuple[IpNet, ...] = ()
    destination_ips: tuple[IpNet, ...] = ()
    not_destination_ips: tuple[IpNet, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()


class Clause(msgspec.Struct, frozen=True, gc=False):
    matches: tuple[Match, ...] = ()


class Rule(msgspec.Struct, frozen=True, gc=False):
    clauses: tuple[Clause, ...] = ()


class Authorization(msgspec.Struct, frozen=True, gc=False):
    name: str
    namespace: str
    scope: Scope = Scope.WORKLOAD_SELECTOR
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

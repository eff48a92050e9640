"""L7 authorization at the waypoint: ``evaluate_l7(policies, facts) -> Decision``.

Order (Istio's HTTP order, CUSTOM aside; the same shape as ``evaluate_l4``):
  1. dry-run ALLOW/DENY policies are only recorded in ``Decision.dry_run_hits``;
  2. any matching DENY denies (``EXPLICITLY_DENIED``, naming the first in iteration order);
  3. no ALLOW policies -> allow;  4. a matching ALLOW -> allow;  5. otherwise ``NOT_ALLOWED``.
AUDIT policies (dry-run or not) never change the outcome: the matching ones are listed in
``Decision.audited_by``. Matching is Istio's AuthorizationPolicy semantics: a policy matches when any
rule does (no rules: never); a rule when one source (if any), one operation (if any) and every
condition hold; inside a source/operation every non-empty field holds, values OR, and no ``not_*``
value matches. Strings: exact/prefix/suffix/presence, case-sensitive except hosts (the lower-cased
authority, port included, as Istio documents). Paths match ``facts.match_path`` (normalised, without
query); path templates as Envoy's uri_template. Headers match per value (any value matching a
``values`` entry holds; any value matching a ``notValues`` entry fails); ``*`` means present. A request
without identity matches no principal, namespace or service account, and every ``not_*`` of them.
Policies are compiled once (CIDRs to integers, templates to regexes) and memoised by identity. Pure: no
I/O, no clock. A policy that cannot be compiled fails closed (ALLOW: never matches; DENY: matches all).
``select_l7_policies`` picks the policies that apply to a request at a waypoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meshcore.model.authorization import Action, IpNet, ServiceAccountMatch, StringMatch
from meshcore.model.l7 import (
    L7Action,
    L7Authorization,
    L7Condition,
    L7ConditionKey,
    L7Operation,
    L7Source,
    PathMatch,
    path_template_regex,
)
from meshcore.policy.decision import Decision, DenyReason, DryRunHit
from meshcore.policy.errors import InvalidPolicyError
from meshcore.policy.l4 import _compile_nets, _contains, _Net
from meshcore.policy.request import RequestFacts

_ALLOW_WITHOUT_POLICY = Decision.allow()

# A compiled check: True when it holds for the request.
_Check = Callable[[RequestFacts], bool]


def _string_matches(m: StringMatch, value: str) -> bool:
    kind = m.kind
    if kind == "exact":
        return value == m.value
    if kind == "prefix":
        return value.startswith(m.value)
    if kind == "suffix":
        return value.endswith(m.value)
    return value != ""


def _any_string(matchers: tuple[StringMatch, ...], value: str) -> bool:
    for m in matchers:
        if _string_matches(m, value):
            return True
    return False


def _any_value(matchers: tuple[StringMatch, ...], values: Sequence[str] | None) -> bool:
    """Whether any value of a header (None: absent) matches any matcher; presence = header present."""
    if values is None:
        return False
    for m in matchers:
        if m.kind == "presence":
            return True
        for v in values:
            if _string_matches(m, v):
                return True
    return False


def _path_matcher(m: PathMatch, key: str, where: str) -> Callable[[str], bool]:
    if m.kind == "template":
        try:
            regex = re.compile(path_template_regex(m.value))
        except ValueError as e:
            raise InvalidPolicyError(key, where, f"invalid path template {m.value!r}: {e}") from None
        return lambda p: regex.fullmatch(p) is not None
    value = m.value
    if m.kind == "exact":
        return lambda p: p == value
    if m.kind == "prefix":
        return lambda p: p.startswith(value)
    if m.kind == "suffix":
        return lambda p: p.endswith(value)
    return lambda p: p != ""


def _any_path(matchers: tuple[Callable[[str], bool], ...], path: str) -> bool:
    for m in matchers:
        if m(path):
            return True
    return False


def _host_matches(m: StringMatch, host: str) -> bool:
    # "*" is Envoy's present_match on :authority: any authority at all.
    return host != "" if m.kind == "presence" else _string_matches(m, host)


def _any_host(matchers: tuple[StringMatch, ...], host: str) -> bool:
    for m in matchers:
        if _host_matches(m, host):
            return True
    return False


def _sa_set(values: tuple[ServiceAccountMatch, ...]) -> frozenset[tuple[str, str]]:
    return frozenset((v.namespace, v.service_account) for v in values)


def _lower_hosts(values: tuple[StringMatch, ...]) -> tuple[StringMatch, ...]:
    # The converter already refuses upper case; lowering here keeps hand-built models case-insensitive.
    return tuple(StringMatch(m.kind, m.value.lower()) for m in values)


# ------------------------------------------------------------------------------------------ compiling


def _identity_checks(
    principals: tuple[StringMatch, ...],
    not_principals: tuple[StringMatch, ...],
    namespaces: tuple[StringMatch, ...],
    not_namespaces: tuple[StringMatch, ...],
    sas: frozenset[tuple[str, str]],
    not_sas: frozenset[tuple[str, str]],
) -> _Check | None:
    if not (principals or not_principals or namespaces or not_namespaces or sas or not_sas):
        return None
    needs_identity = bool(principals or namespaces or sas)

    def check(f: RequestFacts) -> bool:
        principal = f.principal
        ident = f.source_principal
        if principal is None or ident is None:
            # Positive identity fields cannot hold; negative ones hold trivially (nothing to match).
            return not needs_identity
        if principals and not _any_string(principals, principal):
            return False
        if not_principals and _any_string(not_principals, principal):
            return False
        if namespaces and not _any_string(namespaces, ident.namespace):
            return False
        if not_namespaces and _any_string(not_namespaces, ident.namespace):
            return False
        sa = (ident.namespace, ident.service_account)
        if sas and sa not in sas:
            return False
        if not_sas and sa in not_sas:
            return False
        return True

    return check


def _net_check(nets: tuple[_Net, ...], not_nets: tuple[_Net, ...], attr: str) -> _Check | None:
    if not nets and not not_nets:
        return None

    def check(f: RequestFacts) -> bool:
        addr: tuple[int, int] = getattr(f, attr)
        if nets and not _contains(nets, addr):
            return False
        return not (not_nets and _contains(not_nets, addr))

    return check


def _port_check(ports: tuple[int, ...], not_ports: tuple[int, ...]) -> _Check | None:
    if not ports and not not_ports:
        return None
    pos, neg = frozenset(ports), frozenset(not_ports)

    def check(f: RequestFacts) -> bool:
        port = f.destination_port
        return (not pos or port in pos) and port not in neg

    return check


def _nets(values: tuple[IpNet, ...], key: str, where: str) -> tuple[_Net, ...]:
    return _compile_nets(values, key, where)


def _compile_source(s: L7Source, key: str, where: str) -> tuple[_Check, ...]:
    checks = (
        _net_check(
            _nets(s.ip_blocks, key, f"{where}.ip_blocks"),
            _nets(s.not_ip_blocks, key, f"{where}.not_ip_blocks"),
            "src_addr",
        ),
        _net_check(
            _nets(s.remote_ip_blocks, key, f"{where}.remote_ip_blocks"),
            _nets(s.not_remote_ip_blocks, key, f"{where}.not_remote_ip_blocks"),
            "remote_addr",
        ),
        _identity_checks(
            s.principals,
            s.not_principals,
            s.namespaces,
            s.not_namespaces,
            _sa_set(s.service_accounts),
            _sa_set(s.not_service_accounts),
        ),
    )
    return tuple(c for c in checks if c is not None)


def _compile_operation(o: L7Operation, key: str, where: str) -> tuple[_Check, ...]:
    checks: list[_Check | None] = [_port_check(o.ports, o.not_ports)]
    if o.methods or o.not_methods:
        methods, not_methods = o.methods, o.not_methods

        def method_check(f: RequestFacts) -> bool:
            if methods and not _any_string(methods, f.method):
                return False
            return not (not_methods and _any_string(not_methods, f.method))

        checks.append(method_check)
    if o.hosts or o.not_hosts:
        hosts, not_hosts = _lower_hosts(o.hosts), _lower_hosts(o.not_hosts)

        def host_check(f: RequestFacts) -> bool:
            if hosts and not _any_host(hosts, f.host):
                return False
            return not (not_hosts and _any_host(not_hosts, f.host))

        checks.append(host_check)
    if o.paths or o.not_paths:
        paths = tuple(_path_matcher(m, key, f"{where}.paths[{i}]") for i, m in enumerate(o.paths))
        not_paths = tuple(_path_matcher(m, key, f"{where}.not_paths[{i}]") for i, m in enumerate(o.not_paths))

        def path_check(f: RequestFacts) -> bool:
            if paths and not _any_path(paths, f.match_path):
                return False
            return not (not_paths and _any_path(not_paths, f.match_path))

        checks.append(path_check)
    return tuple(c for c in checks if c is not None)


def _compile_condition(c: L7Condition, key: str, where: str) -> _Check:
    k = c.key
    if k is L7ConditionKey.REQUEST_HEADER:
        header, values, not_values = c.header.lower(), c.values, c.not_values

        def header_check(f: RequestFacts) -> bool:
            found = f.header_values(header)
            if values and not _any_value(values, found):
                return False
            return not (not_values and _any_value(not_values, found))

        return header_check
    if k in (L7ConditionKey.SOURCE_IP, L7ConditionKey.REMOTE_IP, L7ConditionKey.DESTINATION_IP):
        attr = {
            L7ConditionKey.SOURCE_IP: "src_addr",
            L7ConditionKey.REMOTE_IP: "remote_addr",
            L7ConditionKey.DESTINATION_IP: "dst_addr",
        }[k]
        check = _net_check(
            _nets(c.ip_values, key, f"{where}.ip_values"),
            _nets(c.not_ip_values, key, f"{where}.not_ip_values"),
            attr,
        )
    elif k is L7ConditionKey.DESTINATION_PORT:
        check = _port_check(c.port_values, c.not_port_values)
    elif k is L7ConditionKey.SOURCE_PRINCIPAL:
        check = _identity_checks(c.values, c.not_values, (), (), frozenset(), frozenset())
    elif k is L7ConditionKey.SOURCE_NAMESPACE:
        check = _identity_checks((), (), c.values, c.not_values, frozenset(), frozenset())
    elif k is L7ConditionKey.SOURCE_SERVICE_ACCOUNT:
        check = _identity_checks(
            (), (), (), (), _sa_set(c.service_account_values), _sa_set(c.not_service_account_values)
        )
    else:  # pragma: no cover - the enum is closed
        raise InvalidPolicyError(key, where, f"unknown condition key {k!r}")
    if check is None:
        raise InvalidPolicyError(key, where, f"condition {k.name} has no values of its type")
    return check


# A rule: its sources (each a tuple of checks, all must hold; any source may match; () means no
# `from`), its operations (likewise) and its conditions (all must hold).
@dataclass(frozen=True, slots=True)
class _CompiledRule:
    sources: tuple[tuple[_Check, ...], ...]
    operations: tuple[tuple[_Check, ...], ...]
    conditions: tuple[_Check, ...]

    def matches(self, f: RequestFacts) -> bool:
        for cond in self.conditions:
            if not cond(f):
                return False
        if self.sources and not _any_entry(self.sources, f):
            return False
        return not self.operations or _any_entry(self.operations, f)


def _any_entry(entries: tuple[tuple[_Check, ...], ...], f: RequestFacts) -> bool:
    for checks in entries:
        for check in checks:
            if not check(f):
                break
        else:
            return True
    return False


_MATCH_ALL = _CompiledRule((), (), ())


@dataclass(frozen=True, slots=True)
class CompiledL7Policy:
    """An L7Authorization ready for per-request evaluation."""

    key: str  # namespace/name
    action: L7Action
    dry_run: bool
    rules: tuple[_CompiledRule, ...]
    # Set when the policy could not be compiled and ``rules`` is its fail-closed stand-in.
    error: InvalidPolicyError | None = None

    def matches(self, f: RequestFacts) -> bool:
        for rule in self.rules:
            if rule.matches(f):
                return True
        return False


def compile_l7_policy(policy: L7Authorization) -> CompiledL7Policy:
    """Compile ``policy``; raise ``InvalidPolicyError`` if it cannot be enforced as written.

    Call this when policies arrive (xDS apply) to reject bad ones individually.
    """
    key = policy.key
    rules = []
    for r, rule in enumerate(policy.rules):
        where = f"rules[{r}]"
        rules.append(
            _CompiledRule(
                sources=tuple(
                    _compile_source(s, key, f"{where}.sources[{i}]") for i, s in enumerate(rule.sources)
                ),
                operations=tuple(
                    _compile_operation(o, key, f"{where}.operations[{i}]")
                    for i, o in enumerate(rule.operations)
                ),
                conditions=tuple(
                    _compile_condition(c, key, f"{where}.conditions[{i}]")
                    for i, c in enumerate(rule.conditions)
                ),
            )
        )
    return CompiledL7Policy(key, policy.action, policy.dry_run, tuple(rules))


def _compile_fail_closed(policy: L7Authorization) -> CompiledL7Policy:
    try:
        return compile_l7_policy(policy)
    except InvalidPolicyError as e:
        # ALLOW and AUDIT: no rules, never match. DENY: one rule that matches every request.
        rules = (_MATCH_ALL,) if policy.action == L7Action.DENY else ()
        return CompiledL7Policy(policy.key, policy.action, policy.dry_run, rules, error=e)


class L7PolicyCache:
    """Compiled L7 policies memoised by object identity (policies are frozen, shared by snapshots).

    Holding a reference to each cached policy keeps its ``id`` from being reused. Bounded: the oldest
    entry is evicted first. A memo only: results never depend on it.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("L7PolicyCache maxsize must be at least 1")
        self._maxsize = maxsize
        self._entries: dict[int, tuple[L7Authorization, CompiledL7Policy]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, policy: L7Authorization) -> CompiledL7Policy:
        entry = self._entries.get(id(policy))
        if entry is not None and entry[0] is policy:
            return entry[1]
        compiled = _compile_fail_closed(policy)
        while len(self._entries) >= self._maxsize:
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[id(policy)] = (policy, compiled)
        return compiled


# Process-wide memo used when the caller passes no cache (a pure function's memo, like ``re``'s).
_MEMO = L7PolicyCache()

_DRY_RUN_ACTION = {L7Action.ALLOW: Action.ALLOW, L7Action.DENY: Action.DENY}


def evaluate_l7(
    policies: Iterable[L7Authorization], facts: RequestFacts, *, cache: L7PolicyCache | None = None
) -> Decision:
    """Decide whether the request described by ``facts`` may proceed.

    ``policies`` are the ones that apply to this request (``select_l7_policies``); their order only
    decides which DENY is named when several match.
    """
    memo = _MEMO if cache is None else cache
    denied_by: str | None = None
    allowed_by: str | None = None
    allow_exists = False
    hits: list[DryRunHit] = []
    audited: list[str] = []
    for policy in policies:
        compiled = memo.get(policy)
        action = compiled.action
        if action == L7Action.AUDIT:
            if compiled.matches(facts):
                audited.append(compiled.key)
        elif compiled.dry_run:
            if compiled.matches(facts):
                hits.append(DryRunHit(compiled.key, _DRY_RUN_ACTION[action]))
        elif action == L7Action.DENY:
            if denied_by is None and compiled.matches(facts):
                denied_by = compiled.key
        else:
            allow_exists = True
            if allowed_by is None and denied_by is None and compiled.matches(facts):
                allowed_by = compiled.key
    dry, audit = tuple(hits), tuple(audited)
    if denied_by is not None:
        return Decision.deny(
            DenyReason.EXPLICITLY_DENIED, policy=denied_by, dry_run_hits=dry, audited_by=audit
        )
    if not allow_exists:
        return Decision.allow(dry_run_hits=dry, audited_by=audit) if dry or audit else _ALLOW_WITHOUT_POLICY
    if allowed_by is not None:
        return Decision.allow(policy=allowed_by, dry_run_hits=dry, audited_by=audit)
    return Decision.deny(DenyReason.NOT_ALLOWED, dry_run_hits=dry, audited_by=audit)


def select_l7_policies(
    policies: Iterable[L7Authorization], waypoint: str, service: str | None
) -> tuple[L7Authorization, ...]:
    """The policies that apply to a request at ``waypoint`` (``namespace/name`` of its Gateway) whose
    destination is ``service`` (its hostname; None for a request to a workload address).

    A Gateway target applies to all traffic through that waypoint; a Service target only to requests
    to that service (which reach this waypoint only because the service uses it). Order is kept.
    """
    out: list[L7Authorization] = []
    for policy in policies:
        for target in policy.targets:
            if target.kind == "gateway":
                if target.name == waypoint:
                    out.append(policy)
                    break
            elif service is not None and target.name == service:
                out.append(policy)
                break
    return tuple(out)

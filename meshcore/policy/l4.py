"""L4 authorization at the destination ztunnel: ``evaluate_l4(policies, facts) -> Decision``.

Istio's order (ztunnel ``state.rs`` ``assert_rbac``), CUSTOM aside:
  1. dry-run policies (DENY or ALLOW) are only recorded in ``Decision.dry_run_hits``;
  2. any matching DENY denies (``EXPLICITLY_DENIED``, naming the first one in iteration order);
  3. no ALLOW policies -> allow;  4. a matching ALLOW -> allow;  5. otherwise ``NOT_ALLOWED``.
Matching follows ztunnel ``rbac.rs`` exactly: a policy without rules never matches; rules OR; the
clauses of a rule AND (a rule without clauses, or a clause without matches, holds); the matches of a
clause OR, and a Match with every field empty is skipped (never matches); inside a Match every
non-empty field must hold, values within a field OR, and no ``not_*`` value may match. A peer without
identity matches no principal, namespace or service account (so ``not_principals: [presence]`` denies
plaintext). Policies are compiled once (CIDRs to integers) and memoised by object identity; the
caller chooses *which* policies apply (namespace, global and selected ones). Pure: no I/O, no clock.
A policy that cannot be compiled fails closed: as ALLOW it never matches, as DENY it matches everything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from meshcore.model.authorization import Action, Authorization, IpNet, Match, StringMatch
from meshcore.policy.decision import Decision, DenyReason, DryRunHit
from meshcore.policy.errors import InvalidPolicyError
from meshcore.policy.facts import ConnFacts

# (ip version, network as int with host bits cleared, mask as int)
_Net = tuple[int, int, int]

_ALLOW_WITHOUT_POLICY = Decision.allow()


def _compile_nets(nets: tuple[IpNet, ...], key: str, field: str) -> tuple[_Net, ...]:
    out: list[_Net] = []
    for i, net in enumerate(nets):
        try:
            ip = ipaddress.ip_address(net.address)
        except ValueError as e:
            raise InvalidPolicyError(key, f"{field}[{i}]", f"{net.address!r} is not an IP address") from e
        bits = ip.max_prefixlen
        if not 0 <= net.length <= bits:
            raise InvalidPolicyError(key, f"{field}[{i}]", f"prefix length {net.length} is outside 0..{bits}")
        # Host bits are ignored, as ipnet's ``contains`` does: 10.1.2.3/8 means 10.0.0.0/8.
        mask = ((1 << bits) - 1) ^ ((1 << (bits - net.length)) - 1)
        out.append((ip.version, int(ip) & mask, mask))
    return tuple(out)


def _contains(nets: tuple[_Net, ...], addr: tuple[int, int]) -> bool:
    version, value = addr
    for net_version, network, mask in nets:
        if net_version == version and value & mask == network:
            return True
    return False


def _any_string(matchers: tuple[StringMatch, ...], value: str) -> bool:
    for m in matchers:
        if m.matches(value):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _CompiledMatch:
    """One non-empty Match with its CIDRs parsed and its lists turned into sets."""

    dst_ports: frozenset[int]
    not_dst_ports: frozenset[int]
    dst_nets: tuple[_Net, ...]
    not_dst_nets: tuple[_Net, ...]
    src_nets: tuple[_Net, ...]
    not_src_nets: tuple[_Net, ...]
    principals: tuple[StringMatch, ...]
    not_principals: tuple[StringMatch, ...]
    namespaces: tuple[StringMatch, ...]
    not_namespaces: tuple[StringMatch, ...]
    service_accounts: frozenset[tuple[str, str]]
    not_service_accounts: frozenset[tuple[str, str]]
    # True when any positive identity field is set: such a Match never holds for a peer without identity.
    needs_identity: bool

    def matches(self, c: ConnFacts) -> bool:
        if self.dst_ports and c.dst_port not in self.dst_ports:
            return False
        if self.not_dst_ports and c.dst_port in self.not_dst_ports:
            return False
        if self.dst_nets and not _contains(self.dst_nets, c.dst_addr):
            return False
        if self.not_dst_nets and _contains(self.not_dst_nets, c.dst_addr):
            return False
        if self.src_nets and not _contains(self.src_nets, c.src_addr):
            return False
        if self.not_src_nets and _contains(self.not_src_nets, c.src_addr):
            return False
        ident = c.src_identity
        principal = c.principal
        if ident is None or principal is None:
            # Positive identity fields cannot hold; negative ones hold trivially (nothing to match).
            return not self.needs_identity
        if self.principals and not _any_string(self.principals, principal):
            return False
        if self.not_principals and _any_string(self.not_principals, principal):
            return False
        if self.namespaces and not _any_string(self.namespaces, ident.namespace):
            return False
        if self.not_namespaces and _any_string(self.not_namespaces, ident.namespace):
            return False
        sa = (ident.namespace, ident.service_account)
        if self.service_accounts and sa not in self.service_accounts:
            return False
        if self.not_service_accounts and sa in self.not_service_accounts:
            return False
        return True


def _is_empty(m: Match) -> bool:
    return not (
        m.namespaces
        or m.not_namespaces
        or m.principals
        or m.not_principals
        or m.source_ips
        or m.not_source_ips
        or m.destination_ips
        or m.not_destination_ips
        or m.destination_ports
        or m.not_destination_ports
        or m.service_accounts
        or m.not_service_accounts
    )


def _compile_match(m: Match, key: str, where: str) -> _CompiledMatch:
    return _CompiledMatch(
        dst_ports=frozenset(m.destination_ports),
        not_dst_ports=frozenset(m.not_destination_ports),
        dst_nets=_compile_nets(m.destination_ips, key, f"{where}.destination_ips"),
        not_dst_nets=_compile_nets(m.not_destination_ips, key, f"{where}.not_destination_ips"),
        src_nets=_compile_nets(m.source_ips, key, f"{where}.source_ips"),
        not_src_nets=_compile_nets(m.not_source_ips, key, f"{where}.not_source_ips"),
        principals=m.principals,
        not_principals=m.not_principals,
        namespaces=m.namespaces,
        not_namespaces=m.not_namespaces,
        service_accounts=frozenset((s.namespace, s.service_account) for s in m.service_accounts),
        not_service_accounts=frozenset((s.namespace, s.service_account) for s in m.not_service_accounts),
        needs_identity=bool(m.principals or m.namespaces or m.service_accounts),
    )


# A rule is a tuple of clauses; a clause is the tuple of its non-empty matches (OR).
_Clause = tuple[_CompiledMatch, ...]
_Rule = tuple[_Clause, ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """An Authorization ready for per-connection evaluation."""

    key: str  # namespace/name
    action: Action
    dry_run: bool
    rules: tuple[_Rule, ...]
    # Set when the policy could not be compiled and ``rules`` is its fail-closed stand-in.
    error: InvalidPolicyError | None = None

    def matches(self, c: ConnFacts) -> bool:
        for rule in self.rules:
            for clause in rule:
                for m in clause:
                    if m.matches(c):
                        break
                else:
                    break  # no match in this clause: the rule fails
            else:
                return True  # every clause held (or the rule had none)
        return False


def compile_policy(policy: Authorization) -> CompiledPolicy:
    """Compile ``policy``; raise ``InvalidPolicyError`` if it cannot be enforced as written.

    Call this when policies arrive (xDS apply) to reject bad ones individually.
    """
    key = policy.key
    rules: list[_Rule] = []
    for r, rule in enumerate(policy.rules):
        clauses: list[_Clause] = []
        for c, clause in enumerate(rule.clauses):
            if not clause.matches:
                continue  # a clause without matches holds: AND with true
            clauses.append(
                tuple(
                    _compile_match(m, key, f"rules[{r}].clauses[{c}].matches[{i}]")
                    for i, m in enumerate(clause.matches)
                    if not _is_empty(m)
                )
            )
        rules.append(tuple(clauses))
    return CompiledPolicy(key=key, action=policy.action, dry_run=policy.dry_run, rules=tuple(rules))


def _compile_fail_closed(policy: Authorization) -> CompiledPolicy:
    try:
        return compile_policy(policy)
    except InvalidPolicyError as e:
        # One rule with no clauses matches every connection; no rules matches none.
        rules: tuple[_Rule, ...] = ((),) if policy.action == Action.DENY else ()
        return CompiledPolicy(policy.key, policy.action, policy.dry_run, rules, error=e)


class PolicyCache:
    """Compiled policies memoised by object identity (policies are frozen and shared by snapshots).

    Holding a reference to each cached policy keeps its ``id`` from being reused, so a hit is one dict
    lookup and an ``is`` check, with no hashing of the policy. Bounded: the oldest entry is evicted
    first, so policies dropped from the state age out. A memo only: results never depend on it.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("PolicyCache maxsize must be at least 1")
        self._maxsize = maxsize
        self._entries: dict[int, tuple[Authorization, CompiledPolicy]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, policy: Authorization) -> CompiledPolicy:
        entry = self._entries.get(id(policy))
        if entry is not None and entry[0] is policy:
            return entry[1]
        compiled = _compile_fail_closed(policy)
        while len(self._entries) >= self._maxsize:
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[id(policy)] = (policy, compiled)
        return compiled


# Process-wide memo used when the caller passes no cache. It is a pure function's memo (like ``re``'s
# pattern cache): it holds no configuration and cannot change any result.
_MEMO = PolicyCache()


def evaluate_l4(
    policies: Iterable[Authorization], facts: ConnFacts, *, cache: PolicyCache | None = None
) -> Decision:
    """Decide whether the connection described by ``facts`` may reach its destination workload.

    ``policies`` are the policies that apply to the destination workload (the caller selects them by
    scope); their order only decides which DENY is named when several match.
    """
    memo = _MEMO if cache is None else cache
    denied_by: str | None = None
    allowed_by: str | None = None
    allow_exists = False
    hits: list[DryRunHit] = []
    for policy in policies:
        compiled = memo.get(policy)
        if compiled.dry_run:
            if compiled.matches(facts):
                hits.append(DryRunHit(compiled.key, compiled.action))
        elif compiled.action == Action.DENY:
            if denied_by is None and compiled.matches(facts):
                denied_by = compiled.key
        else:
            allow_exists = True
            if allowed_by is None and denied_by is None and compiled.matches(facts):
                allowed_by = compiled.key
    dry = tuple(hits)
    if denied_by is not None:
        return Decision.deny(DenyReason.EXPLICITLY_DENIED, policy=denied_by, dry_run_hits=dry)
    if not allow_exists:
        return Decision.allow(dry_run_hits=dry) if dry else _ALLOW_WITHOUT_POLICY
    if allowed_by is not None:
        return Decision.allow(policy=allowed_by, dry_run_hits=dry)
    return Decision.deny(DenyReason.NOT_ALLOWED, dry_run_hits=dry)

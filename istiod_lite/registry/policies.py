"""AuthorizationPolicy -> Istio ``Authorization`` for ztunnel (pure), exactly as istiod converts it.

Attachment: a ``selector`` gives scope WORKLOAD_SELECTOR (an empty selector selects every pod); no
selector gives NAMESPACE, or GLOBAL in the root namespace. Policies with ``targetRef(s)`` belong to
waypoints and are not converted; AUDIT and CUSTOM are not converted (ztunnel has neither).

Rules (one ``Rule`` per AuthorizationPolicy rule; ztunnel ORs rules, ANDs clauses, ORs matches):
- the ``to`` list is one clause with one Match per entry (ports/notPorts -> destination ports);
- the ``from`` list is one clause with one Match per entry (principals, namespaces, ipBlocks ->
  source IPs, serviceAccounts where a bare ``sa`` means the policy's namespace, and their ``not*``);
- each ``when`` is its own clause of one Match (keys source.ip, source.namespace, source.principal,
  destination.ip, destination.port; values -> positive fields, notValues -> ``not_*``).
Strings use Istio's syntax: ``*`` presence, ``*x`` suffix, ``x*`` prefix, else exact. A single IP is
a /32 (/128). ``spec: {}`` (no rules) is an ALLOW with no rules: it matches nothing, so it denies every
connection not allowed elsewhere; a rule ``{}`` has no clauses and matches everything.

HTTP-only attributes (hosts, methods, paths, requestPrincipals, remoteIpBlocks, other when keys...):
an ALLOW drops the whole rule (fails closed); a DENY keeps the rule minus those parts, and an emptied
Match is a no-op at ztunnel, so the DENY may end up with no effect; both report ``UnsupportedValue``.

Malformed input never makes the mesh more permissive: an unreadable rule (wrong type, unknown field,
bad IP or port) is dropped from an ALLOW and becomes a match-everything rule in a DENY; an unreadable
selector widens the policy to its whole namespace. Each such case is an ERROR problem naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec

from istiod_lite.registry.errors import InvalidPolicy, Problem, Reason, Severity
from meshcore.model import (
    Action,
    Authorization,
    Clause,
    Match,
    Rule,
    Scope,
    ServiceAccountMatch,
)
from meshcore.model.policy_text import parse_ip_net, string_match
from meshcore.store.resource import Resource, ResourceRef

DRY_RUN_ANNOTATION = "istio.io/dry-run"

_L4_OPERATION_FIELDS = frozenset({"ports", "notPorts"})
_L7_OPERATION_FIELDS = frozenset({"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"})
_L4_SOURCE_FIELDS = frozenset(
    {
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
        "ipBlocks",
        "notIpBlocks",
        "serviceAccounts",
        "notServiceAccounts",
    }
)
# trustDomains cannot be expressed in a Match without widening a source that also names principals.
_L7_SOURCE_FIELDS = frozenset(
    {
        "requestPrincipals",
        "notRequestPrincipals",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
        "trustDomains",
        "notTrustDomains",
    }
)
_L4_WHEN_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
_RULE_FIELDS = frozenset({"from", "to", "when"})

_HTTP_RULE_MESSAGE = (
    "ztunnel does not support HTTP attributes (found: {found}). "
    "In ambient mode you must use a waypoint proxy to enforce HTTP rules. {consequence}"
)
_ALLOW_CONSEQUENCE = (
    "Within an ALLOW policy, rules matching HTTP attributes are omitted. "
    "This will be more restrictive than requested."
)
_DENY_MIXED_CONSEQUENCE = (
    "DENY policy with HTTP attributes is enforced without the HTTP rules. "
    "This will be more restrictive than requested."
)
_DENY_NO_EFFECT_CONSEQUENCE = (
    "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel "
    "and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy."
)

_T = TypeVar("_T")


class PolicyInfo(msgspec.Struct, frozen=True):
    """A converted policy and the pod labels it selects (None: namespace or global scope)."""

    authorization: Authorization
    selector: dict[str, str] | None


class _MalformedRule(Exception):
    """A rule that cannot be read; the message names the field."""


def parse_port(value: object) -> int:
    """A port written as a number or a decimal string, 0-65535; raises ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        port = int(value)
    else:
        raise ValueError(f"{value!r} is not a port number")
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r} is outside 0-65535")
    return port


def service_account_match(value: str, policy_namespace: str) -> ServiceAccountMatch:
    """``ns/sa``, or a bare ``sa`` meaning the policy's own namespace."""
    namespace, sep, sa = value.partition("/")
    if not sep:
        return ServiceAccountMatch(policy_namespace, value)
    return ServiceAccountMatch(namespace, sa)


def convert_policy(resource: Resource, *, root_namespace: str) -> tuple[PolicyInfo | None, list[Problem]]:
    """Convert one AuthorizationPolicy; None when it is not for ztunnel. Never raises for bad input."""
    ref, spec = resource.ref, resource.spec
    problems: list[Problem] = []

    def problem(severity: Severity, reason: Reason, message: str) -> None:
        problems.append(Problem(ref, severity, reason, message))

    target_refs = [r for r in (spec.get("targetRef"), *_as_list(spec.get("targetRefs"))) if r]
    if target_refs:
        targets = ", ".join(_describe_target(t) for t in target_refs)
        problem(
            Severity.INFO,
            Reason.NOT_FOR_ZTUNNEL,
            f"policy binds to {targets} through targetRefs: a waypoint enforces it, not ztunnel",
        )
        return None, problems

    action_name = spec.get("action") or "ALLOW"
    if action_name in ("AUDIT", "CUSTOM"):
        problem(
            Severity.WARNING, Reason.UNSUPPORTED_VALUE, f"ztunnel does not support the {action_name} action"
        )
        return None, problems
    if action_name not in ("ALLOW", "DENY"):
        problem(
            Severity.ERROR,
            Reason.INVALID_VALUE,
            f"spec.action {action_name!r} is not one of ALLOW, DENY, AUDIT, CUSTOM; the policy is ignored",
        )
        return None, problems
    action = Action.ALLOW if action_name == "ALLOW" else Action.DENY

    dry_run = False
    raw_dry_run = resource.annotations.get(DRY_RUN_ANNOTATION, "")
    if raw_dry_run:
        parsed = _parse_bool(raw_dry_run)
        if parsed is None:
            problem(
                Severity.WARNING,
                Reason.INVALID_VALUE,
                f"annotation {DRY_RUN_ANNOTATION}={raw_dry_run!r} is not true or false; "
                "the policy is enforced",
            )
        dry_run = bool(parsed)

    selector: dict[str, str] | None = None
    scope = Scope.GLOBAL if resource.namespace == root_namespace else Scope.NAMESPACE
    if spec.get("selector") is not None:
        try:
            selector = _selector(ref, spec["selector"])
            scope = Scope.WORKLOAD_SELECTOR
        except InvalidPolicy as e:
            problem(
                Severity.ERROR,
                Reason.INVALID_VALUE,
                f"{e.message}; the policy applies to the whole namespace",
            )

    rules: list[Rule] = []
    http_found: set[str] = set()

    def unreadable(where: str, error: str) -> None:
        if action == Action.DENY:
            rules.append(Rule())  # no clauses: matches everything
            consequence = "the rule now denies all traffic to the selected workloads"
        else:
            consequence = "the rule is omitted, which is more restrictive than requested"
        problem(Severity.ERROR, Reason.INVALID_VALUE, f"{where}: {error}; {consequence}")

    raw_rules = spec.get("rules") or []
    if not isinstance(raw_rules, list):
        unreadable("spec.rules", "must be a list of rules")
        raw_rules = []
    for index, raw_rule in enumerate(raw_rules):
        try:
            rule, found = _convert_rule(action, raw_rule, resource.namespace)
        except _MalformedRule as e:
            unreadable(f"spec.rules[{index}]", str(e))
            continue
        http_found |= found
        if rule is not None:
            rules.append(rule)

    if http_found:
        if action == Action.ALLOW:
            consequence = _ALLOW_CONSEQUENCE
        elif any(rule_can_match(r) for r in rules):
            consequence = _DENY_MIXED_CONSEQUENCE
        else:
            consequence = _DENY_NO_EFFECT_CONSEQUENCE
        message = _HTTP_RULE_MESSAGE.format(found=", ".join(sorted(http_found)), consequence=consequence)
        problem(Severity.WARNING, Reason.UNSUPPORTED_VALUE, message)

    authorization = Authorization(
        name=resource.name,
        namespace=resource.namespace,
        scope=scope,
        action=action,
        rules=tuple(rules),
        dry_run=dry_run,
    )
    return PolicyInfo(authorization, selector), problems


def _convert_rule(action: Action, raw: Any, policy_namespace: str) -> tuple[Rule | None, set[str]]:
    """One rule -> (Rule, HTTP attributes found). None when an ALLOW rule had to be dropped."""
    if not isinstance(raw, dict):
        raise _MalformedRule(f"a rule must be a mapping with from/to/when, got {type(raw).__name__}")
    _check_fields("rule", raw, _RULE_FIELDS)
    http_found: set[str] = set()
    clauses: list[Clause] = []

    to_matches: list[Match] = []
    for i, entry in enumerate(_rule_list(raw, "to")):
        op = _entry_body(entry, "operation", f"to[{i}]")
        _check_fields(f"to[{i}].operation", op, _L4_OPERATION_FIELDS | _L7_OPERATION_FIELDS)
        http_found |= {k for k in _L7_OPERATION_FIELDS if op.get(k)}
        where = f"to[{i}].operation"
        to_matches.append(
            Match(
                destination_ports=_values(op, "ports", where, parse_port),
                not_destination_ports=_values(op, "notPorts", where, parse_port),
            )
        )
    if to_matches:
        clauses.append(Clause(tuple(to_matches)))

    from_matches: list[Match] = []
    for i, entry in enumerate(_rule_list(raw, "from")):
        src = _entry_body(entry, "source", f"from[{i}]")
        where = f"from[{i}].source"
        _check_fields(where, src, _L4_SOURCE_FIELDS | _L7_SOURCE_FIELDS)
        http_found |= {k for k in _L7_SOURCE_FIELDS if src.get(k)}

        def sa_match(v: str) -> ServiceAccountMatch:
            return service_account_match(v, policy_namespace)

        from_matches.append(
            Match(
                principals=_values(src, "principals", where, string_match),
                not_principals=_values(src, "notPrincipals", where, string_match),
                namespaces=_values(src, "namespaces", where, string_match),
                not_namespaces=_values(src, "notNamespaces", where, string_match),
                source_ips=_values(src, "ipBlocks", where, parse_ip_net),
                not_source_ips=_values(src, "notIpBlocks", where, parse_ip_net),
                service_accounts=_values(src, "serviceAccounts", where, sa_match),
                not_service_accounts=_values(src, "notServiceAccounts", where, sa_match),
            )
        )
    if from_matches:
        clauses.append(Clause(tuple(from_matches)))

    for i, cond in enumerate(_rule_list(raw, "when")):
        if not isinstance(cond, dict) or not isinstance(cond.get("key"), str):
            raise _MalformedRule(f"when[{i}] must be a mapping with a string 'key'")
        _check_fields(f"when[{i}]", cond, frozenset({"key", "values", "notValues"}))
        key: str = cond["key"]
        if key not in _L4_WHEN_KEYS:
            http_found.add(key)
        clauses.append(Clause((_when_match(cond, key, f"when[{i}]"),)))

    if action == Action.ALLOW and http_found:
        return None, http_found
    return Rule(tuple(clauses)), http_found


def _when_match(cond: Mapping[str, Any], key: str, where: str) -> Match:
    """The Match for one L4 ``when`` condition; an empty (no-op) Match for any other key."""
    if key in ("source.namespace", "source.principal"):
        pos, neg = (
            _values(cond, "values", where, string_match),
            _values(cond, "notValues", where, string_match),
        )
        if key == "source.namespace":
            return Match(namespaces=pos, not_namespaces=neg)
        return Match(principals=pos, not_principals=neg)
    if key in ("source.ip", "destination.ip"):
        pos_ip = _values(cond, "values", where, parse_ip_net)
        neg_ip = _values(cond, "notValues", where, parse_ip_net)
        if key == "source.ip":
            return Match(source_ips=pos_ip, not_source_ips=neg_ip)
        return Match(destination_ips=pos_ip, not_destination_ips=neg_ip)
    if key == "destination.port":
        return Match(
            destination_ports=_values(cond, "values", where, parse_port),
            not_destination_ports=_values(cond, "notValues", where, parse_port),
        )
    return Match()


def rule_can_match(rule: Rule) -> bool:
    """Whether ztunnel can ever match this rule: every clause needs a non-empty Match."""
    empty = Match()
    return all(any(m != empty for m in clause.matches) for clause in rule.clauses)


def _values(body: Mapping[str, Any], field: str, where: str, convert: Callable[[Any], _T]) -> tuple[_T, ...]:
    """Convert a list of strings (ports may also be numbers); any bad entry makes the rule unreadable."""
    raw = body.get(field)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _MalformedRule(f"{where}.{field} must be a list")
    out: list[_T] = []
    for value in raw:
        if not isinstance(value, str) and not (convert is parse_port and type(value) is int):
            raise _MalformedRule(f"{where}.{field} entry {value!r} must be a string")
        try:
            out.append(convert(value))
        except ValueError as e:
            raise _MalformedRule(f"{where}.{field}: {value!r} is not valid ({e})") from None
    return tuple(out)


def _rule_list(rule: Mapping[str, Any], field: str) -> list[Any]:
    value = rule.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _MalformedRule(f"'{field}' must be a list")
    return value


def _entry_body(entry: Any, name: str, where: str) -> Mapping[str, Any]:
    """The ``operation``/``source`` body of a to/from entry (a missing body reads as empty)."""
    if not isinstance(entry, dict):
        raise _MalformedRule(f"{where} must be a mapping with '{name}'")
    _check_fields(where, entry, frozenset({name}))
    body = entry.get(name)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _MalformedRule(f"{where}.{name} must be a mapping")
    return body


def _check_fields(where: str, body: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise _MalformedRule(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")


def _selector(ref: ResourceRef, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise InvalidPolicy(ref, "spec.selector must be a mapping with matchLabels")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise InvalidPolicy(ref, "spec.selector.matchLabels must map label names to string values")
    return dict(labels)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value else []


def _describe_target(target: Any) -> str:
    if isinstance(target, dict):
        return f"{target.get('kind', '?')}/{target.get('name', '?')}"
    return repr(target)


def _parse_bool(value: str) -> bool | None:
    """Go's strconv.ParseBool, which Istio uses for the dry-run annotation."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None

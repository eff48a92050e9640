"""AuthorizationPolicy with targetRef(s) -> ``L7Authorization`` for waypoints (pure), with problems.

Only policies that bind through ``targetRef``/``targetRefs`` are compiled here (the others are
ztunnel's, see ``policies.py``). Targets: kind ``Gateway`` of group ``gateway.networking.k8s.io`` is
a waypoint (``namespace/name``: all its traffic); kind ``Service`` of the core group is a service
(``name.namespace.svc.<cluster domain>``: requests to it). GatewayClass, ServiceEntry, other kinds and
cross-namespace references are refused with the reason; a policy left with no usable target is not
compiled (the ERROR says so). ``selector`` next to targetRefs is invalid in Istio; it is ignored (the
policy applies to its targets) with an ERROR.

Actions: ALLOW, DENY and AUDIT as written. CUSTOM needs an ext-authz provider we do not have: it is
refused and enforced as a DENY of its rules (fail closed). Dry run: the ``istio.io/dry-run`` annotation.

Fail closed, as ``policies.py`` documents: an unreadable rule (wrong type, unknown field, a value Istio
rejects) is dropped from an ALLOW (or AUDIT) and becomes a match-everything rule in a DENY. Valid
Istio that the waypoint does not support (``requestPrincipals``/``notRequestPrincipals`` and
``request.auth.*``: there is no RequestAuthentication here; ``connection.sni``, ``experimental.*``,
``request.experimental.inline.headers``; ``request.headers[host]``, which Envoy never sees because
HTTP/1's Host is the authority; a namespace with ``*`` inside) is refused: an ALLOW/AUDIT rule holding
it is dropped, a DENY rule is kept without that part (so it denies at least what Istio would). Every
case is a problem naming the field. Nothing here logs or touches the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec

from istiod_lite.registry.errors import Problem, Reason, Severity
from istiod_lite.registry.policies import DRY_RUN_ANNOTATION, _parse_bool, parse_port
from meshcore.model import ServiceAccountMatch, StringMatch
from meshcore.model.convert_l7 import PSEUDO_HEADERS, check_header_name
from meshcore.model.l7 import (
    L7Action,
    L7Authorization,
    L7Condition,
    L7ConditionKey,
    L7Operation,
    L7Rule,
    L7Source,
    L7Target,
    PathMatch,
    is_path_template,
    path_template_regex,
)
from meshcore.model.policy_text import parse_ip_net, string_match
from meshcore.store.resource import Resource

GATEWAY_GROUP = "gateway.networking.k8s.io"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

_T = TypeVar("_T")

_SOURCE_FIELDS = frozenset(
    {
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
        "ipBlocks",
        "notIpBlocks",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
        "serviceAccounts",
        "notServiceAccounts",
        "requestPrincipals",
        "notRequestPrincipals",
    }
)
_OPERATION_FIELDS = frozenset(
    {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}
)
_RULE_FIELDS = frozenset({"from", "to", "when"})
_NO_JWT = "there is no RequestAuthentication (JWT) support at the waypoint"
_SIMPLE_KEYS = {
    "source.ip": L7ConditionKey.SOURCE_IP,
    "remote.ip": L7ConditionKey.REMOTE_IP,
    "destination.ip": L7ConditionKey.DESTINATION_IP,
    "source.namespace": L7ConditionKey.SOURCE_NAMESPACE,
    "source.principal": L7ConditionKey.SOURCE_PRINCIPAL,
    "source.serviceAccount": L7ConditionKey.SOURCE_SERVICE_ACCOUNT,
    "destination.port": L7ConditionKey.DESTINATION_PORT,
}
# Keys Istio rejects, with Istio's reason.
_INVALID_KEYS = {
    "destination.namespace": "replaced by the policy's metadata.namespace",
    "destination.name": "deprecated: only supported in v1alpha1",
    "destination.user": "deprecated: only supported in v1alpha1",
}


class L7Compiled(msgspec.Struct, frozen=True):
    """The outcome of compiling one AuthorizationPolicy for waypoints.

    ``authorization`` is None when the policy is not for a waypoint (no targetRefs) or has no usable
    target; ``problems`` lists everything refused or repaired, each naming the field.
    """

    authorization: L7Authorization | None
    problems: list[Problem]


class _Malformed(Exception):
    """A rule part that Istio would reject; the message names the field."""


def compile_l7_policy(resource: Resource, *, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> L7Compiled:
    """Compile one AuthorizationPolicy for waypoints. Never raises for bad input."""
    ref, spec = resource.ref, resource.spec if isinstance(resource.spec, dict) else {}
    problems: list[Problem] = []

    def problem(severity: Severity, reason: Reason, message: str) -> None:
        problems.append(Problem(ref, severity, reason, message))

    raw_targets: list[tuple[str, Any]] = []
    if spec.get("targetRef") is not None:
        raw_targets.append(("spec.targetRef", spec["targetRef"]))
    refs = spec.get("targetRefs")
    if isinstance(refs, list):
        raw_targets += [(f"spec.targetRefs[{i}]", t) for i, t in enumerate(refs)]
    elif refs is not None:
        raw_targets.append(("spec.targetRefs", refs))
    if not raw_targets:
        return L7Compiled(None, problems)

    targets: list[L7Target] = []
    for where, raw in raw_targets:
        target, error = _target(raw, resource.namespace, cluster_domain)
        if target is None:
            problem(Severity.ERROR, Reason.INVALID_VALUE, f"{where}: {error}; this target is ignored")
        elif target not in targets:
            targets.append(target)
    if not targets:
        problem(
            Severity.ERROR,
            Reason.INVALID_VALUE,
            "no usable targetRef: the policy is not enforced by any waypoint until a target names a waypoint "
            f"Gateway (group {GATEWAY_GROUP}) or a Service in namespace {resource.namespace}",
        )
        return L7Compiled(None, problems)
    if spec.get("selector") is not None:
        problem(
            Severity.ERROR,
            Reason.INVALID_VALUE,
            "spec.selector cannot be set together with targetRefs; the selector is ignored and the policy "
            "applies to all traffic of its targets",
        )

    action_name = spec.get("action") or "ALLOW"
    deny_all = False
    if action_name == "CUSTOM":
        provider = spec.get("provider")
        name = provider.get("name") if isinstance(provider, dict) else None
        problem(
            Severity.WARNING,
            Reason.UNSUPPORTED_VALUE,
            f"the CUSTOM action (ext-authz provider {name!r}) is not supported at the waypoint: requests "
            "matching its rules are denied instead of being sent to the provider",
        )
        action = L7Action.DENY
    elif action_name in ("ALLOW", "DENY", "AUDIT"):
        action = L7Action[action_name]
    else:
        problem(
            Severity.ERROR,
            Reason.INVALID_VALUE,
            f"spec.action {action_name!r} is not one of ALLOW, DENY, AUDIT, CUSTOM; the policy denies every "
            "request to its targets until it is fixed",
        )
        action, deny_all = L7Action.DENY, True

    dry_run = False
    raw_dry_run = resource.annotations.get(DRY_RUN_ANNOTATION, "")
    if raw_dry_run:
        parsed = _parse_bool(raw_dry_run)
        if parsed is None:
            problem(
                Severity.WARNING,
                Reason.INVALID_VALUE,
                f"annotation {DRY_RUN_ANNOTATION}={raw_dry_run!r} is not true or false; the policy is enforced",
            )
        dry_run = bool(parsed)

    rules: list[L7Rule] = []

    def unreadable(where: str, error: str) -> None:
        if action == L7Action.DENY:
            rules.append(L7Rule())  # matches every request
            consequence = "the rule now denies every request to the policy's targets"
        else:
            consequence = "the rule is omitted, which is more restrictive than requested"
        problem(Severity.ERROR, Reason.INVALID_VALUE, f"{where}: {error}; {consequence}")

    raw_rules = spec.get("rules")
    if deny_all:
        rules.append(L7Rule())
        raw_rules = []
    elif raw_rules is None:
        raw_rules = []
        if action == L7Action.DENY:
            problem(
                Severity.ERROR,
                Reason.INVALID_VALUE,
                "a DENY policy without rules never matches; add an empty rule {} to deny every request",
            )
    elif not isinstance(raw_rules, list):
        unreadable("spec.rules", "must be a list of rules")
        raw_rules = []
    for index, raw_rule in enumerate(raw_rules):
        where = f"spec.rules[{index}]"
        try:
            rule, unsupported = _rule(raw_rule, resource.namespace)
        except _Malformed as e:
            unreadable(where, str(e))
            continue
        if unsupported:
            found = "; ".join(unsupported)
            if action == L7Action.DENY:
                consequence = (
                    "the rule is enforced without these parts, so it denies at least what Istio would deny"
                )
                rules.append(rule)
            else:
                consequence = "the rule is omitted, which is more restrictive than requested"
            problem(
                Severity.WARNING, Reason.UNSUPPORTED_VALUE, f"{where}: not supported: {found}; {consequence}"
            )
        else:
            rules.append(rule)

    authorization = L7Authorization(
        name=resource.name,
        namespace=resource.namespace,
        action=action,
        dry_run=dry_run,
        targets=tuple(targets),
        rules=tuple(rules),
    )
    return L7Compiled(authorization, problems)


def _target(raw: Any, namespace: str, cluster_domain: str) -> tuple[L7Target | None, str]:
    if not isinstance(raw, dict):
        return None, "must be a mapping with group, kind and name"
    kind, name, group = raw.get("kind"), raw.get("name"), raw.get("group") or ""
    if not isinstance(kind, str) or not isinstance(name, str) or not name or not isinstance(group, str):
        return None, "needs a string kind and a non-empty name"
    target_ns = raw.get("namespace")
    if target_ns not in (None, "", namespace):
        return None, (
            f"namespace {target_ns!r} differs from the policy's; cross-namespace references are not supported"
        )
    if kind == "Gateway" and group == GATEWAY_GROUP:
        return L7Target("gateway", f"{namespace}/{name}"), ""
    if kind == "Service" and group in ("", "core"):
        return L7Target("service", f"{name}.{namespace}.svc.{cluster_domain}"), ""
    if kind == "GatewayClass":
        return None, (
            "GatewayClass targets (every waypoint of a class) are not supported; target the waypoint Gateway "
            f"(group {GATEWAY_GROUP}, kind Gateway) or a Service"
        )
    return None, (
        f"kind {kind!r} of group {group!r} is not supported; use kind Gateway of group {GATEWAY_GROUP} "
        "(a waypoint) or kind Service of the core group"
    )


# ----------------------------------------------------------------------------------------------- rules


def _rule(raw: Any, policy_namespace: str) -> tuple[L7Rule, list[str]]:
    """One rule -> (the rule without unsupported parts, what was unsupported). Raises _Malformed."""
    if not isinstance(raw, dict):
        raise _Malformed(f"a rule must be a mapping with from/to/when, got {type(raw).__name__}")
    _check_fields("rule", raw, _RULE_FIELDS)
    unsupported: list[str] = []

    sources = []
    for i, entry in enumerate(_entries(raw, "from")):
        body = _entry_body(entry, "source", f"from[{i}]")
        sources.append(_source(body, f"from[{i}].source", policy_namespace, unsupported))
    operations = []
    for i, entry in enumerate(_entries(raw, "to")):
        body = _entry_body(entry, "operation", f"to[{i}]")
        operations.append(_operation(body, f"to[{i}].operation"))
    conditions = []
    for i, cond in enumerate(_list(raw, "when")):
        condition = _condition(cond, f"when[{i}]", policy_namespace, unsupported)
        if condition is not None:
            conditions.append(condition)
    return L7Rule(tuple(sources), tuple(operations), tuple(conditions)), unsupported


def _source(body: Mapping[str, Any], short: str, policy_namespace: str, unsupported: list[str]) -> L7Source:
    _check_fields(short, body, _SOURCE_FIELDS)
    for name in ("requestPrincipals", "notRequestPrincipals"):
        if body.get(name) is not None:
            _values(body, name, short, str)  # still refuse malformed values
            unsupported.append(f"{short}.{name} ({_NO_JWT})")
    service_accounts = _values(
        body, "serviceAccounts", short, lambda v: _service_account(v, policy_namespace)
    )
    not_service_accounts = _values(
        body, "notServiceAccounts", short, lambda v: _service_account(v, policy_namespace)
    )
    if len(service_accounts) > 16 or len(not_service_accounts) > 16:
        raise _Malformed(f"{short}: serviceAccounts and notServiceAccounts take at most 16 values each")
    identity = ("principals", "notPrincipals", "namespaces", "notNamespaces")
    if (service_accounts or not_service_accounts) and any(body.get(k) for k in identity):
        raise _Malformed(f"{short}: serviceAccounts cannot be set together with principals or namespaces")
    namespaces = _namespaces(body, "namespaces", short, unsupported)
    not_namespaces = _namespaces(body, "notNamespaces", short, unsupported)
    return L7Source(
        principals=_values(body, "principals", short, string_match),
        not_principals=_values(body, "notPrincipals", short, string_match),
        namespaces=namespaces,
        not_namespaces=not_namespaces,
        ip_blocks=_values(body, "ipBlocks", short, parse_ip_net),
        not_ip_blocks=_values(body, "notIpBlocks", short, parse_ip_net),
        remote_ip_blocks=_values(body, "remoteIpBlocks", short, parse_ip_net),
        not_remote_ip_blocks=_values(body, "notRemoteIpBlocks", short, parse_ip_net),
        service_accounts=service_accounts,
        not_service_accounts=not_service_accounts,
    )


def _namespaces(
    body: Mapping[str, Any], field: str, where: str, unsupported: list[str]
) -> tuple[StringMatch, ...]:
    values = _values(body, field, where, str)
    inner = [v for v in values if "*" in v[1:-1]]
    if inner:
        # Istio turns such a value into a regular expression; we match namespaces literally.
        unsupported.append(f"{where}.{field} {inner[0]!r} ('*' inside a namespace; only *x, x* and * are)")
        return ()
    return tuple(string_match(v) for v in values)


def _operation(body: Mapping[str, Any], where: str) -> L7Operation:
    _check_fields(where, body, _OPERATION_FIELDS)
    return L7Operation(
        hosts=_values(body, "hosts", where, _host),
        not_hosts=_values(body, "notHosts", where, _host),
        ports=_values(body, "ports", where, parse_port),
        not_ports=_values(body, "notPorts", where, parse_port),
        methods=_values(body, "methods", where, string_match),
        not_methods=_values(body, "notMethods", where, string_match),
        paths=_values(body, "paths", where, _path),
        not_paths=_values(body, "notPaths", where, _path),
    )


def _condition(raw: Any, where: str, policy_namespace: str, unsupported: list[str]) -> L7Condition | None:
    """One ``when`` entry; None when it is unsupported (recorded in ``unsupported``)."""
    if not isinstance(raw, dict):
        raise _Malformed(f"{where} must be a mapping with key, values and/or notValues")
    _check_fields(where, raw, frozenset({"key", "values", "notValues"}))
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise _Malformed(f"{where}.key must be a non-empty string")
    if not raw.get("values") and not raw.get("notValues"):
        raise _Malformed(f"{where}: at least one of values or notValues must be set for key {key}")
    if key in _INVALID_KEYS:
        raise _Malformed(f"{where}.key {key!r} is not valid: {_INVALID_KEYS[key]}")
    if key.startswith("destination.labels"):
        raise _Malformed(f"{where}.key {key!r} is not valid: replaced by the workload selector")

    def both(convert: Callable[[Any], _T]) -> tuple[tuple[_T, ...], tuple[_T, ...]]:
        return _values(raw, "values", where, convert), _values(raw, "notValues", where, convert)

    if key.startswith("request.headers"):
        header = _map_key(key, "request.headers", where)
        values, not_values = both(string_match)
        if header == "host":
            unsupported.append(
                f"{where}.key {key!r} (HTTP/1's Host is the request authority, never a header; "
                "use to.operation.hosts or request.headers[:authority])"
            )
            return None
        if header.startswith(":") and header not in PSEUDO_HEADERS:
            unsupported.append(f"{where}.key {key!r} (pseudo-headers other than {', '.join(PSEUDO_HEADERS)})")
            return None
        problem = check_header_name(header)
        if problem is not None:
            raise _Malformed(f"{where}.key {key!r}: {problem}")
        return L7Condition(L7ConditionKey.REQUEST_HEADER, header=header, values=values, not_values=not_values)
    simple = _SIMPLE_KEYS.get(key)
    if simple in (L7ConditionKey.SOURCE_IP, L7ConditionKey.REMOTE_IP, L7ConditionKey.DESTINATION_IP):
        ips, not_ips = both(parse_ip_net)
        return L7Condition(simple, ip_values=ips, not_ip_values=not_ips)
    if simple is L7ConditionKey.DESTINATION_PORT:
        ports, not_ports = both(parse_port)
        return L7Condition(simple, port_values=ports, not_port_values=not_ports)
    if simple is L7ConditionKey.SOURCE_SERVICE_ACCOUNT:
        sas, not_sas = both(lambda v: _service_account(v, policy_namespace))
        return L7Condition(simple, service_account_values=sas, not_service_account_values=not_sas)
    if simple is L7ConditionKey.SOURCE_NAMESPACE:
        raw_values, raw_not_values = both(str)
        inner = [v for v in raw_values + raw_not_values if "*" in v[1:-1]]
        if inner:
            unsupported.append(f"{where} value {inner[0]!r} ('*' inside a namespace; only *x, x* and * are)")
            return None
        return L7Condition(
            simple,
            values=tuple(map(string_match, raw_values)),
            not_values=tuple(map(string_match, raw_not_values)),
        )
    if simple is L7ConditionKey.SOURCE_PRINCIPAL:
        values, not_values = both(string_match)
        return L7Condition(simple, values=values, not_values=not_values)
    both(str)  # refuse malformed values of unsupported keys too
    if key.startswith("request.auth."):
        if key.startswith("request.auth.claims"):
            _map_key(key, "request.auth.claims", where)
        elif key not in ("request.auth.principal", "request.auth.audiences", "request.auth.presenter"):
            raise _Malformed(f"{where}.key: unknown attribute {key!r}")
        unsupported.append(f"{where}.key {key!r} ({_NO_JWT})")
        return None
    if key == "connection.sni":
        unsupported.append(f"{where}.key {key!r} (the waypoint sees no TLS SNI inside HBONE)")
        return None
    if key.startswith("experimental.envoy.filters.") or key.startswith("request.experimental.inline.headers"):
        unsupported.append(f"{where}.key {key!r} (Envoy-specific attribute)")
        return None
    raise _Malformed(f"{where}.key: unknown attribute {key!r}")


# --------------------------------------------------------------------------------------------- values


def _host(value: str) -> StringMatch:
    return string_match(value.lower())


def _path(value: str) -> PathMatch:
    if is_path_template(value):
        path_template_regex(value)  # raises ValueError with the reason
        return PathMatch("template", value)
    if "{" in value or "}" in value:
        raise ValueError("'{' or '}' outside a whole-segment {*} or {**} path template operator")
    m = string_match(value)
    return PathMatch(m.kind, m.value)


def _service_account(value: str, policy_namespace: str) -> ServiceAccountMatch:
    """Istio's ``sa`` or ``namespace/sa`` (no wildcards, both parts non-empty, at most 320 chars)."""
    if "*" in value:
        raise ValueError("wildcards are not allowed in service accounts")
    if len(value) > 320:
        raise ValueError("a service account cannot exceed 320 characters")
    namespace, sep, sa = value.partition("/")
    if not sep:
        namespace, sa = policy_namespace, value
    if not namespace or not sa or "/" in sa:
        raise ValueError("expected 'serviceAccount' or 'namespace/serviceAccount'")
    return ServiceAccountMatch(namespace, sa)


def _map_key(key: str, prefix: str, where: str) -> str:
    """``prefix[name]`` -> ``name`` (lower-case for headers); Istio's ``a[b]`` key format."""
    rest = key[len(prefix) :]
    if not (rest.startswith("[") and rest.endswith("]") and len(rest) > 2):
        raise _Malformed(f"{where}.key {key!r} should have the form {prefix}[<name>]")
    return rest[1:-1].lower() if prefix == "request.headers" else rest[1:-1]


def _values(body: Mapping[str, Any], field: str, where: str, convert: Callable[[Any], _T]) -> tuple[_T, ...]:
    """Convert a list of non-empty strings (ports may be numbers); any bad entry makes the rule unreadable."""
    raw = body.get(field)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _Malformed(f"{where}.{field} must be a list")
    out: list[_T] = []
    for value in raw:
        if not isinstance(value, str) and not (convert is parse_port and type(value) is int):
            raise _Malformed(f"{where}.{field} entry {value!r} must be a string")
        if value == "":
            raise _Malformed(f"{where}.{field}: empty values are not allowed")
        try:
            out.append(convert(value))
        except ValueError as e:
            raise _Malformed(f"{where}.{field}: {value!r} is not valid ({e})") from None
    return tuple(out)


def _list(rule: Mapping[str, Any], field: str) -> list[Any]:
    value = rule.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"'{field}' must be a list")
    return value


def _entries(rule: Mapping[str, Any], field: str) -> list[Any]:
    value = _list(rule, field)
    if field in rule and not value:
        raise _Malformed(f"'{field}' must not be empty (leave it out to match any {field} side)")
    return value


def _entry_body(entry: Any, name: str, where: str) -> Mapping[str, Any]:
    """The non-empty ``operation``/``source`` body of a to/from entry."""
    if not isinstance(entry, dict):
        raise _Malformed(f"{where} must be a mapping with '{name}'")
    _check_fields(where, entry, frozenset({name}))
    body = entry.get(name)
    if not isinstance(body, dict):
        raise _Malformed(f"{where}.{name} must be a mapping")
    if not any(v for v in body.values()):
        raise _Malformed(f"{where}.{name} must not be empty")
    return body


def _check_fields(where: str, body: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise _Malformed(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")


__all__ = ["DEFAULT_CLUSTER_DOMAIN", "GATEWAY_GROUP", "L7Compiled", "compile_l7_policy"]

"""Conversion between ``L7Authorization`` and ``ambientmesh.waypoint.v1.L7Authorization`` (pure).

``l7_authorization_from_proto`` is where a waypoint's policy enters the model from xDS, so it validates
everything the evaluator relies on and raises ``ConversionError`` naming the offending field path (the
NACK message): name, namespace and at least one target present; targets well formed (gateway
``namespace/name``, service hostname); known enum values; each StringMatch/PathMatch with one kind set;
host patterns and header names lower-case; path templates valid; IP blocks 4 or 16 raw bytes with a
prefix length that fits; ports 0..65535; service accounts with both parts; every condition with a known
key, at least one value, and only the value fields of its key's type. ``l7_authorization_to_proto``
raises ``ConversionError`` for model values that cannot be encoded. No I/O, no logging.
"""

from __future__ import annotations

from meshcore.model.authorization import IpNet, ServiceAccountMatch, StringMatch
from meshcore.model.convert import (
    ConversionError,
    _enum,
    _ip_from_bytes,
    _ip_to_bytes,
    _port,
    _required,
    convert_each,
    encode_each,
)
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
    path_template_regex,
)
from meshcore.model.policy_text import header_name_problem
from meshcore.proto import waypoint_pb2

L7_AUTHORIZATION_TYPE_URL = "type.googleapis.com/ambientmesh.waypoint.v1.L7Authorization"


# Which value fields each condition key takes: "string", "ip", "port" or "service_account".
CONDITION_VALUE_TYPE: dict[L7ConditionKey, str] = {
    L7ConditionKey.REQUEST_HEADER: "string",
    L7ConditionKey.SOURCE_IP: "ip",
    L7ConditionKey.REMOTE_IP: "ip",
    L7ConditionKey.SOURCE_NAMESPACE: "string",
    L7ConditionKey.SOURCE_PRINCIPAL: "string",
    L7ConditionKey.SOURCE_SERVICE_ACCOUNT: "service_account",
    L7ConditionKey.DESTINATION_IP: "ip",
    L7ConditionKey.DESTINATION_PORT: "port",
}
_VALUE_FIELDS = {
    "string": ("values", "not_values"),
    "ip": ("ip_values", "not_ip_values"),
    "port": ("port_values", "not_port_values"),
    "service_account": ("service_account_values", "not_service_account_values"),
}
# Pseudo-headers a request.headers[...] condition may name; RequestFacts reads them from the request line.
PSEUDO_HEADERS = (":authority", ":method", ":path")


# ------------------------------------------------------------------------------------------- matchers


def _string_to_proto(m: StringMatch, field: str) -> waypoint_pb2.StringMatch:
    if m.kind == "presence":
        pb = waypoint_pb2.StringMatch()
        pb.presence.SetInParent()
        return pb
    if m.kind in ("exact", "prefix", "suffix"):
        return waypoint_pb2.StringMatch(**{m.kind: m.value})
    raise ConversionError(field, f"unknown string match kind {m.kind!r}")


def _string_from_proto(pb: waypoint_pb2.StringMatch, field: str) -> StringMatch:
    kind = pb.WhichOneof("match_type")
    if kind == "presence":
        return StringMatch("presence")
    if kind in ("exact", "prefix", "suffix"):
        return StringMatch(kind, getattr(pb, kind))
    raise ConversionError(field, "string match has none of exact, prefix, suffix, presence")


def _host_from_proto(pb: waypoint_pb2.StringMatch, field: str) -> StringMatch:
    m = _string_from_proto(pb, field)
    if m.value != m.value.lower():
        raise ConversionError(
            field, f"host pattern {m.value!r} must be lower-case (hosts match case-insensitively)"
        )
    return m


def _path_to_proto(m: PathMatch, field: str) -> waypoint_pb2.PathMatch:
    if m.kind == "presence":
        pb = waypoint_pb2.PathMatch()
        pb.presence.SetInParent()
        return pb
    if m.kind in ("exact", "prefix", "suffix", "template"):
        return waypoint_pb2.PathMatch(**{m.kind: m.value})
    raise ConversionError(field, f"unknown path match kind {m.kind!r}")


def _path_from_proto(pb: waypoint_pb2.PathMatch, field: str) -> PathMatch:
    kind = pb.WhichOneof("match_type")
    if kind == "presence":
        return PathMatch("presence")
    if kind == "template":
        try:
            path_template_regex(pb.template)
        except ValueError as e:
            raise ConversionError(field, f"invalid path template {pb.template!r}: {e}") from None
        return PathMatch("template", pb.template)
    if kind in ("exact", "prefix", "suffix"):
        return PathMatch(kind, getattr(pb, kind))
    raise ConversionError(field, "path match has none of exact, prefix, suffix, presence, template")


def _ip_block_to_proto(n: IpNet, field: str) -> waypoint_pb2.IpBlock:
    raw = _ip_to_bytes(n.address, f"{field}.address")
    if not 0 <= n.length <= len(raw) * 8:
        raise ConversionError(f"{field}.length", f"prefix length {n.length} is outside 0..{len(raw) * 8}")
    return waypoint_pb2.IpBlock(address=raw, length=n.length)


def _ip_block_from_proto(pb: waypoint_pb2.IpBlock, field: str) -> IpNet:
    address = _ip_from_bytes(pb.address, f"{field}.address")
    bits = len(pb.address) * 8
    if pb.length > bits:
        raise ConversionError(f"{field}.length", f"prefix length {pb.length} is outside 0..{bits}")
    return IpNet(address, pb.length)


def _sa_to_proto(m: ServiceAccountMatch, field: str) -> waypoint_pb2.ServiceAccount:
    return waypoint_pb2.ServiceAccount(
        namespace=_required(m.namespace, f"{field}.namespace"),
        name=_required(m.service_account, f"{field}.name"),
    )


def _sa_from_proto(pb: waypoint_pb2.ServiceAccount, field: str) -> ServiceAccountMatch:
    return ServiceAccountMatch(
        _required(pb.namespace, f"{field}.namespace"), _required(pb.name, f"{field}.name")
    )


# ------------------------------------------------------------------------------------------- rule parts


def _source_to_proto(s: L7Source, field: str) -> waypoint_pb2.Source:
    return waypoint_pb2.Source(
        principals=encode_each(s.principals, f"{field}.principals", _string_to_proto),
        not_principals=encode_each(s.not_principals, f"{field}.not_principals", _string_to_proto),
        namespaces=encode_each(s.namespaces, f"{field}.namespaces", _string_to_proto),
        not_namespaces=encode_each(s.not_namespaces, f"{field}.not_namespaces", _string_to_proto),
        ip_blocks=encode_each(s.ip_blocks, f"{field}.ip_blocks", _ip_block_to_proto),
        not_ip_blocks=encode_each(s.not_ip_blocks, f"{field}.not_ip_blocks", _ip_block_to_proto),
        remote_ip_blocks=encode_each(s.remote_ip_blocks, f"{field}.remote_ip_blocks", _ip_block_to_proto),
        not_remote_ip_blocks=encode_each(
            s.not_remote_ip_blocks, f"{field}.not_remote_ip_blocks", _ip_block_to_proto
        ),
        service_accounts=encode_each(s.service_accounts, f"{field}.service_accounts", _sa_to_proto),
        not_service_accounts=encode_each(
            s.not_service_accounts, f"{field}.not_service_accounts", _sa_to_proto
        ),
    )


def _source_from_proto(pb: waypoint_pb2.Source, field: str) -> L7Source:
    return L7Source(
        principals=convert_each(pb.principals, f"{field}.principals", _string_from_proto),
        not_principals=convert_each(pb.not_principals, f"{field}.not_principals", _string_from_proto),
        namespaces=convert_each(pb.namespaces, f"{field}.namespaces", _string_from_proto),
        not_namespaces=convert_each(pb.not_namespaces, f"{field}.not_namespaces", _string_from_proto),
        ip_blocks=convert_each(pb.ip_blocks, f"{field}.ip_blocks", _ip_block_from_proto),
        not_ip_blocks=convert_each(pb.not_ip_blocks, f"{field}.not_ip_blocks", _ip_block_from_proto),
        remote_ip_blocks=convert_each(pb.remote_ip_blocks, f"{field}.remote_ip_blocks", _ip_block_from_proto),
        not_remote_ip_blocks=convert_each(
            pb.not_remote_ip_blocks, f"{field}.not_remote_ip_blocks", _ip_block_from_proto
        ),
        service_accounts=convert_each(pb.service_accounts, f"{field}.service_accounts", _sa_from_proto),
        not_service_accounts=convert_each(pb.not_service_accounts, f"{field}.not_service_accounts", _sa_from_proto),
    )


def _operation_to_proto(o: L7Operation, field: str) -> waypoint_pb2.Operation:
    return waypoint_pb2.Operation(
        hosts=encode_each(o.hosts, f"{field}.hosts", _string_to_proto),
        not_hosts=encode_each(o.not_hosts, f"{field}.not_hosts", _string_to_proto),
        ports=encode_each(o.ports, f"{field}.ports", _port),
        not_ports=encode_each(o.not_ports, f"{field}.not_ports", _port),
        methods=encode_each(o.methods, f"{field}.methods", _string_to_proto),
        not_methods=encode_each(o.not_methods, f"{field}.not_methods", _string_to_proto),
        paths=encode_each(o.paths, f"{field}.paths", _path_to_proto),
        not_paths=encode_each(o.not_paths, f"{field}.not_paths", _path_to_proto),
    )


def _operation_from_proto(pb: waypoint_pb2.Operation, field: str) -> L7Operation:
    return L7Operation(
        hosts=convert_each(pb.hosts, f"{field}.hosts", _host_from_proto),
        not_hosts=convert_each(pb.not_hosts, f"{field}.not_hosts", _host_from_proto),
        ports=convert_each(pb.ports, f"{field}.ports", _port),
        not_ports=convert_each(pb.not_ports, f"{field}.not_ports", _port),
        methods=convert_each(pb.methods, f"{field}.methods", _string_from_proto),
        not_methods=convert_each(pb.not_methods, f"{field}.not_methods", _string_from_proto),
        paths=convert_each(pb.paths, f"{field}.paths", _path_from_proto),
        not_paths=convert_each(pb.not_paths, f"{field}.not_paths", _path_from_proto),
    )


def check_header_name(name: str) -> str | None:
    """Why ``name`` cannot be a ``request.headers[...]`` key as carried (lower-case token), or None."""
    if name in PSEUDO_HEADERS:
        return None
    return header_name_problem(name)


def _condition_to_proto(c: L7Condition, field: str) -> waypoint_pb2.Condition:
    return waypoint_pb2.Condition(
        key=int(c.key),  # type: ignore[arg-type]
        header=c.header,
        values=encode_each(c.values, f"{field}.values", _string_to_proto),
        not_values=encode_each(c.not_values, f"{field}.not_values", _string_to_proto),
        ip_values=encode_each(c.ip_values, f"{field}.ip_values", _ip_block_to_proto),
        not_ip_values=encode_each(c.not_ip_values, f"{field}.not_ip_values", _ip_block_to_proto),
        port_values=encode_each(c.port_values, f"{field}.port_values", _port),
        not_port_values=encode_each(c.not_port_values, f"{field}.not_port_values", _port),
        service_account_values=encode_each(
            c.service_account_values, f"{field}.service_account_values", _sa_to_proto
        ),
        not_service_account_values=encode_each(
            c.not_service_account_values, f"{field}.not_service_account_values", _sa_to_proto
        ),
    )


def _condition_from_proto(pb: waypoint_pb2.Condition, field: str) -> L7Condition:
    if pb.key == 0:
        raise ConversionError(f"{field}.key", "is required but unset (CONDITION_KEY_UNSPECIFIED)")
    key = _enum(L7ConditionKey, pb.key, f"{field}.key")
    value_type = CONDITION_VALUE_TYPE[key]
    for other, names in _VALUE_FIELDS.items():
        for name in names:
            if other != value_type and len(getattr(pb, name)):
                raise ConversionError(
                    f"{field}.{name}", f"is not a value field of key {key.name} ({value_type} values)"
                )
    positive, negative = _VALUE_FIELDS[value_type]
    if not len(getattr(pb, positive)) and not len(getattr(pb, negative)):
        raise ConversionError(field, f"condition {key.name} has neither {positive} nor {negative}")
    header = ""
    if key is L7ConditionKey.REQUEST_HEADER:
        problem = check_header_name(pb.header)
        if problem is not None:
            raise ConversionError(f"{field}.header", problem)
        header = pb.header
    elif pb.header:
        raise ConversionError(f"{field}.header", f"is only for REQUEST_HEADER, not {key.name}")
    return L7Condition(
        key=key,
        header=header,
        values=convert_each(pb.values, f"{field}.values", _string_from_proto),
        not_values=convert_each(pb.not_values, f"{field}.not_values", _string_from_proto),
        ip_values=convert_each(pb.ip_values, f"{field}.ip_values", _ip_block_from_proto),
        not_ip_values=convert_each(pb.not_ip_values, f"{field}.not_ip_values", _ip_block_from_proto),
        port_values=convert_each(pb.port_values, f"{field}.port_values", _port),
        not_port_values=convert_each(pb.not_port_values, f"{field}.not_port_values", _port),
        service_account_values=convert_each(
            pb.service_account_values, f"{field}.service_account_values", _sa_from_proto
        ),
        not_service_account_values=convert_each(
            pb.not_service_account_values, f"{field}.not_service_account_values", _sa_from_proto
        ),
    )


def _target_to_proto(t: L7Target, field: str) -> waypoint_pb2.PolicyTarget:
    if t.kind == "gateway":
        return waypoint_pb2.PolicyTarget(gateway=_gateway_key(t.name, field))
    if t.kind == "service":
        return waypoint_pb2.PolicyTarget(service=_required(t.name, f"{field}.service"))
    raise ConversionError(field, f"unknown target kind {t.kind!r}")


def _target_from_proto(pb: waypoint_pb2.PolicyTarget, field: str) -> L7Target:
    kind = pb.WhichOneof("kind")
    if kind == "gateway":
        return L7Target("gateway", _gateway_key(pb.gateway, f"{field}.gateway"))
    if kind == "service":
        return L7Target("service", _required(pb.service, f"{field}.service"))
    raise ConversionError(field, "target has neither a gateway nor a service")


def _gateway_key(key: str, field: str) -> str:
    ns, sep, name = key.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ConversionError(field, f"gateway {key!r} is not of the form <namespace>/<name>")
    return key


# ------------------------------------------------------------------------------------------- policy


def l7_authorization_to_proto(a: L7Authorization) -> waypoint_pb2.L7Authorization:
    """Encode a policy; raises ``ConversionError`` for a value that cannot be encoded."""
    rules = []
    for r, rule in enumerate(a.rules):
        field = f"l7_authorization.rules[{r}]"
        rules.append(
            waypoint_pb2.Rule(
                sources=encode_each(rule.sources, f"{field}.sources", _source_to_proto),
                operations=encode_each(rule.operations, f"{field}.operations", _operation_to_proto),
                conditions=encode_each(rule.conditions, f"{field}.conditions", _condition_to_proto),
            )
        )
    return waypoint_pb2.L7Authorization(
        name=a.name,
        namespace=a.namespace,
        action=int(a.action),  # type: ignore[arg-type]
        dry_run=a.dry_run,
        targets=encode_each(a.targets, "l7_authorization.targets", _target_to_proto),
        rules=rules,
    )


def l7_authorization_from_proto(pb: waypoint_pb2.L7Authorization) -> L7Authorization:
    """Decode and validate a policy; raises ``ConversionError`` naming the bad field."""
    rules = tuple(
        L7Rule(
            sources=convert_each(rule.sources, f"l7_authorization.rules[{r}].sources", _source_from_proto),
            operations=convert_each(
                rule.operations, f"l7_authorization.rules[{r}].operations", _operation_from_proto
            ),
            conditions=convert_each(
                rule.conditions, f"l7_authorization.rules[{r}].conditions", _condition_from_proto
            ),
        )
        for r, rule in enumerate(pb.rules)
    )
    targets = convert_each(pb.targets, "l7_authorization.targets", _target_from_proto)
    if not targets:
        raise ConversionError("l7_authorization.targets", "a waypoint policy needs at least one target")
    return L7Authorization(
        name=_required(pb.name, "l7_authorization.name"),
        namespace=_required(pb.namespace, "l7_authorization.namespace"),
        action=_enum(L7Action, pb.action, "l7_authorization.action"),
        dry_run=pb.dry_run,
        targets=targets,
        rules=rules,
    )


__all__ = [
    "CONDITION_VALUE_TYPE",
    "L7_AUTHORIZATION_TYPE_URL",
    "PSEUDO_HEADERS",
    "check_header_name",
    "l7_authorization_from_proto",
    "l7_authorization_to_proto",
]

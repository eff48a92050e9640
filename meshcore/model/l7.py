"""L7 authorization model: an AuthorizationPolicy as a waypoint enforces it (``L7Authorization``).

Shape (Istio's AuthorizationPolicy semantics; ``meshcore.policy.l7`` evaluates it): a policy has
``rules`` (any rule matching makes the policy match; no rules: it never matches); a rule matches when
one of its ``sources`` (Istio's ``from``, if any), one of its ``operations`` (``to``, if any) and every
one of its ``conditions`` (``when``) match, so a rule with none of them matches every request; inside a
source or operation every non-empty field must hold, values within a field OR, and no ``not_*`` value
may match (an entry with no field set matches everything). ``targets`` say where the policy applies.
Values are already resolved: host patterns lower-case, header names lower-case, ports numbers, IP
blocks address + prefix length. ``key`` (``namespace/name``) is the xDS resource name.
Pure values; ``convert_l7`` maps them to and from ``ambientmesh.waypoint.v1``.
"""

from __future__ import annotations

import enum
import re
from typing import Literal

import msgspec

from meshcore.model.authorization import IpNet, ServiceAccountMatch, StringMatch


class L7Action(enum.IntEnum):
    ALLOW = 0
    DENY = 1
    AUDIT = 2


class L7ConditionKey(enum.IntEnum):
    """The ``when`` keys a waypoint evaluates; the value type each one takes is in the comment."""

    REQUEST_HEADER = 1  # request.headers[<name>]: StringMatch, per header value
    SOURCE_IP = 2  # source.ip: IpNet
    REMOTE_IP = 3  # remote.ip: IpNet
    SOURCE_NAMESPACE = 4  # source.namespace: StringMatch
    SOURCE_PRINCIPAL = 5  # source.principal: StringMatch
    SOURCE_SERVICE_ACCOUNT = 6  # source.serviceAccount: ServiceAccountMatch
    DESTINATION_IP = 7  # destination.ip: IpNet
    DESTINATION_PORT = 8  # destination.port: int


class L7Target(msgspec.Struct, frozen=True, gc=False):
    """Where a policy applies: a waypoint Gateway (``namespace/name``) or a Service (its hostname)."""

    kind: Literal["gateway", "service"]
    name: str


class PathMatch(msgspec.Struct, frozen=True, gc=False):
    """A ``paths`` entry: exact / prefix / suffix / presence, or an Istio path template (``{*}``,
    ``{**}``) kept as written (compiled to a matcher by ``meshcore.policy.l7``)."""

    kind: Literal["exact", "prefix", "suffix", "presence", "template"]
    value: str = ""


class L7Source(msgspec.Struct, frozen=True, gc=False):
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    ip_blocks: tuple[IpNet, ...] = ()
    not_ip_blocks: tuple[IpNet, ...] = ()
    remote_ip_blocks: tuple[IpNet, ...] = ()
    not_remote_ip_blocks: tuple[IpNet, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()


class L7Operation(msgspec.Struct, frozen=True, gc=False):
    # Lower-case patterns, matched against the lower-cased authority as sent (port included).
    hosts: tuple[StringMatch, ...] = ()
    not_hosts: tuple[StringMatch, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[StringMatch, ...] = ()
    not_methods: tuple[StringMatch, ...] = ()
    paths: tuple[PathMatch, ...] = ()
    not_paths: tuple[PathMatch, ...] = ()


class L7Condition(msgspec.Struct, frozen=True, gc=False):
    """One ``when`` entry. Only the value fields of ``key``'s type are set (see ``L7ConditionKey``)."""

    key: L7ConditionKey
    # REQUEST_HEADER only: the header name, lower-case.
    header: str = ""
    values: tuple[StringMatch, ...] = ()
    not_values: tuple[StringMatch, ...] = ()
    ip_values: tuple[IpNet, ...] = ()
    not_ip_values: tuple[IpNet, ...] = ()
    port_values: tuple[int, ...] = ()
    not_port_values: tuple[int, ...] = ()
    service_account_values: tuple[ServiceAccountMatch, ...] = ()
    not_service_account_values: tuple[ServiceAccountMatch, ...] = ()


class L7Rule(msgspec.Struct, frozen=True, gc=False):
    sources: tuple[L7Source, ...] = ()
    operations: tuple[L7Operation, ...] = ()
    conditions: tuple[L7Condition, ...] = ()


class L7Authorization(msgspec.Struct, frozen=True, gc=False):
    name: str
    namespace: str
    action: L7Action = L7Action.ALLOW
    dry_run: bool = False
    targets: tuple[L7Target, ...] = ()
    rules: tuple[L7Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --------------------------------------------------------------------------------------- path templates

# RFC 3986 pchar without "*" (Envoy's uri_template literal set; Istio validates template literals with it).
_PCHAR = r"a-zA-Z0-9._~%!$&'()+,;:@=\-"
_LITERAL_SEGMENT = re.compile(f"[{_PCHAR}]+")
MATCH_ONE_TEMPLATE = "{*}"
MATCH_ANY_TEMPLATE = "{**}"


def is_path_template(path: str) -> bool:
    """Whether Istio reads this ``paths`` value as a path template (it holds ``{*}`` or ``{**}``)."""
    return MATCH_ONE_TEMPLATE in path or MATCH_ANY_TEMPLATE in path


def path_template_regex(template: str) -> str:
    """The regular expression (for a full match) of an Istio path template; ValueError if invalid.

    As Envoy's uri_template matcher does it: ``{*}`` is one path segment of one or more RFC 3986
    pchars, ``{**}`` zero or more pchars or ``/`` and must be the last operator; every other segment is
    a literal of pchars (no ``*``, ``{`` or ``}``), and no segment may be empty except a trailing ``/``.
    """
    if not template.startswith("/"):
        raise ValueError("a path template must start with '/'")
    body = template[1:]
    trailing_slash = body.endswith("/")
    if trailing_slash:
        body = body[:-1]
    parts: list[str] = []
    seen_any = False
    for segment in body.split("/"):
        if segment in (MATCH_ONE_TEMPLATE, MATCH_ANY_TEMPLATE):
            if seen_any:
                raise ValueError("{**} must be the last operator of a path template")
            seen_any = segment == MATCH_ANY_TEMPLATE
            parts.append(f"[{_PCHAR}/]*" if seen_any else f"[{_PCHAR}]+")
        elif "{" in segment or "}" in segment:
            raise ValueError(
                f"segment {segment!r}: '{{' or '}}' outside a whole-segment {{*}} or {{**}} operator"
            )
        elif not _LITERAL_SEGMENT.fullmatch(segment):
            what = "an empty segment ('//')" if not segment else f"segment {segment!r}"
            raise ValueError(f"{what} is not a literal of RFC 3986 path characters (no '*')")
        else:
            parts.append(re.escape(segment))
    return "/" + "/".join(parts) + ("/" if trailing_slash else "")

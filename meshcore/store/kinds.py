"""Names users type for kinds: ``pods``, ``po``, ``svc``, ``AuthorizationPolicy`` -> the store's kind.

``resolve_kind`` is case-insensitive and accepts the singular, the plural and kubectl's short names
(plus ``ap`` and ``gtw`` as Istio users type them). Pure: a table and a lookup; every kind in
``resource.KINDS`` has an entry, which a unit test checks.
"""

from __future__ import annotations

from .errors import UnknownKind
from .resource import KINDS

# kind -> (plural, short names)
_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Namespace": ("namespaces", ("ns",)),
    "ServiceAccount": ("serviceaccounts", ("sa",)),
    "Pod": ("pods", ("po",)),
    "Service": ("services", ("svc",)),
    "AuthorizationPolicy": ("authorizationpolicies", ("ap",)),
    "Gateway": ("gateways", ("gtw",)),
    "HTTPRoute": ("httproutes", ()),
    "GRPCRoute": ("grpcroutes", ()),
    "VirtualService": ("virtualservices", ("vs",)),
    "DestinationRule": ("destinationrules", ("dr",)),
    "HTTPLocalRateLimitPolicy": ("httplocalratelimitpolicies", ()),
    "Deployment": ("deployments", ("deploy",)),
    "Event": ("events", ("ev",)),
}


def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for kind, (plural, shorts) in _NAMES.items():
        for alias in (kind.lower(), plural, *shorts):
            table[alias] = kind
    return table


_ALIASES = _aliases()


def resolve_kind(name: str) -> str:
    """The store kind for what a user typed; raises ``UnknownKind`` listing the supported kinds."""
    kind = _ALIASES.get(name.strip().lower())
    if kind is None:
        raise UnknownKind(name, supported_kinds())
    return kind


def plural(kind: str) -> str:
    """The lower-case plural of a store kind (``Pod`` -> ``pods``), as kubectl prints it in messages."""
    return _NAMES[kind][0]


def supported_kinds() -> list[str]:
    """Every kind the store holds, in the order of ``resource.KINDS``."""
    return list(KINDS)


def is_namespaced(kind: str) -> bool:
    return KINDS[kind][1]

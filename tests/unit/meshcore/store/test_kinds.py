"""Kind names as users type them resolve to the store's kinds; unknown ones list the supported kinds."""

from __future__ import annotations

import pytest

from meshcore.store import KINDS, UnknownKind, plural, resolve_kind


@pytest.mark.parametrize(
    ("typed", "kind"),
    [
        ("pods", "Pod"),
        ("po", "Pod"),
        ("Pod", "Pod"),
        ("svc", "Service"),
        ("ns", "Namespace"),
        ("sa", "ServiceAccount"),
        ("AuthorizationPolicies", "AuthorizationPolicy"),
        ("ap", "AuthorizationPolicy"),
        ("gtw", "Gateway"),
        ("httproutes", "HTTPRoute"),
    ],
    ids=[
        "the plural names pods",
        "the short name po names pods",
        "the kind itself is accepted",
        "svc names services",
        "ns names namespaces",
        "sa names service accounts",
        "a plural in mixed case is accepted",
        "ap names authorization policies",
        "gtw names gateways",
        "httproutes names HTTP routes",
    ],
)
def test_resolve_kind(typed: str, kind: str) -> None:
    assert resolve_kind(typed) == kind


def test_every_store_kind_has_a_plural_that_resolves_to_it() -> None:
    for kind in KINDS:
        assert resolve_kind(plural(kind)) == kind


def test_unknown_kind_lists_supported_kinds() -> None:
    with pytest.raises(UnknownKind, match="unknown kind 'statefulsets': supported kinds are Namespace, "):
        resolve_kind("statefulsets")

"""In-pod traffic redirection, istio-cni compatible: ``render`` the rules as data (pure, ``rules``), then
``apply``/``remove``/``check`` them inside a pod's network namespace (``apply``; nftables + pyroute2).

Usage: ``apply(netns_path, render(RedirectOptions()))`` when a pod enrols, ``remove(netns_path)`` when it
leaves, ``check(netns_path, ruleset)`` -> ``list[Drift]`` to verify. nft runs in-process through
libnftables (``libnft``) or, where it is missing, as the ``nft`` binary (``nft_runner``). Errors derive
from ``RedirectError`` and concern only that one pod.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ztunnel.redirect.drift import Drift, DriftKind, find_drift
from ztunnel.redirect.errors import (
    ApplyFailed,
    CheckFailed,
    LibnftablesUnavailable,
    ListingInvalid,
    NetnsGone,
    NftablesMissing,
    NftCommandFailed,
    RedirectError,
    RemoveFailed,
)
from ztunnel.redirect.rules import IpRoute, IpRule, RedirectOptions, RuleSet, render

if TYPE_CHECKING:
    from ztunnel.redirect.apply import NftBinary, NftRunner, NftSetting, apply, check, nft_runner, remove
    from ztunnel.redirect.libnft import Libnftables

# The I/O half (pyroute2, ctypes) is imported on first use: the CNI plugin, a short-lived process a
# kubelet starts per pod, needs only RedirectOptions and must not pay ~150 ms to import pyroute2.
_LAZY = {
    **dict.fromkeys(
        ("NftBinary", "NftRunner", "NftSetting", "apply", "check", "nft_runner", "remove"), "apply"
    ),
    "Libnftables": "libnft",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ApplyFailed",
    "CheckFailed",
    "Drift",
    "DriftKind",
    "IpRoute",
    "IpRule",
    "LibnftablesUnavailable",
    "Libnftables",
    "ListingInvalid",
    "NetnsGone",
    "NftBinary",
    "NftCommandFailed",
    "NftRunner",
    "NftSetting",
    "NftablesMissing",
    "RedirectError",
    "RedirectOptions",
    "RemoveFailed",
    "RuleSet",
    "apply",
    "check",
    "find_drift",
    "nft_runner",
    "remove",
    "render",
]

"""In-pod traffic redirection, istio-cni compatible: ``render`` the rules as data (pure, ``rules``), then
``apply``/``remove``/``check`` them inside a pod's network namespace (``apply``; nftables + pyroute2).

Usage: ``apply(netns_path, render(RedirectOptions()))`` when a pod enrols, ``remove(netns_path)`` when it
leaves, ``check(netns_path, ruleset)`` -> ``list[Drift]`` to verify. nft runs in-process through
libnftables (``libnft``) or, where it is missing, as the ``nft`` binary (``nft_runner``). Errors derive
from ``RedirectError`` and concern only that one pod.
"""

from ztunnel.redirect.apply import NftBinary, NftRunner, NftSetting, apply, check, nft_runner, remove
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
from ztunnel.redirect.libnft import Libnftables
from ztunnel.redirect.rules import IpRoute, IpRule, RedirectOptions, RuleSet, render

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

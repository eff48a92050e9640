"""Errors of in-pod redirection. Each one is about one pod and says what an operator can do about it.

A failure here must never disturb other pods: callers catch ``RedirectError``, report it for that pod
(CNI error, ZDS nack) and carry on. ``apply`` raises only after undoing what it did, so a pod is either
fully redirected or left as it was.
"""

from __future__ import annotations


class RedirectError(Exception):
    """Base class for redirection failures."""


class NftablesMissing(RedirectError):
    """The ``nft`` binary is not installed (or not on PATH)."""

    def __init__(self, binary: str) -> None:
        super().__init__(
            f"cannot run {binary!r}: nftables is not installed or not on PATH; "
            "install it (Debian/Ubuntu: `apt-get install nftables`) or pass the full path of nft"
        )
        self.binary = binary


class NetnsGone(RedirectError):
    """The pod's network namespace no longer exists (the pod was deleted or its sandbox restarted)."""

    def __init__(self, netns: str, reason: str) -> None:
        super().__init__(f"pod network namespace {netns} is gone: {reason}; nothing was changed")
        self.netns = netns


class ApplyFailed(RedirectError):
    """Installing the rules failed; everything this attempt changed was rolled back."""

    def __init__(self, netns: str, reason: str) -> None:
        super().__init__(f"redirection not applied in {netns}: {reason} (rolled back; the pod is unchanged)")
        self.netns = netns
        self.reason = reason


class RemoveFailed(RedirectError):
    """Some of the redirection could not be removed; ``reason`` lists what is left."""

    def __init__(self, netns: str, reason: str) -> None:
        super().__init__(f"redirection not fully removed from {netns}: {reason}")
        self.netns = netns
        self.reason = reason


class CheckFailed(RedirectError):
    """The current rules could not be read (nft failed or printed something unparseable)."""

    def __init__(self, netns: str, reason: str) -> None:
        super().__init__(f"cannot read redirection state of {netns}: {reason}")
        self.netns = netns
        self.reason = reason


class ListingInvalid(RedirectError, ValueError):
    """``nft -j list`` printed something that is not nft's JSON schema (a different nft version?)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"unexpected nft JSON listing: {reason}")
        self.reason = reason


class NftCommandFailed(RedirectError):
    """nft (the binary or libnftables) refused a command; ``reason`` is its own message. Raised by the
    nft backends inside a pod netns; ``apply``/``remove``/``check`` report it as their own error."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"nft failed: {reason}")
        self.reason = reason


class LibnftablesUnavailable(RedirectError):
    """libnftables could not be loaded; callers fall back to the ``nft`` binary."""

    def __init__(self, soname: str, reason: str) -> None:
        super().__init__(
            f"cannot load {soname}: {reason}; falling back to the nft binary "
            "(Debian/Ubuntu: `apt-get install libnftables1` for the faster in-process path)"
        )
        self.soname = soname
        self.reason = reason

"""Install, remove and verify a pod's redirection inside its network namespace (the I/O half of redirect).

How we get into the pod: every step runs on the ``NetnsHandle``'s worker thread, which has setns()ed
into the pod netns (meshcore.aio.netns). From there ``nft -f -`` is started with ``subprocess``; a child
process inherits the namespaces of the thread that forks it, so nft runs in the pod netns without
``ip netns exec``/``nsenter`` and without a preexec_fn. ip rules and routes go through a pyroute2
``IPRoute`` opened on that same thread, so its netlink socket belongs to the pod netns.
Invariants: ``apply`` is idempotent (the nft text replaces our tables; rules/routes are added only when
missing) and all-or-nothing (nft is one transaction, done last; ip rules/routes this call added are
deleted again if anything fails); ``remove`` deletes our tables, rules and routes and nothing else;
``check`` changes nothing. Blocking calls: from asyncio, run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshcore.aio import netns as aio_netns
from meshcore.aio.netns import NetnsHandle
from ztunnel.redirect.drift import Drift, find_drift
from ztunnel.redirect.errors import (
    ApplyFailed,
    CheckFailed,
    ListingInvalid,
    NetnsGone,
    NftablesMissing,
    RemoveFailed,
)
from ztunnel.redirect.rules import (
    CONNMARK,
    INPOD_MASK,
    ROUTE_TABLE,
    RULE_PRIORITY,
    IpFamily,
    IpRoute,
    IpRule,
    RuleSet,
    render_removal,
)

log = structlog.get_logger(__name__)

NetnsTarget = NetnsHandle | str | os.PathLike[str] | int
"""A pod netns: an open handle (kept open), a path or ``ip netns`` name, or an fd (duplicated)."""

DEFAULT_NFT = "nft"
DEFAULT_TIMEOUT = 10.0
_AF: dict[IpFamily, int] = {4: socket.AF_INET, 6: socket.AF_INET6}
_RTN_LOCAL = 2
_RT_SCOPE_HOST = 254
T = TypeVar("T")


@contextmanager
def _handle(target: NetnsTarget) -> Iterator[NetnsHandle]:
    if isinstance(target, NetnsHandle):
        yield target
        return
    try:
        if isinstance(target, int):
            handle = NetnsHandle.adopt_fd(os.dup(target), f"fd:{target}")
        else:
            handle = NetnsHandle.open(target)
    except aio_netns.NetnsGone as e:
        raise NetnsGone(e.where, str(e.__cause__ or e)) from e
    except OSError as e:
        raise NetnsGone(str(target), e.strerror or str(e)) from e
    with handle:
        yield handle


def _run_nft(nft: str, args: list[str], stdin: str | None, timeout: float) -> str:
    """Run nft in the calling thread's netns; returns stdout, raises ``RuntimeError(reason)``."""
    try:
        done = subprocess.run(
            [nft, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise NftablesMissing(nft) from e
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"nft {' '.join(args)} did not finish within {timeout:g}s") from e
    if done.returncode != 0:
        err = " ".join(done.stderr.split())[:500] or f"exit status {done.returncode}"
        raise RuntimeError(f"nft {' '.join(args)} failed: {err}")
    return done.stdout


# -- netlink helpers (run on the netns worker) --------------------------------------------------------


def _observed_rules(ipr: IPRoute, family: IpFamily) -> list[IpRule]:
    out = []
    for msg in ipr.get_rules(family=_AF[family]):
        mark = msg.get("FRA_FWMARK")
        if mark is None:
            continue
        out.append(
            IpRule(
                family=family,
                fwmark=mark,
                fwmask=msg.get("FRA_FWMASK", 0xFFFFFFFF),
                priority=msg.get("FRA_PRIORITY", 0),
                table=msg.get("FRA_TABLE", msg.get("table")),
            )
        )
    return out


def _observed_routes(ipr: IPRoute, family: IpFamily) -> list[IpRoute]:
    names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
    out = []
    for msg in ipr.get_routes(family=_AF[family], table=ROUTE_TABLE):
        table = msg.get("RTA_TABLE", msg.get("table"))
        if msg.get("type") != _RTN_LOCAL or table != ROUTE_TABLE:
            continue
        dst = msg.get("RTA_DST") or ("0.0.0.0" if family == 4 else "::")
        out.append(
            IpRoute(family, f"{dst}/{msg.get('dst_len')}", "local", names.get(msg.get("RTA_OIF"), "?"), table)
        )
    return out


def _rule_args(rule: IpRule) -> dict[str, Any]:
    return {
        "family": _AF[rule.family],
        "fwmark": rule.fwmark,
        "fwmask": rule.fwmask,
        "priority": rule.priority,
        "table": rule.table,
    }


def _route_args(ipr: IPRoute, route: IpRoute) -> dict[str, Any]:
    found = ipr.link_lookup(ifname=route.dev)
    if not found:
        raise RuntimeError(f"no device {route.dev!r} for {route}")
    return {
        "family": _AF[route.family],
        "dst": route.dst,
        "type": route.kind,
        "oif": found[0],
        "table": route.table,
        # iproute2 gives local routes host scope; the kernel rejects universe scope for them (EINVAL).
        "scope": _RT_SCOPE_HOST,
    }


# -- apply ----------------------------------------------------------------------------------------------


def _netlink_step(what: object, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """One netlink change, its failure worded as the ``ip`` command that failed and a likely cause."""
    try:
        fn(*args, **kwargs)
    except NetlinkError as e:
        hint = ""
        if isinstance(what, IpRoute) and what.family == 6:
            hint = " (is IPv6 disabled on lo in this pod? render with ipv6=False)"
        raise RuntimeError(f"`{what}` failed: {os.strerror(e.code) if e.code else e}{hint}") from e


def _apply_here(ruleset: RuleSet, nft: str, timeout: float) -> None:
    undo: list[Callable[[], object]] = []
    with IPRoute() as ipr:
        try:
            for rule in ruleset.ip_rules:
                if rule not in _observed_rules(ipr, rule.family):
                    _netlink_step(rule, ipr.rule, "add", **_rule_args(rule))
                    undo.append(functools.partial(ipr.rule, "del", **_rule_args(rule)))
            for route in ruleset.ip_routes:
                if route not in _observed_routes(ipr, route.family):
                    args = _route_args(ipr, route)
                    _netlink_step(route, ipr.route, "add", **args)
                    undo.append(functools.partial(ipr.route, "del", **args))
            # Last, so a failure before it needs no nft undo; nft itself is all-or-nothing.
            _run_nft(nft, ["-f", "-"], ruleset.nft_text, timeout)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except (NetlinkError, OSError) as e:  # keep undoing the rest; say what was left
                    log.error("redirect.rollback_failed", error=str(e))
            raise


def _in_pod(target: NetnsTarget, fn: Callable[..., T], *args: Any) -> tuple[str, T]:
    with _handle(target) as handle:
        return handle.label, handle.run(fn, *args)


def apply(
    netns: NetnsTarget, ruleset: RuleSet, *, nft: str = DEFAULT_NFT, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Install ``ruleset`` in the pod netns. Idempotent; on failure nothing it did is left behind.

    Raises ``NetnsGone``, ``NftablesMissing`` or ``ApplyFailed(reason)``."""
    label = str(netns)
    try:
        label, _ = _in_pod(netns, _apply_here, ruleset, nft, timeout)
    except (NetnsGone, NftablesMissing):
        raise
    except aio_netns.NetnsError as e:
        raise ApplyFailed(label, str(e)) from e
    except NetlinkError as e:
        raise ApplyFailed(label, f"netlink: {e}") from e
    except (RuntimeError, OSError) as e:
        raise ApplyFailed(label, str(e)) from e
    log.debug("redirect.applied", netns=label)


# -- remove ---------------------------------------------------------------------------------------------


def _ours(rule: IpRule) -> bool:
    return (rule.fwmark, rule.fwmask, rule.priority, rule.table) == (
        CONNMARK,
        INPOD_MASK,
        RULE_PRIORITY,
        ROUTE_TABLE,
    )


def _remove_here(nft: str, timeout: float) -> list[str]:
    problems: list[str] = []
    try:
        _run_nft(nft, ["-f", "-"], render_removal(), timeout)
    except RuntimeError as e:
        problems.append(str(e))
    with IPRoute() as ipr:
        family: IpFamily
        for family in (4, 6):
            for rule in _observed_rules(ipr, family):
                if _ours(rule):
                    try:
                        ipr.rule("del", **_rule_args(rule))
                    except NetlinkError as e:
                        problems.append(f"{rule}: {e}")
            for route in _observed_routes(ipr, family):
                if route.dst in ("0.0.0.0/0", "::/0") and route.dev == "lo":
                    try:
                        ipr.route("del", **_route_args(ipr, route))
                    except (NetlinkError, RuntimeError) as e:
                        problems.append(f"{route}: {e}")
    return problems


def remove(netns: NetnsTarget, *, nft: str = DEFAULT_NFT, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Remove our nft tables, ip rules and table-100 routes from the pod netns (whatever options they
    were applied with). Idempotent. Raises ``NetnsGone``, ``NftablesMissing`` or ``RemoveFailed``."""
    label = str(netns)
    try:
        label, problems = _in_pod(netns, _remove_here, nft, timeout)
    except (NetnsGone, NftablesMissing):
        raise
    except (aio_netns.NetnsError, NetlinkError, OSError) as e:
        raise RemoveFailed(label, str(e)) from e
    if problems:
        raise RemoveFailed(label, "; ".join(problems))
    log.debug("redirect.removed", netns=label)


# -- check ----------------------------------------------------------------------------------------------


def _observe_here(nft: str, timeout: float) -> tuple[str, list[IpRule], list[IpRoute]]:
    listing = _run_nft(nft, ["-j", "list", "ruleset"], None, timeout)
    with IPRoute() as ipr:
        families: tuple[IpFamily, IpFamily] = (4, 6)
        rules = [r for f in families for r in _observed_rules(ipr, f)]
        routes = [r for f in families for r in _observed_routes(ipr, f)]
    return listing, rules, routes


def check(
    netns: NetnsTarget, ruleset: RuleSet, *, nft: str = DEFAULT_NFT, timeout: float = DEFAULT_TIMEOUT
) -> list[Drift]:
    """How the pod netns differs from ``ruleset`` (empty: exactly as ``apply`` leaves it). Changes
    nothing. Raises ``NetnsGone``, ``NftablesMissing`` or ``CheckFailed``."""
    label = str(netns)
    try:
        label, (text, rules, routes) = _in_pod(netns, _observe_here, nft, timeout)
        return find_drift(ruleset, json.loads(text) if text.strip() else {"nftables": []}, rules, routes)
    except (NetnsGone, NftablesMissing):
        raise
    except (aio_netns.NetnsError, NetlinkError, RuntimeError, OSError, ValueError) as e:
        reason = e.reason if isinstance(e, ListingInvalid) else str(e)
        raise CheckFailed(label, reason) from e

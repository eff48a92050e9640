"""Install, remove and verify a pod's redirection inside its network namespace (the I/O half of redirect).

How we get into the pod: every step runs on the ``NetnsHandle``'s worker thread, which has setns()ed
into the pod netns (meshcore.aio.netns). ip rules and routes are added as one batch of rtnetlink requests
(pyroute2's message classes on a netlink socket made on that thread, so it belongs to the pod netns) and
read or removed through a pyroute2 ``IPRoute`` opened there. nftables goes through an ``NftRunner``:
``Libnftables`` (in-process, ``libnft``; its context is created on that same thread, so its netlink
socket is the pod's too) or, where the library is missing, ``NftBinary`` (``nft -f -`` started from that
thread: a child inherits the forking thread's namespaces, so no ``ip netns exec`` is needed). Both take
one nft text as one kernel transaction and raise the same ``NftCommandFailed``.
Invariants: ``apply`` is idempotent (the nft text replaces our tables; rules/routes are added with
NLM_F_EXCL and an existing identical one is kept) and all-or-nothing (nft is one transaction, done
last; ip rules/routes this call added are deleted again if anything fails); ``remove`` deletes our
tables, rules and routes and nothing else; ``check`` changes nothing. In a pod with none of our tables
(the usual first install), in-process runners apply ``nft_create_text``, which skips deletes that would
each cost the kernel an RCU grace period. Blocking calls: from asyncio, run them with
``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELROUTE, RTM_DELRULE, RTM_NEWROUTE, RTM_NEWRULE
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL, fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from meshcore.aio import netns as aio_netns
from meshcore.aio.netns import NetnsHandle
from ztunnel.redirect.drift import Drift, find_drift
from ztunnel.redirect.errors import (
    ApplyFailed,
    CheckFailed,
    LibnftablesUnavailable,
    ListingInvalid,
    NetnsGone,
    NftablesMissing,
    NftCommandFailed,
    RemoveFailed,
)
from ztunnel.redirect.libnft import SONAME as LIBNFTABLES
from ztunnel.redirect.libnft import Libnftables, summarize_error
from ztunnel.redirect.rules import (
    CONNMARK,
    FAMILY,
    INPOD_MASK,
    MANAGED_TABLES,
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
_RTPROT_BOOT = 3  # what `ip route add` sets
_NLMSGHDR = struct.Struct("=LHHLL")  # length, type, flags, sequence, port
_NLMSGERR = struct.Struct("=i")  # follows the header of an NLMSG_ERROR: 0 (ack) or -errno
NETLINK_TIMEOUT = 5.0
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


# -- nft backends -----------------------------------------------------------------------------------------


class NftRunner(Protocol):
    """Runs nft text as one transaction in the *calling thread's* netns and returns what nft printed.

    Raises ``NftCommandFailed`` (nothing changed) or ``NftablesMissing``. ``in_process``: a call costs no
    process, so a read before a write is cheap."""

    in_process: bool

    def run(self, commands: str, *, json: bool = False) -> str: ...


class NftBinary:
    """``nft -f -`` (``nft -j <command>`` for JSON) as a child of the calling thread, bounded by
    ``timeout``."""

    in_process = False

    def __init__(self, path: str = DEFAULT_NFT, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"NftBinary({self.path!r})"

    def run(self, commands: str, *, json: bool = False) -> str:
        # With -j, `nft -f -` first tries the input as JSON, which uses up stdin: a JSON listing is
        # asked for as arguments instead (one command, ``nft -j list ruleset``).
        args = [self.path, "-j", *commands.split()] if json else [self.path, "-f", "-"]
        try:
            done = subprocess.run(
                args,
                input=None if json else commands,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as e:
            raise NftablesMissing(self.path) from e
        except subprocess.TimeoutExpired as e:
            raise NftCommandFailed(f"{self.path} did not finish within {self.timeout:g}s") from e
        if done.returncode != 0:
            raise NftCommandFailed(summarize_error(done.stderr, f"exit status {done.returncode}"))
        return done.stdout


NftSetting = str | NftRunner | None
"""How to run nft: None for libnftables (the ``nft`` binary where it is missing), a path for that nft
binary, or a runner."""


def nft_runner(
    nft: NftSetting = None, *, timeout: float = DEFAULT_TIMEOUT, library: str = LIBNFTABLES
) -> NftRunner:
    """The runner ``nft`` asks for (see ``NftSetting``; ``library`` is the libnftables to try); build it
    once and pass it to every call."""
    if nft is None:
        try:
            return Libnftables.load(library)
        except LibnftablesUnavailable as e:
            log.info("redirect.libnftables_unavailable", error=str(e))
            return NftBinary(DEFAULT_NFT, timeout)
    if isinstance(nft, str):
        return NftBinary(nft, timeout)
    return nft


def _managed_tables_present(runner: NftRunner, managed: tuple[str, ...]) -> bool:
    listing = runner.run(f"list tables {FAMILY}")
    names = {words[2] for words in map(str.split, listing.splitlines()) if len(words) >= 3}
    return not names.isdisjoint(managed)


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


def _route_args(route: IpRoute) -> dict[str, Any]:
    try:
        oif = socket.if_nametoindex(route.dev)  # an ioctl on a socket of the calling thread's netns
    except OSError:
        raise RuntimeError(f"no device {route.dev!r} for {route}") from None
    return {
        "family": _AF[route.family],
        "dst": route.dst,
        "type": route.kind,
        "oif": oif,
        "table": route.table,
        # iproute2 gives local routes host scope; the kernel rejects universe scope for them (EINVAL).
        "scope": _RT_SCOPE_HOST,
    }


# -- apply ----------------------------------------------------------------------------------------------


# ip rules and routes go as one batch of rtnetlink requests on a plain netlink socket, encoded by
# pyroute2's message classes: a pyroute2 ``IPRoute`` costs ~2 ms of CPU to open and drive (it runs its own
# event loop), the batch ~0.1 ms, and enrolment does this once per pod. Encoded messages are memoised
# (every pod gets the same ones), so a node agent capturing many pods at once spends its worker threads'
# time in the kernel, not in Python holding the GIL its event loop needs.


@functools.lru_cache(maxsize=64)
def _rule_msg(rule: IpRule, msg_type: int, flags: int, seq: int) -> bytes:
    msg = fibmsg()
    msg["family"] = _AF[rule.family]
    msg["action"] = FR_ACT_TO_TBL
    msg["table"] = rule.table if rule.table < 256 else 0
    msg["attrs"] = [
        ("FRA_TABLE", rule.table),
        ("FRA_PRIORITY", rule.priority),
        ("FRA_FWMARK", rule.fwmark),
        ("FRA_FWMASK", rule.fwmask),
    ]
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def _route_msg(route: IpRoute, msg_type: int, flags: int, seq: int) -> bytes:
    return _encode_route(route, _route_args(route)["oif"], msg_type, flags, seq)


@functools.lru_cache(maxsize=64)
def _encode_route(route: IpRoute, oif: int, msg_type: int, flags: int, seq: int) -> bytes:
    dst, _, prefix = route.dst.partition("/")
    msg = rtmsg()
    msg["family"] = _AF[route.family]
    msg["dst_len"] = int(prefix or (32 if route.family == 4 else 128))
    msg["table"] = route.table if route.table < 256 else 0
    msg["type"] = _RTN_LOCAL if route.kind == "local" else 1
    msg["scope"] = _RT_SCOPE_HOST  # iproute2's for local routes; the kernel rejects universe (EINVAL)
    msg["proto"] = _RTPROT_BOOT
    msg["attrs"] = [("RTA_TABLE", route.table), ("RTA_OIF", oif)]
    if msg["dst_len"]:
        msg["attrs"].append(("RTA_DST", dst))
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def _netlink_batch(requests: list[bytes]) -> list[int]:
    """Send rtnetlink ``requests`` (each with NLM_F_ACK and sequence number = its index + 1) in one
    datagram from the calling thread's netns; the errno each one got (0: done). The kernel handles them
    in order and answers each."""
    results: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(NETLINK_TIMEOUT)
        sock.bind((0, 0))
        sock.send(b"".join(requests))
        while len(results) < len(requests):
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise RuntimeError(f"netlink: no answer within {NETLINK_TIMEOUT:g}s") from None
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_ERROR and 0 < seq <= len(requests):
                    results[seq] = -_NLMSGERR.unpack_from(data, offset + _NLMSGHDR.size)[0]
                offset += max(_NLMSGHDR.size, (length + 3) & ~3)
    return [results[i + 1] for i in range(len(requests))]


def _netlink_failure(what: object, code: int, detail: str = "") -> RuntimeError:
    """A netlink change's failure worded as the ``ip`` command that failed and a likely cause."""
    hint = detail
    if not hint and isinstance(what, IpRoute) and what.family == 6:
        hint = " (is IPv6 disabled on lo in this pod? render with ipv6=False)"
    return RuntimeError(f"`{what}` failed: {os.strerror(code)}{hint}")


def _route_present(route: IpRoute) -> bool:
    with IPRoute() as ipr:
        return route in _observed_routes(ipr, route.family)


def _add_ip_rules_and_routes(ruleset: RuleSet) -> list[bytes]:
    """Add the ruleset's ip rules and routes that are not there (NLM_F_EXCL: an identical one answers
    EEXIST and is kept). Returns the delete requests that undo what was added; on failure undoes it
    itself and raises ``RuntimeError``."""
    new = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    items: list[IpRule | IpRoute] = [*ruleset.ip_rules, *ruleset.ip_routes]
    adds = [
        _rule_msg(item, RTM_NEWRULE, new, seq)
        if isinstance(item, IpRule)
        else _route_msg(item, RTM_NEWROUTE, new, seq)
        for seq, item in enumerate(items, start=1)
    ]
    added: list[bytes] = []
    failure: RuntimeError | None = None
    for item, code in zip(items, _netlink_batch(adds) if adds else [], strict=True):
        if code == 0:
            added.append(_delete_msg(item))
        elif code == errno.EEXIST and isinstance(item, IpRule):
            pass  # exactly this rule is there: NLM_F_EXCL compares every attribute
        elif code == errno.EEXIST and isinstance(item, IpRoute) and _route_present(item):
            pass  # EEXIST names the key (table, destination): the route there is this one
        elif failure is None:
            detail = " (another route for this destination is in the table)" if code == errno.EEXIST else ""
            failure = _netlink_failure(item, code, detail)
    if failure is not None:
        _undo(added)
        raise failure
    return added


def _delete_msg(item: IpRule | IpRoute) -> bytes:
    if isinstance(item, IpRule):
        return _rule_msg(item, RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK, 0)
    return _route_msg(item, RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, 0)


def _undo(requests: list[bytes]) -> None:
    """Delete what this apply added (newest first); keep going on errors, and log what is left."""
    if not requests:
        return
    ordered = [_renumber(r, i) for i, r in enumerate(reversed(requests), start=1)]
    try:
        codes = _netlink_batch(ordered)
    except (OSError, RuntimeError) as e:
        log.error("redirect.rollback_failed", error=str(e))
        return
    for code in codes:
        if code not in (0, errno.ENOENT, errno.ESRCH):
            log.error("redirect.rollback_failed", error=os.strerror(code))


def _renumber(request: bytes, seq: int) -> bytes:
    length, kind, flags, _, port = _NLMSGHDR.unpack_from(request)
    return _NLMSGHDR.pack(length, kind, flags, seq, port) + request[_NLMSGHDR.size :]


def _install_nft(runner: NftRunner, ruleset: RuleSet) -> None:
    if runner.in_process and not _managed_tables_present(runner, ruleset.managed_tables):
        try:
            runner.run(ruleset.nft_create_text)
            return
        except NftCommandFailed as e:
            # A table appeared meanwhile, or the rules are bad: the replacing text settles which.
            log.debug("redirect.create_text_refused", error=e.reason)
    runner.run(ruleset.nft_text)


def _apply_here(ruleset: RuleSet, runner: NftRunner) -> None:
    undo = _add_ip_rules_and_routes(ruleset)
    try:
        # Last, so a failure before it needs no nft undo; nft itself is all-or-nothing.
        _install_nft(runner, ruleset)
    except BaseException:
        _undo(undo)
        raise


def _in_pod(target: NetnsTarget, fn: Callable[..., T], *args: Any) -> tuple[str, T]:
    with _handle(target) as handle:
        return handle.label, handle.run(fn, *args)


def apply(
    netns: NetnsTarget, ruleset: RuleSet, *, nft: NftSetting = None, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Install ``ruleset`` in the pod netns. Idempotent; on failure nothing it did is left behind.

    ``nft``: see ``NftSetting`` (``timeout`` bounds the nft binary). Raises ``NetnsGone``,
    ``NftablesMissing`` or ``ApplyFailed(reason)``."""
    label = str(netns)
    runner = nft_runner(nft, timeout=timeout)
    try:
        label, _ = _in_pod(netns, _apply_here, ruleset, runner)
    except (NetnsGone, NftablesMissing):
        raise
    except NftCommandFailed as e:
        raise ApplyFailed(label, str(e)) from e
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


def _remove_here(runner: NftRunner) -> list[str]:
    problems: list[str] = []
    try:
        if not runner.in_process or _managed_tables_present(runner, MANAGED_TABLES):
            runner.run(render_removal())
    except NftCommandFailed as e:
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
                        ipr.route("del", **_route_args(route))
                    except (NetlinkError, RuntimeError) as e:
                        problems.append(f"{route}: {e}")
    return problems


def remove(netns: NetnsTarget, *, nft: NftSetting = None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Remove our nft tables, ip rules and table-100 routes from the pod netns (whatever options they
    were applied with). Idempotent. Raises ``NetnsGone``, ``NftablesMissing`` or ``RemoveFailed``."""
    label = str(netns)
    runner = nft_runner(nft, timeout=timeout)
    try:
        label, problems = _in_pod(netns, _remove_here, runner)
    except (NetnsGone, NftablesMissing):
        raise
    except (aio_netns.NetnsError, NetlinkError, OSError) as e:
        raise RemoveFailed(label, str(e)) from e
    if problems:
        raise RemoveFailed(label, "; ".join(problems))
    log.debug("redirect.removed", netns=label)


# -- check ----------------------------------------------------------------------------------------------


def _observe_here(runner: NftRunner) -> tuple[str, list[IpRule], list[IpRoute]]:
    listing = runner.run("list ruleset", json=True)
    with IPRoute() as ipr:
        families: tuple[IpFamily, IpFamily] = (4, 6)
        rules = [r for f in families for r in _observed_rules(ipr, f)]
        routes = [r for f in families for r in _observed_routes(ipr, f)]
    return listing, rules, routes


def check(
    netns: NetnsTarget, ruleset: RuleSet, *, nft: NftSetting = None, timeout: float = DEFAULT_TIMEOUT
) -> list[Drift]:
    """How the pod netns differs from ``ruleset`` (empty: exactly as ``apply`` leaves it). Changes
    nothing. Raises ``NetnsGone``, ``NftablesMissing`` or ``CheckFailed``."""
    label = str(netns)
    runner = nft_runner(nft, timeout=timeout)
    try:
        label, (text, rules, routes) = _in_pod(netns, _observe_here, runner)
        return find_drift(ruleset, json.loads(text) if text.strip() else {"nftables": []}, rules, routes)
    except (NetnsGone, NftablesMissing):
        raise
    except (aio_netns.NetnsError, NetlinkError, NftCommandFailed, RuntimeError, OSError, ValueError) as e:
        reason = e.reason if isinstance(e, ListingInvalid) else str(e)
        raise CheckFailed(label, reason) from e

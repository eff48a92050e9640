"""In-pod redirection rules as data: ``render(options) -> RuleSet``. PURE (no I/O, no clock).

The rules are istio-cni's nftables in-pod rules (Istio >= 1.24, REDIRECT based): tables
``inet istio-ambient-{nat,mangle,raw}``, base chains at the same hooks and priorities, ztunnel's own
sockets (mark 0x539/0xfff) never captured, connmark 0x111 plus ip rule ``fwmark 0x111/0xfff lookup 100``
and ``local default dev lo table 100`` so replies to ztunnel's source-spoofing inbound sockets come back
to it. They are built from structured matches and actions, and each renders two ways: nft text for
``nft -f`` (``RuleSet.nft_text``) and the JSON ``nft -j list`` prints for it (``NftRule.listed_expr``), so
``check`` can compare the kernel's state with the same data it applied.
Invariants: the nft text replaces every managed table in one transaction (``add table`` + ``delete
table`` + full definition; a table not wanted is deleted), so applying it twice equals once and it
converges from any earlier version; rule order and text follow Istio's golden files.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# Constants from istio cni/pkg/config (InpodMark, InpodTProxyMark, RouteTableInbound) and ztunnel's ports.
INPOD_MARK = 0x539
INPOD_MASK = 0xFFF
CONNMARK = 0x111
ROUTE_TABLE = 100
RULE_PRIORITY = 32764
OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
DNS_PROXY_PORT = 15053
PROBE_SNAT_IPV4 = "169.254.7.127"
PROBE_SNAT_IPV6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"

TABLE_NAT = "istio-ambient-nat"
TABLE_MANGLE = "istio-ambient-mangle"
TABLE_RAW = "istio-ambient-raw"
# Every table we own; ``render`` replaces or deletes each of them, never touches any other.
MANAGED_TABLES = (TABLE_NAT, TABLE_MANGLE, TABLE_RAW)
FAMILY = "inet"

IpFamily = Literal[4, 6]
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RedirectOptions:
    """What to capture in one pod (istio-cni's per-pod settings)."""

    # Also capture IPv6 (ip6 rules, ::/0 route). Off by default: the local cluster is IPv4-only, and the
    # ::/0 local route cannot be added where lo has IPv6 disabled. Turn on for dual-stack pods.
    ipv6: bool = False
    # Redirect the pod's DNS (udp/tcp 53) to ztunnel's DNS proxy on 15053; adds the raw table.
    dns_capture: bool = False
    # Redirect non-HBONE inbound TCP to 15006 ("ingress mode" / bypass-inbound-capture turns it off).
    inbound_capture: bool = True
    # Source address the node SNATs kubelet probes to; those connections are let through uncaptured.
    probe_snat_ipv4: str = PROBE_SNAT_IPV4
    probe_snat_ipv6: str = PROBE_SNAT_IPV6


# -- structured nft expressions ------------------------------------------------------------------------


class Expr(Protocol):
    """One nft match or statement: how ``nft -f`` reads it and how ``nft -j list`` prints it back."""

    def nft(self) -> str: ...

    def listed(self) -> Json: ...


def _match(op: str, left: Json, right: Any) -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _hex(value: int) -> str:
    return f"0x{value:x}"


@dataclass(frozen=True, slots=True)
class L4Proto:
    proto: Literal["tcp", "udp"]

    def nft(self) -> str:
        return f"meta l4proto {self.proto}"

    def listed(self) -> Json:
        return _match("==", {"meta": {"key": "l4proto"}}, self.proto)


@dataclass(frozen=True, slots=True)
class AddrMatch:
    """``ip daddr != 127.0.0.1/32``; ``ip``/``ip6`` also restricts the rule to that family in ``inet``."""

    family: Literal["ip", "ip6"]
    field: Literal["saddr", "daddr"]
    network: str
    negate: bool = False

    def nft(self) -> str:
        op = "!= " if self.negate else ""
        return f"{self.family} {self.field} {op}{self.network}"

    def listed(self) -> Json:
        net = ipaddress.ip_network(self.network, strict=True)
        # nft prints a full-length prefix as the bare address and other prefixes as {"prefix": ...}.
        right: Any = (
            str(net.network_address)
            if net.prefixlen == net.max_prefixlen
            else {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
        )
        return _match(
            "!=" if self.negate else "==", {"payload": {"protocol": self.family, "field": self.field}}, right
        )


@dataclass(frozen=True, slots=True)
class PortMatch:
    proto: Literal["tcp", "udp"]
    field: Literal["sport", "dport"]
    port: int
    negate: bool = False

    def nft(self) -> str:
        op = "!= " if self.negate else ""
        return f"{self.proto} {self.field} {op}{self.port}"

    def listed(self) -> Json:
        return _match(
            "!=" if self.negate else "==",
            {"payload": {"protocol": self.proto, "field": self.field}},
            self.port,
        )


@dataclass(frozen=True, slots=True)
class IfnameMatch:
    key: Literal["iifname", "oifname"]
    name: str
    negate: bool = False

    def nft(self) -> str:
        op = "!= " if self.negate else ""
        return f'{self.key} {op}"{self.name}"'

    def listed(self) -> Json:
        return _match("!=" if self.negate else "==", {"meta": {"key": self.key}}, self.name)


@dataclass(frozen=True, slots=True)
class MarkMatch:
    """``meta mark & 0xfff != 0x539`` (packet mark) or ``ct mark & 0xfff == 0x111`` (connmark)."""

    source: Literal["meta", "ct"]
    value: int
    mask: int = INPOD_MASK
    negate: bool = False

    def nft(self) -> str:
        op = "!=" if self.negate else "=="
        return f"{self.source} mark & {_hex(self.mask)} {op} {_hex(self.value)}"

    def listed(self) -> Json:
        left = {"&": [{self.source: {"key": "mark"}}, self.mask]}
        return _match("!=" if self.negate else "==", left, self.value)


@dataclass(frozen=True, slots=True)
class Counter:
    """Every Istio rule counts; ``check`` ignores the numbers."""

    def nft(self) -> str:
        return "counter"

    def listed(self) -> Json:
        return {"counter": None}


@dataclass(frozen=True, slots=True)
class Accept:
    def nft(self) -> str:
        return "accept"

    def listed(self) -> Json:
        return {"accept": None}


@dataclass(frozen=True, slots=True)
class Redirect:
    port: int

    def nft(self) -> str:
        return f"redirect to :{self.port}"

    def listed(self) -> Json:
        return {"redirect": {"port": self.port}}


@dataclass(frozen=True, slots=True)
class Jump:
    chain: str

    def nft(self) -> str:
        return f"jump {self.chain}"

    def listed(self) -> Json:
        return {"jump": {"target": self.chain}}


@dataclass(frozen=True, slots=True)
class SetConnmark:
    """``ct mark set ct mark & keep | value``: set the low bits to ``value``, keep the others."""

    keep: int
    value: int

    def nft(self) -> str:
        return f"ct mark set ct mark & {_hex(self.keep)} | {_hex(self.value)}"

    def listed(self) -> Json:
        # nft folds (x & k) | v into (x & (k | v)) | v before it reaches the kernel, and lists that.
        ct_mark = {"ct": {"key": "mark"}}
        return {
            "mangle": {"key": ct_mark, "value": {"|": [{"&": [ct_mark, self.keep | self.value]}, self.value]}}
        }


@dataclass(frozen=True, slots=True)
class RestoreMark:
    """``meta mark set ct mark``: the packet gets its connection's mark (so table 100 routes it)."""

    def nft(self) -> str:
        return "meta mark set ct mark"

    def listed(self) -> Json:
        return {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}}


@dataclass(frozen=True, slots=True)
class SetCtZone:
    zone: int

    def nft(self) -> str:
        return f"ct zone set {self.zone}"

    def listed(self) -> Json:
        return {"mangle": {"key": {"ct": {"key": "zone"}}, "value": self.zone}}


# -- rules, chains, tables ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NftRule:
    """Matches, then (optionally) a counter, then one action."""

    matches: tuple[Expr, ...]
    action: Expr
    counter: bool = True

    def _exprs(self) -> tuple[Expr, ...]:
        return (*self.matches, *((Counter(),) if self.counter else ()), self.action)

    def nft(self) -> str:
        return " ".join(e.nft() for e in self._exprs())

    def listed_expr(self) -> list[Json]:
        """The rule's ``expr`` list as ``nft -j list`` prints it (counter values blanked)."""
        return [e.listed() for e in self._exprs()]


@dataclass(frozen=True, slots=True)
class BaseChain:
    """Where a base chain hooks into netfilter."""

    type: Literal["nat", "filter", "route"]
    hook: Literal["prerouting", "output"]
    priority: int
    policy: Literal["accept"] = "accept"


@dataclass(frozen=True, slots=True)
class NftChain:
    name: str
    rules: tuple[NftRule, ...] = ()
    base: BaseChain | None = None  # None: a regular chain, reached by jump


@dataclass(frozen=True, slots=True)
class NftTable:
    name: str
    chains: tuple[NftChain, ...]
    family: str = FAMILY

    def find_chain(self, name: str) -> NftChain | None:
        return next((c for c in self.chains if c.name == name), None)


# -- ip rules and routes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpRule:
    """``ip rule add fwmark 0x111/0xfff pref 32764 lookup 100`` for one address family."""

    family: IpFamily
    fwmark: int = CONNMARK
    fwmask: int = INPOD_MASK
    priority: int = RULE_PRIORITY
    table: int = ROUTE_TABLE

    def __str__(self) -> str:
        return (
            f"ip -{self.family} rule fwmark {_hex(self.fwmark)}/{_hex(self.fwmask)} "
            f"pref {self.priority} lookup {self.table}"
        )


@dataclass(frozen=True, slots=True)
class IpRoute:
    """``ip route add local 0.0.0.0/0 dev lo table 100`` (or ``::/0``)."""

    family: IpFamily
    dst: str
    kind: Literal["local"] = "local"
    dev: str = "lo"
    table: int = ROUTE_TABLE

    def __str__(self) -> str:
        return f"ip -{self.family} route {self.kind} {self.dst} dev {self.dev} table {self.table}"


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Everything one pod's redirection consists of. ``tables`` exist after apply; every other managed
    table does not."""

    tables: tuple[NftTable, ...]
    ip_rules: tuple[IpRule, ...]
    ip_routes: tuple[IpRoute, ...]
    managed_tables: tuple[str, ...] = MANAGED_TABLES

    def find_table(self, name: str) -> NftTable | None:
        return next((t for t in self.tables if t.name == name), None)

    @property
    def nft_text(self) -> str:
        """Input for ``nft -f``: one atomic transaction that replaces every managed table."""
        return render_nft(self.tables, self.managed_tables)

    @property
    def nft_create_text(self) -> str:
        """Input for ``nft -f`` in a pod that has none of the managed tables: see ``render_nft_create``."""
        return render_nft_create(self.tables)


# -- rendering -------------------------------------------------------------------------------------------


def render_nft(tables: tuple[NftTable, ...], managed: tuple[str, ...] = MANAGED_TABLES) -> str:
    """nft text that deletes each managed table (creating it first, so deleting never fails) and then
    defines the wanted ones in full. nft applies a file as one transaction: all or nothing."""
    wanted = {t.name: t for t in tables}
    unknown = set(wanted) - set(managed)
    if unknown:
        raise ValueError(f"tables {sorted(unknown)} are not managed; render would never remove them")
    lines = ["# in-pod redirection (istio-cni compatible); rendered by ztunnel.redirect.rules"]
    for name in managed:
        lines.append(f"add table {FAMILY} {name}")
        lines.append(f"delete table {FAMILY} {name}")
        table = wanted.get(name)
        if table is not None:
            lines.extend(_table_lines(table))
    return "\n".join(lines) + "\n"


def render_nft_create(tables: tuple[NftTable, ...]) -> str:
    """nft text for a pod holding none of the managed tables: ``create table`` (which fails if the table
    exists, aborting the whole transaction, so a caller that raced falls back to ``render_nft``) and the
    definitions, without ``render_nft``'s deletes: a deleted table costs the kernel an RCU grace period
    (4-16 ms), most of a first apply. Same end state as ``render_nft`` from an empty netns."""
    lines = ["# in-pod redirection (istio-cni compatible), first install; rendered by ztunnel.redirect.rules"]
    for table in tables:
        lines.append(f"create table {table.family} {table.name}")
        lines.extend(_table_lines(table))
    return "\n".join(lines) + "\n"


def render_removal(managed: tuple[str, ...] = MANAGED_TABLES) -> str:
    """nft text that removes every managed table (and nothing else); succeeds when they are absent."""
    return render_nft((), managed)


def _table_lines(table: NftTable) -> list[str]:
    lines = [f"table {table.family} {table.name} {{"]
    for i, chain in enumerate(table.chains):
        if i:
            lines.append("")
        lines.append(f"\tchain {chain.name} {{")
        if chain.base is not None:
            b = chain.base
            lines.append(f"\t\ttype {b.type} hook {b.hook} priority {b.priority}; policy {b.policy};")
        lines.extend(f"\t\t{rule.nft()}" for rule in chain.rules)
        lines.append("\t}")
    lines.append("}")
    return lines


_NOT_INPOD = MarkMatch("meta", INPOD_MARK, negate=True)
_LOOPBACK = {"ip": "127.0.0.1/32", "ip6": "::1/128"}


def _families(opts: RedirectOptions) -> tuple[Literal["ip", "ip6"], ...]:
    return ("ip", "ip6") if opts.ipv6 else ("ip",)


def _probe_addr(opts: RedirectOptions, family: Literal["ip", "ip6"]) -> str:
    addr = opts.probe_snat_ipv4 if family == "ip" else opts.probe_snat_ipv6
    return str(ipaddress.ip_address(addr))  # rejects a malformed option here, not at nft time


def _hooked(name: str, kinds: tuple[BaseChain, BaseChain], chains: dict[str, list[NftRule]]) -> NftTable:
    """A table with base chains ``prerouting``/``output`` jumping to ``istio-prerouting``/``istio-output``."""
    pre, out = kinds
    return NftTable(
        name=name,
        chains=(
            NftChain("prerouting", (NftRule((), Jump("istio-prerouting"), counter=False),), pre),
            NftChain("output", (NftRule((), Jump("istio-output"), counter=False),), out),
            NftChain("istio-prerouting", tuple(chains["istio-prerouting"])),
            NftChain("istio-output", tuple(chains["istio-output"])),
        ),
    )


def _nat(opts: RedirectOptions) -> NftTable:
    fams = _families(opts)
    pre: list[NftRule] = []
    out: list[NftRule] = []
    tcp = L4Proto("tcp")
    if opts.inbound_capture:
        # Kubelet probes arrive SNATed to the probe address: let them reach the app directly.
        pre += [NftRule((tcp, AddrMatch(f, "saddr", _probe_addr(opts, f))), Accept()) for f in fams]
    out += [NftRule((tcp, AddrMatch(f, "daddr", _probe_addr(opts, f))), Accept()) for f in fams]
    if opts.inbound_capture:
        # Inbound TCP except HBONE (15008 is served directly) and ztunnel's own packets -> 15006.
        pre += [
            NftRule(
                (
                    AddrMatch(f, "daddr", _LOOPBACK[f], negate=True),
                    PortMatch("tcp", "dport", HBONE_PORT, negate=True),
                    _NOT_INPOD,
                ),
                Redirect(INBOUND_PLAINTEXT_PORT),
            )
            for f in fams
        ]
    if opts.dns_capture:
        out.append(
            NftRule(
                (IfnameMatch("oifname", "lo", negate=True), _NOT_INPOD, PortMatch("udp", "dport", 53)),
                Redirect(DNS_PROXY_PORT),
            )
        )
        out += [
            NftRule(
                (AddrMatch(f, "daddr", _LOOPBACK[f], negate=True), PortMatch("tcp", "dport", 53), _NOT_INPOD),
                Redirect(DNS_PROXY_PORT),
            )
            for f in fams
        ]
    # Replies of connections ztunnel's spoofing inbound socket made (connmark 0x111) are not captured.
    out.append(NftRule((tcp, MarkMatch("meta", CONNMARK)), Accept()))
    # App-to-self over the pod IP (leaves through lo) is not captured.
    out += [
        NftRule((IfnameMatch("oifname", "lo"), AddrMatch(f, "daddr", _LOOPBACK[f], negate=True)), Accept())
        for f in fams
    ]
    # Everything else the app sends over TCP goes to ztunnel's outbound listener.
    out += [
        NftRule((tcp, AddrMatch(f, "daddr", _LOOPBACK[f], negate=True), _NOT_INPOD), Redirect(OUTBOUND_PORT))
        for f in fams
    ]
    kinds = (BaseChain("nat", "prerouting", -100), BaseChain("nat", "output", -100))
    return _hooked(TABLE_NAT, kinds, {"istio-prerouting": pre, "istio-output": out})


def _mangle(opts: RedirectOptions) -> NftTable:
    pre: list[NftRule] = []
    if opts.inbound_capture:
        # ztunnel's spoofed-source packets loop through lo still marked 0x539: tag their connection.
        pre.append(NftRule((MarkMatch("meta", INPOD_MARK),), SetConnmark(keep=0xFFFFF000, value=CONNMARK)))
    # The app's replies on such connections get the mark back, so ip rule 32764 routes them via table 100.
    out = [NftRule((MarkMatch("ct", CONNMARK),), RestoreMark())]
    kinds = (BaseChain("filter", "prerouting", -150), BaseChain("route", "output", -150))
    return _hooked(TABLE_MANGLE, kinds, {"istio-prerouting": pre, "istio-output": out})


def _raw() -> NftTable:
    # DNS in conntrack zone 1 so the redirected query and ztunnel's own upstream query never clash
    # (istio#33469).
    out = [NftRule((PortMatch("udp", "dport", 53), MarkMatch("meta", INPOD_MARK)), SetCtZone(1))]
    pre = [NftRule((PortMatch("udp", "sport", 53), _NOT_INPOD), SetCtZone(1))]
    kinds = (BaseChain("filter", "prerouting", -300), BaseChain("filter", "output", -300))
    return _hooked(TABLE_RAW, kinds, {"istio-prerouting": pre, "istio-output": out})


def render(opts: RedirectOptions) -> RuleSet:
    """The complete redirection for one pod, as data. Raises ``ValueError`` on a malformed option."""
    tables = [_nat(opts), _mangle(opts)]
    if opts.dns_capture:
        tables.append(_raw())
    families: tuple[IpFamily, ...] = (4, 6) if opts.ipv6 else (4,)
    return RuleSet(
        tables=tuple(tables),
        ip_rules=tuple(IpRule(f) for f in families),
        ip_routes=tuple(IpRoute(f, "0.0.0.0/0" if f == 4 else "::/0") for f in families),
    )

"""Packet capture on a link of the local cluster, and what it proves: which ports crossed, was it TLS.

``LinkCapture(netns, iface)`` sniffs one interface inside a network namespace with scapy: the
AF_PACKET socket is created on a thread that entered the namespace (``meshcore.aio.netns``), so the
caller's threads never change namespace; scapy's sniffer then reads that socket from its own thread.
Every capture is bounded by a packet count and a time limit. ``summarize`` is pure: from the packets'
TCP facts to the flows seen (client, server, server port), whether each flow's payload is a chain of
TLS records, and whether any plaintext marker appears in any packet or reassembled stream. It is how
the demo and the end-to-end tests show that bytes crossing nodes are TLS on 15008 with no plaintext.
Must not: decide pass/fail for the caller (it reports facts), or keep packets beyond the capture.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

HBONE_PORT = 15008
DEFAULT_MAX_PACKETS = 50_000
DEFAULT_TIME_LIMIT = 60.0
START_TIMEOUT = 10.0
# TLS record layer (RFC 8446 §5.1): content types change_cipher_spec(20) .. heartbeat(24), legacy
# version 0x03 0x0X, and a length of at most 2^14 + 256 (TLS 1.3) / 2^14 + 2048 (TLS 1.2 ciphertext).
_TLS_TYPES = frozenset({20, 21, 22, 23, 24})
_TLS_MAX_RECORD = 2**14 + 2048
_SEQ_MOD = 2**32


class CaptureError(Exception):
    """The capture could not start (no such namespace or interface, no CAP_NET_RAW)."""


@dataclass(frozen=True, slots=True)
class PacketFacts:
    """The TCP/IPv4 facts of one captured packet: all ``summarize`` needs."""

    src: str
    dst: str
    sport: int
    dport: int
    # TCP flags as scapy spells them ("S", "SA", "PA", "FA", "R" ...).
    flags: str
    seq: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Flow:
    """One TCP connection seen on the link (both directions)."""

    client: str  # "ip:port"
    server: str  # "ip:port"
    server_port: int
    packets: int
    payload_bytes: int
    # Every direction with payload parses as TLS records; None: no payload captured.
    tls: bool | None
    # The connection's SYN was captured (so record boundaries are known from the first byte).
    saw_start: bool


@dataclass(frozen=True, slots=True)
class CaptureSummary:
    packets: int
    flows: tuple[Flow, ...]
    # Markers found in any packet or reassembled stream (a subset of what was asked).
    markers_found: tuple[bytes, ...] = ()
    # Packets left out because they were not TCP/IPv4 between the networks asked for.
    ignored: int = 0

    @property
    def server_ports(self) -> tuple[int, ...]:
        return tuple(sorted({f.server_port for f in self.flows}))

    @property
    def payload_bytes(self) -> int:
        return sum(f.payload_bytes for f in self.flows)

    def all_tls_on(self, port: int = HBONE_PORT) -> bool:
        """Every flow is to ``port`` and every one that carried payload carried TLS records."""
        return bool(self.flows) and all(f.server_port == port and f.tls is not False for f in self.flows)


@dataclass
class _Direction:
    segments: dict[int, bytes] = field(default_factory=dict)  # seq -> payload (retransmits collapse)
    syn_seq: int | None = None  # the SYN's (or SYN-ACK's) sequence number: the stream starts after it
    opened: bool = False  # sent a bare SYN: this side is the client


def summarize(
    packets: Iterable[PacketFacts],
    *,
    markers: Sequence[bytes] = (),
    between: Sequence[str] = (),
) -> CaptureSummary:
    """Flows, TLS verdicts and markers of ``packets``. With ``between`` (CIDRs), only packets whose
    source and destination are both inside those networks count as flows (the rest are ``ignored``);
    markers are looked for in every packet regardless."""
    nets = [ipaddress.ip_network(n) for n in between]
    found: set[bytes] = set()
    directions: dict[tuple[str, int, str, int], _Direction] = {}
    counts: dict[frozenset[tuple[str, int]], int] = {}
    total = ignored = 0
    for p in packets:
        total += 1
        for marker in markers:
            if marker and marker in p.payload:
                found.add(marker)
        if nets and not (_inside(p.src, nets) and _inside(p.dst, nets)):
            ignored += 1
            continue
        key = (p.src, p.sport, p.dst, p.dport)
        d = directions.setdefault(key, _Direction())
        if "S" in p.flags:
            d.syn_seq = p.seq
            d.opened = d.opened or "A" not in p.flags
        if p.payload:
            d.segments.setdefault(p.seq, p.payload)
        pair = frozenset({(p.src, p.sport), (p.dst, p.dport)})
        counts[pair] = counts.get(pair, 0) + 1
    flows = []
    for pair, n in counts.items():
        ends = sorted(pair)
        a, b = ends if len(ends) == 2 else (ends[0], ends[0])
        client, server = _roles(a, b, directions)
        verdicts = []
        size = 0
        saw_start = True
        for src, dst in ((client, server), (server, client)):
            half = directions.get((src[0], src[1], dst[0], dst[1]))
            if half is None:
                continue
            if half.syn_seq is None:
                saw_start = False
            start = None if half.syn_seq is None else (half.syn_seq + 1) % _SEQ_MOD
            stream = reassemble(half.segments, start)
            size += sum(len(s) for s in half.segments.values())
            for marker in markers:
                if marker and marker in stream:
                    found.add(marker)
            if stream:
                verdicts.append(looks_like_tls(stream, known_start=half.syn_seq is not None))
        flows.append(
            Flow(
                client=f"{client[0]}:{client[1]}",
                server=f"{server[0]}:{server[1]}",
                server_port=server[1],
                packets=n,
                payload_bytes=size,
                tls=all(verdicts) if verdicts else None,
                saw_start=saw_start,
            )
        )
    flows.sort(key=lambda f: (f.server, f.client))
    return CaptureSummary(
        packets=total,
        flows=tuple(flows),
        markers_found=tuple(m for m in markers if m in found),
        ignored=ignored,
    )


def _inside(address: str, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in n for n in nets)


def _roles(
    a: tuple[str, int], b: tuple[str, int], directions: dict[tuple[str, int, str, int], _Direction]
) -> tuple[tuple[str, int], tuple[str, int]]:
    """(client, server): whoever sent the bare SYN is the client; without one, the ephemeral (higher)
    port is the client's."""
    for src, dst in ((a, b), (b, a)):
        d = directions.get((src[0], src[1], dst[0], dst[1]))
        if d is not None and d.opened:
            return src, dst
    return (a, b) if a[1] > b[1] else (b, a)


def reassemble(segments: dict[int, bytes], start: int | None) -> bytes:
    """One direction's bytes in sequence order from ``start`` (or the lowest seq seen), up to the first
    gap; retransmitted and overlapping segments are merged."""
    if not segments:
        return b""
    base = start if start is not None else min(segments, key=lambda s: s)
    ordered = sorted(segments.items(), key=lambda kv: (kv[0] - base) % _SEQ_MOD)
    out = bytearray()
    cursor = 0
    for seq, data in ordered:
        offset = (seq - base) % _SEQ_MOD
        if offset > cursor:
            break  # a gap: what follows cannot be placed
        out += data[cursor - offset :]
        cursor = max(cursor, offset + len(data))
    return bytes(out)


def looks_like_tls(stream: bytes, *, known_start: bool = True) -> bool:
    """``stream`` is a chain of TLS records (the last may be cut short by the capture's end).

    With ``known_start`` the chain must begin at byte 0; otherwise (a connection already open when the
    capture began, such as a pooled HBONE connection) a chain may begin anywhere in the first record's
    reach, and must then run, record after record, to the end of the stream."""
    if not stream:
        return False
    limit = 1 if known_start else min(len(stream), _TLS_MAX_RECORD + 5)
    return any(_record_chain(stream, start) for start in range(limit))


def _record_chain(stream: bytes, offset: int) -> bool:
    records = 0
    while offset + 5 <= len(stream):
        kind, major, minor = stream[offset], stream[offset + 1], stream[offset + 2]
        length = int.from_bytes(stream[offset + 3 : offset + 5], "big")
        if kind not in _TLS_TYPES or major != 3 or minor > 4 or length == 0 or length > _TLS_MAX_RECORD:
            return False
        records += 1
        offset += 5 + length
    # Ran off the end inside a record (or exactly at its end): fine, if at least one header matched and
    # what is left is no more than one header's worth.
    return records > 0 and (offset >= len(stream) or len(stream) - offset < 5)


# --- capturing (IO) -------------------------------------------------------------------------------------


def packet_facts(packet: Any) -> PacketFacts | None:
    """The TCP/IPv4 facts of a scapy packet, or None for anything else."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    if IP not in packet:
        try:
            packet = Ether(bytes(packet))
        except Exception:  # noqa: BLE001 - a frame scapy cannot decode is simply not TCP/IPv4
            return None
        if IP not in packet:
            return None
    if TCP not in packet:
        return None
    ip, tcp = packet[IP], packet[TCP]
    return PacketFacts(
        src=ip.src,
        dst=ip.dst,
        sport=int(tcp.sport),
        dport=int(tcp.dport),
        flags=str(tcp.flags),
        seq=int(tcp.seq),
        payload=bytes(tcp.payload),
    )


class LinkCapture:
    """Sniff ``iface`` inside the network namespace ``netns`` (a name under /var/run/netns or a path).

    ``start()`` returns once the sniffer reads the link; ``stop()`` returns the TCP/IPv4 packets seen.
    The capture ends by itself after ``max_packets`` or ``time_limit`` seconds, whichever comes first.
    Usable as a context manager (``stop`` runs on exit if it was not called)."""

    def __init__(
        self,
        netns: str,
        iface: str = "eth0",
        *,
        max_packets: int = DEFAULT_MAX_PACKETS,
        time_limit: float = DEFAULT_TIME_LIMIT,
    ) -> None:
        self.netns = netns
        self.iface = iface
        self.max_packets = max_packets
        self.time_limit = time_limit
        self._sniffer: Any = None
        self._socket: Any = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._facts: list[PacketFacts] | None = None

    def start(self) -> LinkCapture:
        import scapy.layers.inet  # noqa: F401 - registers IP/TCP so frames decode
        import scapy.layers.l2  # noqa: F401 - registers Ether for ARPHRD_ETHER links
        from scapy.config import conf
        from scapy.sendrecv import AsyncSniffer

        from meshcore.aio.netns import NetnsError, NetnsHandle

        try:
            with NetnsHandle.open(self.netns) as handle:
                # The AF_PACKET socket belongs to the namespace it was made in, whichever thread reads it.
                # No promiscuous mode: scapy would look the interface up among the host's.
                self._socket = handle.run(conf.L2listen, iface=self.iface, promisc=False)
        except (NetnsError, OSError) as e:
            raise CaptureError(f"cannot capture on {self.iface} in {self.netns}: {e}") from e
        started = threading.Event()
        self._sniffer = AsyncSniffer(
            opened_socket=self._socket, store=True, count=self.max_packets, started_callback=started.set
        )
        self._sniffer.start()
        # AsyncSniffer takes no timeout: a timer stops it at the time limit.
        self._timer = threading.Timer(self.time_limit, self._halt)
        self._timer.daemon = True
        self._timer.start()
        if not started.wait(START_TIMEOUT):
            self.stop()
            raise CaptureError(f"the sniffer on {self.iface} in {self.netns} did not start")
        return self

    def _halt(self) -> None:
        with self._lock:
            if self._sniffer is not None and self._sniffer.running:
                self._sniffer.stop(join=True)

    def stop(self) -> list[PacketFacts]:
        """Stop (if still running) and return the TCP/IPv4 packets seen; later calls return the same."""
        if self._facts is not None:
            return self._facts
        packets: Iterable[Any] = ()
        if self._timer is not None:
            self._timer.cancel()
        try:
            if self._sniffer is not None:
                self._halt()
                self._sniffer.join(timeout=START_TIMEOUT)
                packets = self._sniffer.results or ()
        finally:
            if self._socket is not None:
                self._socket.close()
        self._facts = [f for f in (packet_facts(p) for p in packets) if f is not None]
        return self._facts

    def __enter__(self) -> LinkCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Sans-IO SOCKS5 server side (RFC 1928): CONNECT with no authentication, for ztunnel's 15080 listener.

Bytes in (``receive_data``), events out (``GreetingReceived``, ``ConnectRequested``), bytes to write
(``data_to_send``). The shell answers a ``ConnectRequested`` with ``reply_success(bound_ip, port)`` once
the upstream (HBONE tunnel or TCP) is connected, or ``reply_failure(code)``; after success it relays raw
bytes, starting with ``take_leftover()`` (anything the client sent after its request without waiting).

Rules:
* Only method 0x00 (no authentication) and command CONNECT. Other methods get 0xFF, BIND and UDP
  ASSOCIATE get reply 0x07, unknown address types 0x08; each also raises a ``Socks5Error`` subclass.
  On any ``Socks5Error`` the shell sends ``data_to_send()`` and closes: the handshake is over.
* Addresses: IPv4 and IPv6 literals. A domain name that is an IP literal (``curl --socks5-hostname
  10.0.0.1``) is treated as that IP. Other names are refused with 0x08 unless the server was built with
  ``accept_domain_names=True``; then they come out as ``ConnectRequested(address_type=DOMAIN)`` and the
  shell resolves them (e.g. a mesh service hostname to its VIP) before replying. This core never resolves.
* Peer bytes never raise anything but ``Socks5Error``; out-of-order calls by the shell raise
  ``Socks5UsageError``. Buffers are bounded: a greeting or request is at most 262 bytes, and at most
  ``max_early_data`` bytes are held for the client before the reply.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from ztunnel.proxy.errors import (
    Socks5AddressTypeNotSupported,
    Socks5CommandNotSupported,
    Socks5ConnectionClosed,
    Socks5NoAcceptableMethod,
    Socks5ProtocolError,
    Socks5Reply,
    Socks5UsageError,
)

VERSION = 0x05
METHOD_NO_AUTH = 0x00
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
DEFAULT_MAX_EARLY_DATA = 64 * 1024

# A host name as clients send it: LDH labels (plus '_', common in service names), optional final dot.
_NAME_RE = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)
# First bytes of protocols clients mistakenly send to a SOCKS port, for a helpful error message.
_NOT_SOCKS = {0x04: "SOCKS4", 0x16: "TLS", ord("C"): "HTTP", ord("G"): "HTTP", ord("P"): "HTTP"}


class AddressType(enum.IntEnum):
    """RFC 1928 ATYP values."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class State(enum.Enum):
    GREETING = "greeting"  # waiting for VER NMETHODS METHODS
    REQUEST = "request"  # method chosen; waiting for VER CMD RSV ATYP DST.ADDR DST.PORT
    AWAITING_REPLY = "awaiting_reply"  # ConnectRequested emitted; the shell must reply
    ESTABLISHED = "established"  # success sent: the connection is a raw byte stream now
    FAILED = "failed"  # an error or a failure reply ended the handshake


@dataclass(frozen=True, slots=True)
class GreetingReceived:
    """The client's greeting; the server has already queued its choice of method 0x00."""

    methods: tuple[int, ...]  # every method the client offered


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The client asks for a TCP connection to ``host:port``; answer with ``reply_success``/``reply_failure``."""

    host: str  # canonical IP text for IPV4/IPV6; the name as sent (ASCII, no trailing dot) for DOMAIN
    port: int  # 0..65535 as sent (routing refuses 0)
    address_type: AddressType


Event = GreetingReceived | ConnectRequested


class Socks5Server:
    """One client connection's SOCKS5 handshake (see the module docstring)."""

    def __init__(
        self, *, accept_domain_names: bool = False, max_early_data: int = DEFAULT_MAX_EARLY_DATA
    ) -> None:
        self._accept_names = accept_domain_names
        self._max_early = max_early_data
        self._state = State.GREETING
        self._buf = bytearray()  # unparsed greeting/request bytes
        self._leftover = bytearray()  # client bytes after its request: the first bytes of the stream
        self._out = bytearray()
        self.client_eof = False  # the client half-closed after its request, before our reply

    @property
    def state(self) -> State:
        return self._state

    def data_to_send(self) -> bytes:
        """Bytes to write to the client now (method choice, reply); empty when there are none."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_leftover(self) -> bytes:
        """Bytes the client sent after its request, in order; relay them upstream first. Clears them."""
        out = bytes(self._leftover)
        self._leftover.clear()
        return out

    # ------------------------------------------------------------------------------------- peer input

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client (``b""`` means it closed its side); returns the events completed.

        Raises a ``Socks5Error`` subclass when the client's bytes are not acceptable (see the rules).
        """
        if self._state in (State.ESTABLISHED, State.FAILED):
            raise Socks5UsageError(f"receive_data called in state {self._state.value}; the handshake is over")
        if not data:
            return self._receive_eof()
        if self._state is State.AWAITING_REPLY:
            self._keep_early(data)
            return []
        self._buf += data
        events: list[Event] = []
        try:
            if self._state is State.GREETING:
                greeting = self._parse_greeting()
                if greeting is None:
                    return events
                events.append(greeting)
            request = self._parse_request()
            if request is not None:
                events.append(request)
        except Exception:
            self._state = State.FAILED
            self._buf.clear()
            raise
        return events

    def _receive_eof(self) -> list[Event]:
        if self._state is State.AWAITING_REPLY:
            self.client_eof = True
            return []
        phase = "greeting" if self._state is State.GREETING else "CONNECT request"
        partial = f" after {len(self._buf)} bytes of it" if self._buf else ""
        self._state = State.FAILED
        raise Socks5ConnectionClosed(
            f"SOCKS5 client closed the connection before finishing its {phase}{partial}"
        )

    def _keep_early(self, data: bytes | bytearray) -> None:
        if len(self._leftover) + len(data) > self._max_early:
            self._leftover.clear()
            self._fail(Socks5Reply.GENERAL_FAILURE)
            raise Socks5ProtocolError(
                f"SOCKS5 client sent more than {self._max_early} bytes before the CONNECT reply; "
                "a client must wait for the reply before streaming",
                Socks5Reply.GENERAL_FAILURE,
            )
        self._leftover += data

    def _parse_greeting(self) -> GreetingReceived | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != VERSION:
            guess = _NOT_SOCKS.get(buf[0])
            hint = f" (this looks like {guess}; configure the client for SOCKS5)" if guess else ""
            raise Socks5ProtocolError(
                f"not a SOCKS5 greeting: version byte 0x{buf[0]:02x}, expected 0x05{hint}"
            )
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return None
        n = buf[1]
        methods = tuple(buf[2 : 2 + n])
        del buf[: 2 + n]
        if METHOD_NO_AUTH not in methods:
            self._out += bytes((VERSION, METHOD_NONE_ACCEPTABLE))
            raise Socks5NoAcceptableMethod(methods)
        self._out += bytes((VERSION, METHOD_NO_AUTH))
        self._state = State.REQUEST
        return GreetingReceived(methods)

    def _parse_request(self) -> ConnectRequested | None:
        buf = self._buf
        if len(buf) < 4:
            if buf and buf[0] != VERSION:
                self._fail(Socks5Reply.GENERAL_FAILURE)
                raise Socks5ProtocolError(
                    f"not a SOCKS5 request: version byte 0x{buf[0]:02x}, expected 0x05",
                    Socks5Reply.GENERAL_FAILURE,
                )
            return None
        version, command, reserved, atyp = buf[0], buf[1], buf[2], buf[3]
        if version != VERSION:
            self._fail(Socks5Reply.GENERAL_FAILURE)
            raise Socks5ProtocolError(
                f"not a SOCKS5 request: version byte 0x{version:02x}, expected 0x05",
                Socks5Reply.GENERAL_FAILURE,
            )
        if command != CMD_CONNECT:
            self._fail(Socks5Reply.COMMAND_NOT_SUPPORTED)
            raise Socks5CommandNotSupported(command)
        if reserved != 0:
            self._fail(Socks5Reply.GENERAL_FAILURE)
            raise Socks5ProtocolError(
                f"SOCKS5 request has reserved byte 0x{reserved:02x}; RFC 1928 requires 0x00",
                Socks5Reply.GENERAL_FAILURE,
            )
        if atyp == AddressType.IPV4:
            end = 4 + 4
        elif atyp == AddressType.IPV6:
            end = 4 + 16
        elif atyp == AddressType.DOMAIN:
            if len(buf) < 5:
                return None
            end = 5 + buf[4]
        else:
            self._fail(Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED)
            raise Socks5AddressTypeNotSupported(
                f"SOCKS5 address type 0x{atyp:02x} is unknown; use 0x01 (IPv4), 0x03 (name) or 0x04 (IPv6)"
            )
        if len(buf) < end + 2:
            return None
        port = int.from_bytes(buf[end : end + 2], "big")
        if atyp == AddressType.DOMAIN:
            request = self._domain_request(bytes(buf[5:end]), port)
        else:
            host = str(ipaddress.ip_address(bytes(buf[4:end])))
            request = ConnectRequested(host, port, AddressType(atyp))
        rest = bytes(buf[end + 2 :])
        buf.clear()
        self._state = State.AWAITING_REPLY
        if rest:
            self._keep_early(rest)
        return request

    def _domain_request(self, raw: bytes, port: int) -> ConnectRequested:
        shown = raw[:64].decode("ascii", "backslashreplace")
        name = raw.decode("ascii") if raw.isascii() else ""
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            return ConnectRequested(str(ip), port, AddressType.IPV4 if ip.version == 4 else AddressType.IPV6)
        if not _NAME_RE.fullmatch(name):
            self._fail(Socks5Reply.GENERAL_FAILURE)
            raise Socks5ProtocolError(
                f"SOCKS5 request names {shown!r}, which is not a host name", Socks5Reply.GENERAL_FAILURE
            )
        if not self._accept_names:
            self._fail(Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED)
            raise Socks5AddressTypeNotSupported(
                f"SOCKS5 request names host {shown!r}; this listener takes IP addresses only (resolve names in "
                "the client, e.g. curl --socks5 rather than --socks5-hostname)"
            )
        return ConnectRequested(name.rstrip("."), port, AddressType.DOMAIN)

    # ------------------------------------------------------------------------------------ shell calls

    def reply_success(self, bound_ip: str, bound_port: int) -> None:
        """Tell the client its connection is up (``bound_*``: our local address toward the upstream)."""
        self._require_awaiting("reply_success")
        try:
            ip = ipaddress.ip_address(bound_ip)
        except ValueError:
            raise Socks5UsageError(f"reply_success needs an IP literal, got {bound_ip!r}") from None
        if not 0 <= bound_port <= 65535:
            raise Socks5UsageError(f"reply_success port {bound_port} is outside 0..65535")
        self._reply(Socks5Reply.SUCCEEDED, ip, bound_port)
        self._state = State.ESTABLISHED

    def reply_failure(self, code: Socks5Reply) -> None:
        """Tell the client its connection failed with ``code`` (anything but SUCCEEDED); then close."""
        self._require_awaiting("reply_failure")
        if code == Socks5Reply.SUCCEEDED:
            raise Socks5UsageError("reply_failure needs a failure code; use reply_success for success")
        self._fail(code)

    def _require_awaiting(self, what: str) -> None:
        if self._state is not State.AWAITING_REPLY:
            raise Socks5UsageError(f"{what} called in state {self._state.value}; only after ConnectRequested")

    def _fail(self, code: Socks5Reply) -> None:
        self._reply(code, ipaddress.IPv4Address(0), 0)
        self._state = State.FAILED

    def _reply(self, code: Socks5Reply, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
        atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
        self._out += bytes((VERSION, code, 0x00, atyp)) + ip.packed + port.to_bytes(2, "big")

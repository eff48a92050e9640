"""ZDS, the node agent <-> ztunnel protocol, sans-IO: bytes and fd numbers in, values and bytes out.

Framing: one protobuf message per SOCK_SEQPACKET packet, no length prefix, at most ``MAX_PACKET``
bytes (the size both Istio ends read into). The pod netns fd rides on AddWorkload as SCM_RIGHTS; the
transport hands us the received fd numbers and we only count them: AddWorkload exactly one, every other
message none. Decoding never closes fds: when it raises, the caller closes what arrived.

Theory of operation (both ends keep the same little state machine, CNI is the server):
  AWAIT_HELLO --hello--> SNAPSHOT --SnapshotSent--> READY;  any protocol error --> FAILED.
Rule 1: ztunnel's ZdsHello is the first packet on a connection.
Rule 2: every WorkloadRequest gets exactly one Ack before the next request is sent (matched by order).
Rule 3: KeepWorkload and SnapshotSent only during the snapshot; SnapshotSent exactly once.
Rule 4: the snapshot is every uid added or kept (and not deleted) before SnapshotSent; ztunnel then
        stops proxies for every other uid (``snapshot_uids``).
A failed connection still owes the peer one nack for the packet that broke it; then it is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar, cast

from google.protobuf.message import DecodeError, Message

from meshcore.proto import zds_pb2
from ztunnel.inpod.errors import (
    ZdsFdMismatch,
    ZdsMalformed,
    ZdsMissingField,
    ZdsOutOfOrder,
    ZdsUnsupportedVersion,
    ZdsUsageError,
)

MAX_PACKET = 1024  # istio cni ztunnelserver.go and ztunnel inpod/protocol.rs read into 1024 bytes
ZDS_VERSION = zds_pb2.V1
M = TypeVar("M", bound=Message)


# -- message values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """Who the pod is; ztunnel matches it to the xDS Workload with these three equal."""

    name: str
    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class AddWorkload:
    """Start serving pod ``uid`` inside the netns whose fd is ``netns_fd`` (owned by the receiver)."""

    uid: str
    info: WorkloadInfo
    netns_fd: int


@dataclass(frozen=True, slots=True)
class KeepWorkload:
    """Snapshot only: keep serving ``uid`` although the agent has no netns fd for it."""

    uid: str


@dataclass(frozen=True, slots=True)
class DelWorkload:
    """Stop serving ``uid``: drain its connections and close its listeners."""

    uid: str


@dataclass(frozen=True, slots=True)
class SnapshotSent:
    """The initial snapshot is complete."""


@dataclass(frozen=True, slots=True)
class ZdsHello:
    version: int = ZDS_VERSION


@dataclass(frozen=True, slots=True)
class Ack:
    """Reply to one request; a non-empty ``error`` is a nack."""

    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


ZdsRequest = AddWorkload | KeepWorkload | DelWorkload | SnapshotSent
ZdsEvent = ZdsRequest  # what ztunnel receives


# -- encode / decode -------------------------------------------------------------------------------------


def _checked(data: bytes, what: str) -> bytes:
    if len(data) > MAX_PACKET:
        raise ZdsUsageError(f"ZDS {what} is {len(data)} bytes, over the {MAX_PACKET}-byte packet limit")
    return data


def encode_request(msg: ZdsRequest) -> tuple[bytes, tuple[int, ...]]:
    """One packet for ``msg`` and the fds to attach to it (AddWorkload's netns fd, else none)."""
    req = zds_pb2.WorkloadRequest()
    fds: tuple[int, ...] = ()
    if isinstance(msg, AddWorkload):
        if not msg.uid or msg.netns_fd < 0:
            raise ZdsUsageError(f"AddWorkload needs a uid and an open netns fd, got {msg!r}")
        req.add.uid = msg.uid
        info = req.add.workload_info
        info.name, info.namespace, info.service_account = (
            msg.info.name,
            msg.info.namespace,
            msg.info.service_account,
        )
        fds = (msg.netns_fd,)
    elif isinstance(msg, KeepWorkload):
        req.keep.uid = msg.uid
    elif isinstance(msg, DelWorkload):
        getattr(req, "del").uid = msg.uid  # `del` is a Python keyword
    elif isinstance(msg, SnapshotSent):
        req.snapshot_sent.SetInParent()
    else:  # pragma: no cover - exhaustive over ZdsRequest
        raise ZdsUsageError(f"not a ZDS request: {msg!r}")
    return _checked(req.SerializeToString(), type(msg).__name__), fds


def _expect_fds(message: str, fds: tuple[int, ...] | list[int], expected: int) -> None:
    if len(fds) != expected:
        raise ZdsFdMismatch(message, expected, len(fds))


def _parse(cls: type[M], data: bytes, what: str) -> M:
    if len(data) > MAX_PACKET:
        raise ZdsMalformed(what, f"{len(data)} bytes, over the {MAX_PACKET}-byte limit")
    try:
        return cast(M, cls.FromString(data))
    except DecodeError as e:
        raise ZdsMalformed(what, f"not a protobuf {cls.DESCRIPTOR.full_name} ({e})") from e


def decode_request(data: bytes, fds: tuple[int, ...] | list[int] = ()) -> ZdsEvent:
    """The request in one packet received by ztunnel, with the fds that arrived with it.

    Raises a ``ZdsProtocolError`` for garbage, a missing field or a wrong fd count."""
    req = _parse(zds_pb2.WorkloadRequest, data, "WorkloadRequest")
    kind = req.WhichOneof("payload")
    if kind == "add":
        _expect_fds("AddWorkload", fds, 1)
        if not req.add.uid:
            raise ZdsMissingField("AddWorkload", "uid")
        if not req.add.HasField("workload_info"):
            raise ZdsMissingField("AddWorkload", "workload_info")
        wi = req.add.workload_info
        for field in ("name", "namespace", "service_account"):
            if not getattr(wi, field):
                raise ZdsMissingField("AddWorkload", f"workload_info.{field}")
        return AddWorkload(req.add.uid, WorkloadInfo(wi.name, wi.namespace, wi.service_account), fds[0])
    if kind == "keep":
        _expect_fds("KeepWorkload", fds, 0)
        if not req.keep.uid:
            raise ZdsMissingField("KeepWorkload", "uid")
        return KeepWorkload(req.keep.uid)
    if kind == "del":
        _expect_fds("DelWorkload", fds, 0)
        uid = getattr(req, "del").uid
        if not uid:
            raise ZdsMissingField("DelWorkload", "uid")
        return DelWorkload(uid)
    if kind == "snapshot_sent":
        _expect_fds("SnapshotSent", fds, 0)
        return SnapshotSent()
    _expect_fds("WorkloadRequest", fds, 0)
    raise ZdsMalformed("WorkloadRequest", "no known payload set (empty, or a newer message type)")


def encode_hello(version: int = ZDS_VERSION) -> bytes:
    return _checked(zds_pb2.ZdsHello(version=zds_pb2.Version.Name(version)).SerializeToString(), "ZdsHello")


def decode_hello(data: bytes, fds: tuple[int, ...] | list[int] = ()) -> ZdsHello:
    """ztunnel's first packet, as the node agent receives it; only V1 is accepted."""
    _expect_fds("ZdsHello", fds, 0)
    hello = _parse(zds_pb2.ZdsHello, data, "ZdsHello")
    if hello.version != ZDS_VERSION:
        raise ZdsUnsupportedVersion(int(hello.version))
    return ZdsHello(int(hello.version))


def encode_ack(error: str = "") -> bytes:
    """ztunnel's reply to one request; ``error`` (a nack) is cut to fit one packet."""
    data = zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)).SerializeToString()
    if len(data) > MAX_PACKET:
        data = zds_pb2.WorkloadResponse(
            ack=zds_pb2.Ack(error=error[: MAX_PACKET - 64] + "...")
        ).SerializeToString()
    return bytes(data)


def decode_ack(data: bytes, fds: tuple[int, ...] | list[int] = ()) -> Ack:
    """A WorkloadResponse as the node agent receives it."""
    _expect_fds("WorkloadResponse", fds, 0)
    resp = _parse(zds_pb2.WorkloadResponse, data, "WorkloadResponse")
    if resp.WhichOneof("payload") != "ack":
        raise ZdsMalformed("WorkloadResponse", "no ack set")
    return Ack(resp.ack.error)


# -- connection state machines ---------------------------------------------------------------------------


class ZdsState(StrEnum):
    AWAIT_HELLO = "awaiting hello"
    SNAPSHOT = "receiving the initial snapshot"
    READY = "past the initial snapshot"
    FAILED = "failed"


class _Sequencer:
    """The state shared by both ends: rules 1-4 above."""

    def __init__(self) -> None:
        self.state = ZdsState.AWAIT_HELLO
        self.ack_owed = False
        self._snapshot: set[str] = set()
        self.snapshot_uids: frozenset[str] | None = None  # set once the snapshot is complete

    def hello(self) -> None:
        if self.state is not ZdsState.AWAIT_HELLO:
            raise ZdsOutOfOrder("ZdsHello", self.state.value)
        self.state = ZdsState.SNAPSHOT

    def request(self, msg: ZdsRequest) -> None:
        name = type(msg).__name__
        if self.state in (ZdsState.AWAIT_HELLO, ZdsState.FAILED):
            raise ZdsOutOfOrder(name, self.state.value)
        if self.ack_owed:
            raise ZdsOutOfOrder(name, "the previous request is not acked yet")
        if isinstance(msg, KeepWorkload | SnapshotSent) and self.state is not ZdsState.SNAPSHOT:
            raise ZdsOutOfOrder(name, self.state.value)
        if self.state is ZdsState.SNAPSHOT:
            if isinstance(msg, AddWorkload | KeepWorkload):
                self._snapshot.add(msg.uid)
            elif isinstance(msg, DelWorkload):
                self._snapshot.discard(msg.uid)
            elif isinstance(msg, SnapshotSent):
                self.snapshot_uids = frozenset(self._snapshot)
                self.state = ZdsState.READY
        self.ack_owed = True

    def fail(self) -> None:
        self.state = ZdsState.FAILED


class ZdsClientConnection:
    """ztunnel's end (the client): ``hello()`` first, then for each packet ``receive_request`` and
    ``ack``. After a ``ZdsProtocolError`` the connection is FAILED: send ``ack(str(error))`` (the nack it
    owes) and reconnect."""

    def __init__(self) -> None:
        self._seq = _Sequencer()

    @property
    def state(self) -> ZdsState:
        return self._seq.state

    @property
    def snapshot_uids(self) -> frozenset[str] | None:
        """Pods the node agent sent in its initial snapshot; None until SnapshotSent arrived."""
        return self._seq.snapshot_uids

    @property
    def ready(self) -> bool:
        """The initial snapshot has been received (ztunnel's readiness waits for this)."""
        return self._seq.snapshot_uids is not None and self._seq.state is not ZdsState.FAILED

    def hello(self) -> bytes:
        try:
            self._seq.hello()
        except ZdsOutOfOrder as e:
            raise ZdsUsageError(str(e)) from e
        return encode_hello()

    def receive_request(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> ZdsEvent:
        """Decode and sequence one packet. On error the caller closes ``fds`` and nacks."""
        if self._seq.state is ZdsState.FAILED:
            raise ZdsUsageError("receive_request on a failed ZDS connection; reconnect")
        if self._seq.state is ZdsState.AWAIT_HELLO:
            raise ZdsUsageError("receive_request before hello(): ztunnel must greet first")
        try:
            msg = decode_request(data, fds)
            self._seq.request(msg)
        except Exception:
            # The connection is over; the peer still gets one nack saying why before we reconnect.
            self._seq.fail()
            self._seq.ack_owed = True
            raise
        return msg

    def ack(self, error: str = "") -> bytes:
        """The reply to the request just received (``error`` non-empty: a nack)."""
        if not self._seq.ack_owed:
            raise ZdsUsageError("ack() with no request waiting for one")
        self._seq.ack_owed = False
        return encode_ack(error)


class ZdsServerConnection:
    """The node agent's end (the server): ``receive_hello``, then ``send`` a request and
    ``receive_ack`` its reply, one at a time. Misuse raises ``ZdsUsageError``; a peer breaking the
    protocol raises ``ZdsProtocolError`` and fails the connection."""

    def __init__(self) -> None:
        self._seq = _Sequencer()

    @property
    def state(self) -> ZdsState:
        return self._seq.state

    @property
    def awaiting_ack(self) -> bool:
        return self._seq.ack_owed

    def receive_hello(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> ZdsHello:
        try:
            hello = decode_hello(data, fds)
            self._seq.hello()
        except Exception:
            self._seq.fail()
            raise
        return hello

    def send(self, msg: ZdsRequest) -> tuple[bytes, tuple[int, ...]]:
        """Packet and fds for ``msg``; refuses what rules 1-3 forbid (our own bug)."""
        packet = encode_request(msg)
        try:
            self._seq.request(msg)
        except ZdsOutOfOrder as e:
            raise ZdsUsageError(str(e)) from e
        return packet

    def receive_ack(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> Ack:
        if not self._seq.ack_owed or self._seq.state is ZdsState.FAILED:
            self._seq.fail()
            raise ZdsOutOfOrder("Ack", "no request is waiting for one")
        try:
            ack = decode_ack(data, fds)
        except Exception:
            self._seq.fail()
            raise
        self._seq.ack_owed = False
        return ack

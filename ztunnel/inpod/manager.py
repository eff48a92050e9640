"""``WorkloadProxyManager``: in-pod (shared) mode, serving the pods the node agent hands over on ZDS.

The ZDS loop connects to ``INPOD_UDS`` (retried 10 ms doubling to 15 s, as ztunnel), greets, and answers
each request with exactly one ack. AddWorkload: adopt the netns fd (``open_pod`` enters it once to prove
it works), register a ``PodProxy``, prefetch its certificate, ack; listeners start in the background,
so an ack never waits on the CA. The same uid with the same netns keeps the running proxy; another netns
replaces it. KeepWorkload keeps a pod; DelWorkload stops accepting, acks, drains in the background;
SnapshotSent removes every pod neither added nor kept since the hello. A pod that cannot be served is
nacked alone; a protocol error closes the fds that came with it, nacks and reconnects, pods kept.
The state loop gives each pod its workload on every snapshot (``find_pod_workload``, pure) and keeps the
SecretManager tracking exactly the pods' identities. Choice (brief): a pod xDS does not know yet is
Pending with no listeners (redirected traffic refused: fail closed) and starts when its workload appears,
rather than resolving the workload per connection. Every task is owned here; ``close`` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from meshcore.aio.netns import NetnsError, NetnsHandle
from meshcore.aio.pool import PoolStats
from meshcore.aio.secrets import SecretManagerClosed
from meshcore.aio.state_cell import StateCell
from meshcore.identity import InvalidSpiffeId, SpiffeId
from meshcore.model import Workload
from meshcore.state import ProxyState
from ztunnel.inpod.errors import PodError, PodIdentityInvalid, ZdsClosed, ZdsProtocolError
from ztunnel.inpod.pod import WAITING_FOR_XDS, PodProxy
from ztunnel.inpod.protocol import (
    AddWorkload,
    DelWorkload,
    KeepWorkload,
    SnapshotSent,
    WorkloadInfo,
    ZdsClientConnection,
    ZdsEvent,
    encode_ack,
)
from ztunnel.inpod.sockets import InpodSocketFactory, PodSockets
from ztunnel.inpod.transport import ZdsSocket
from ztunnel.proxy.inputs import ProxyInputs

log = structlog.get_logger("ztunnel.inpod")

DEFAULT_INPOD_UDS = "/var/run/ztunnel/ztunnel.sock"
RECONNECT_INITIAL = 0.01  # ztunnel: 10 ms, doubling up to 15 s
RECONNECT_MAX = 15.0

PodOpener = Callable[[int, str], Awaitable[PodSockets]]
"""Take ownership of a pod netns fd (closed on failure) and return the pod's sockets, or raise."""


async def open_pod_netns(fd: int, uid: str) -> PodSockets:
    """The default ``PodOpener``: adopt the fd, enter the namespace once on its worker thread."""
    try:
        handle = NetnsHandle.adopt_fd(fd, f"pod {uid}")
    except NetnsError as exc:
        raise PodError(f"pod {uid}: the fd the node agent sent is not usable: {exc}") from exc
    except OSError as exc:
        raise PodError(f"pod {uid}: cannot inspect the netns fd: {exc.strerror or exc}") from exc
    factory = InpodSocketFactory(handle, pod=uid)
    try:
        await factory.probe()
    except BaseException:
        factory.close()
        raise
    return factory


# ------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class WorkloadMatch:
    """The xDS workload of a handed-over pod, or why there is none."""

    workload: Workload | None
    # Why there is no workload (None when there is one).
    problem: str | None = None


def find_pod_workload(state: ProxyState, uid: str, info: WorkloadInfo, node: str = "") -> WorkloadMatch:
    """Which workload of ``state`` is the pod the node agent called ``uid`` / ``info`` (pure).

    The xDS uid equal to the pod uid wins; else Istio's rule (ztunnel ``WorkloadInfo::matches``): equal
    name, namespace and service account. Several of those: the one on ``node``; still several: none."""
    exact = state.find_workload(uid)
    if exact is not None:
        return WorkloadMatch(exact)
    key = (info.name, info.namespace, info.service_account)
    found = [w for w in state.workloads.values() if (w.name, w.namespace, w.service_account) == key]
    if len(found) > 1 and node:
        found = [w for w in found if w.node == node] or found
    if len(found) == 1:
        return WorkloadMatch(found[0])
    if not found:
        return WorkloadMatch(None, WAITING_FOR_XDS)
    return WorkloadMatch(
        None,
        f"{len(found)} workloads are named {info.namespace}/{info.name} with service account "
        f"{info.service_account}: {', '.join(sorted(w.uid for w in found))}",
    )


def pods_left_out(served: Iterable[str], snapshot: frozenset[str]) -> list[str]:
    """The pods to remove after a SnapshotSent: served now but neither added nor kept in it (pure)."""
    return sorted(uid for uid in served if uid not in snapshot)


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset`` after a good connection."""

    def __init__(self, initial: float = RECONNECT_INITIAL, maximum: float = RECONNECT_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


@dataclass(frozen=True, slots=True)
class PodStatus:
    """One pod for readiness, metrics and ``workloadState`` (the same shape as dedicated mode's)."""

    workload: Workload
    state: str  # "Up" or "Pending"
    error: str | None
    pod_uid: str


# ---------------------------------------------------------------------------------------------- manager


class WorkloadProxyManager:
    """Serves the pods handed over by the node agent (see the module docstring)."""

    def __init__(
        self,
        inputs: ProxyInputs,
        uds_path: str = DEFAULT_INPOD_UDS,
        *,
        open_pod: PodOpener = open_pod_netns,
        backoff: Backoff | None = None,
    ) -> None:
        self._inputs = inputs
        self._cell: StateCell[ProxyState] = inputs.cell
        self._uds_path = uds_path
        self._open_pod = open_pod
        self._backoff = backoff or Backoff()
        self._node = inputs.config.node_name
        self._pods: dict[str, PodProxy] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._run_task: asyncio.Task[Any] | None = None
        self.snapshot_received = asyncio.Event()  # the node agent's first snapshot has been processed
        self.connected = False
        self._unreachable_warned = False
        self.connections_made = 0  # ZDS connections that completed the hello
        self.protocol_errors = 0
        self.version = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------------------------- queries

    @property
    def uds_path(self) -> str:
        return self._uds_path

    def pod(self, uid: str) -> PodProxy | None:
        """The pod the node agent calls ``uid``, if served."""
        return self._pods.get(uid)

    def pods(self) -> dict[str, PodProxy]:
        return dict(self._pods)

    def statuses(self) -> dict[str, PodStatus]:
        """Workload uid (the pod uid while xDS does not know it) -> status, for every served pod."""
        out = {}
        for uid, pod in self._pods.items():
            workload = pod.status_workload()
            out[workload.uid] = PodStatus(workload, pod.state, pod.problem, uid)
        return out

    def pending(self) -> dict[str, str]:
        """Pod uid -> why its proxy is not up yet (empty when every pod is served)."""
        return {uid: p.problem or "starting" for uid, p in self._pods.items() if p.state != "Up"}

    def wanted_identities(self) -> set[SpiffeId]:
        return {p.identity for p in self._pods.values()}

    def pool_stats(self) -> list[PoolStats]:
        """Each pod's pool statistics, summed by the composition root."""
        return [p.pool.stats() for p in self._pods.values()]

    async def changed(self, since: int) -> int:
        """Wait until a pod was added, started, failed or removed after version ``since``."""
        while self.version <= since:
            await self._changed.wait()
        return self.version

    # ----------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Follow the node agent and the state until cancelled (``drain``/``close`` cancel it)."""
        self._run_task = asyncio.current_task()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._cell.follow(self.reconcile))
            group.create_task(self._zds_loop())

    async def drain(self, deadline: float) -> None:
        """Close the ZDS connection, then stop every pod gracefully: no new connections, live ones until
        ``deadline``."""
        self._stop_running()
        pods = list(self._pods.values())
        self._pods.clear()
        await asyncio.gather(*(p.drain(deadline) for p in pods), return_exceptions=True)
        self._bump()

    async def close(self) -> None:
        """Stop everything now (after ``drain``, or instead of it)."""
        self._stop_running()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        pods = list(self._pods.values())
        self._pods.clear()
        for pod in pods:
            await pod.aclose()

    def _stop_running(self) -> None:
        self._closing = True
        if self._run_task is not None and self._run_task is not asyncio.current_task():
            self._run_task.cancel()

    # ------------------------------------------------------------------------------- state follower

    def reconcile(self, state: ProxyState) -> None:
        """Give every pod its workload in ``state`` and track exactly the pods' identities."""
        for pod in self._pods.values():
            match = find_pod_workload(state, pod.uid, pod.info, self._node)
            pod.set_workload(match.workload, match.problem)
        self._track()

    def _track(self) -> None:
        with contextlib.suppress(SecretManagerClosed):
            self._inputs.secrets.track(self.wanted_identities())

    # ------------------------------------------------------------------------------------- ZDS loop

    async def _zds_loop(self) -> None:
        while not self._closing:
            try:
                sock = await ZdsSocket.connect(self._uds_path)
            except OSError as exc:
                delay = self._backoff.next()
                # Warn once per outage (then debug): pods stay unserved until the node agent answers.
                say = log.debug if self._unreachable_warned else log.warning
                self._unreachable_warned = True
                say("node agent not reachable; retrying (is the node agent running, and is INPOD_UDS its socket?)",
                    path=self._uds_path, error=exc.strerror or str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            self._unreachable_warned = False
            try:
                await self._serve(sock)
            except ZdsClosed:
                log.warning("node agent closed the ZDS connection; reconnecting", path=self._uds_path)
            except ZdsProtocolError as exc:
                self.protocol_errors += 1
                log.error("node agent broke the ZDS protocol; reconnecting", path=self._uds_path, error=str(exc))
            except OSError as exc:
                log.warning("ZDS connection failed; reconnecting", path=self._uds_path, error=exc.strerror or str(exc))
            except Exception:  # a bug costs a reconnect, never the pods already served
                log.exception("ZDS connection handler failed; reconnecting", path=self._uds_path)
            finally:
                sock.close()
                self.connected = False
                self._bump()
            await asyncio.sleep(self._backoff.next())

    async def _serve(self, sock: ZdsSocket) -> None:
        """One ZDS connection: hello, then one ack per request, until EOF or a protocol error."""
        conn = ZdsClientConnection()
        await sock.send(conn.hello())
        self.connected = True
        self.connections_made += 1
        self._backoff.reset()
        log.info("connected to the node agent", path=self._uds_path)
        self._bump()
        while True:
            try:
                data, fds = await sock.recv()
            except ZdsProtocolError as exc:  # truncated: the transport already closed its fds
                await sock.send(encode_ack(str(exc)))
                raise
            try:
                event = conn.receive_request(data, fds)
            except ZdsProtocolError as exc:
                _close_fds(fds)
                await sock.send(conn.ack(str(exc)))
                raise
            error = await self._handle(conn, event)
            if error:
                log.warning("nacking the node agent's request", request=type(event).__name__, error=error)
            await sock.send(conn.ack(error))

    async def _handle(self, conn: ZdsClientConnection, event: ZdsEvent) -> str:
        """Carry out one request; returns the nack text ("" for success)."""
        if isinstance(event, AddWorkload):
            return await self._add(event)
        if isinstance(event, KeepWorkload):
            if event.uid not in self._pods:
                log.warning("node agent keeps a pod this ztunnel does not serve (no netns to serve it from)",
                            pod=event.uid)
            return ""
        if isinstance(event, DelWorkload):
            self._remove(event.uid, "the node agent removed it")
            return ""
        assert isinstance(event, SnapshotSent)
        snapshot = conn.snapshot_uids or frozenset()
        for uid in pods_left_out(set(self._pods), snapshot):
            self._remove(uid, "it is not in the node agent's snapshot")
        if not self.snapshot_received.is_set():
            log.info("node agent snapshot processed", pods=len(self._pods))
        self.snapshot_received.set()
        self._bump()
        return ""

    async def _add(self, event: AddWorkload) -> str:
        uid, info = event.uid, event.info
        if self._closing:
            _close_fds([event.netns_fd])
            return f"pod {uid}: this ztunnel is shutting down; send the pod to its successor"
        try:
            identity = SpiffeId(self._inputs.config.trust_domain, info.namespace, info.service_account)
        except InvalidSpiffeId as exc:
            _close_fds([event.netns_fd])
            return str(PodIdentityInvalid(uid, str(exc)))
        try:
            sockets = await self._open_pod(event.netns_fd, uid)
        except (PodError, NetnsError, OSError) as exc:
            return f"pod {uid}: cannot serve it from its network namespace: {exc}"
        existing = self._pods.get(uid)
        if existing is not None:
            if existing.netns_id == sockets.netns_id:
                sockets.close()  # the same pod sent again (a new snapshot): keep serving it
                log.debug("pod added again with the same netns; kept", pod=uid)
                return ""
            self._remove(uid, "the node agent sent it again with a different network namespace")
        pod = PodProxy(uid, info, sockets, self._inputs, identity, on_change=self._bump)
        self._pods[uid] = pod
        log.info("pod added", pod=uid, name=f"{info.namespace}/{info.name}", service_account=info.service_account,
                 netns=str(sockets.netns_id))
        match = find_pod_workload(self._cell.current(), uid, info, self._node)
        pod.set_workload(match.workload, match.problem)
        self._track()
        self._bump()
        return ""

    def _remove(self, uid: str, why: str) -> None:
        pod = self._pods.pop(uid, None)
        if pod is None:
            log.debug("node agent removed a pod this ztunnel does not serve", pod=uid)
            return
        pod.close_listeners()  # no new connection from here on, before the ack goes out
        log.info("pod removed; draining its connections", pod=uid, reason=why)
        deadline = asyncio.get_running_loop().time() + self._inputs.config.drain_duration
        self._spawn(self._drain_pod(pod, deadline))
        self._track()
        self._bump()

    async def _drain_pod(self, pod: PodProxy, deadline: float) -> None:
        try:
            await pod.drain(deadline)
        finally:
            self._bump()  # observers (tests, readiness) see the pod's netns released

    # ----------------------------------------------------------------------------------- internals

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _bump(self) -> None:
        self.version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()


def _close_fds(fds: list[int] | tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

"""``PodProxy``: one handed-over pod, served from inside its own network namespace.

A pod owns its ``PodSockets`` (the netns handle: every socket below is made inside the pod), its own
``HbonePool`` (outbound HBONE leaves from the pod, so connections are never shared between pods, as in
ztunnel where each pod's proxy has its pool) and a copy of the shared ``ProxyInputs`` carrying both.
Its listeners are dedicated mode's ``Proxy`` (15008 HBONE and 15006 plaintext on the wildcard, 15006's
destination read with SO_ORIGINAL_DST) plus the ``OutboundCaptureListener`` on 15001.
Lifecycle: the manager calls ``set_workload`` with the pod's match in each snapshot. No match yet: the pod
is Pending and nothing listens (its redirected traffic is refused: fail closed). A match starts the
listeners (retried: certificate not yet issued, port still held); a changed identity or address set
restarts them, the old ones draining. A match that later disappears keeps the listeners, but each
connection re-reads the snapshot, so the pod's traffic is refused until xDS knows it again.
``drain(deadline)`` stops accepting, lets live connections (both directions) finish until the deadline,
closes the rest, the pool and the netns; ``aclose`` does it all now. Every task is owned here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Callable, Coroutine

import structlog

from meshcore.aio.pool import HbonePool, PoolKey, mtls_connector
from meshcore.aio.secrets import CertificateUnavailable, SecretError
from meshcore.identity import SpiffeId
from meshcore.model import Workload
from ztunnel.inpod.errors import PodNetnsUnavailable
from ztunnel.inpod.outbound_capture import OutboundCaptureListener
from ztunnel.inpod.protocol import WorkloadInfo
from ztunnel.inpod.sockets import PodSockets, read_original_dst
from ztunnel.proxy.connections import Direction
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.proxy.listeners import Proxy
from ztunnel.proxy.routing import SockAddr

log = structlog.get_logger("ztunnel.inpod")

OUTBOUND_PORT = 15001  # where the pod's redirection sends its outbound TCP
RETRY_INITIAL = 0.5  # seconds before retrying listeners that did not bind
RETRY_MAX = 5.0  # Istio retries pending pod proxies every 5s
WAITING_FOR_XDS = "waiting for xDS to describe the pod"
POD_LEFT_MESSAGE = "connection closed: the pod left the mesh (node agent removed it)"


def original_destination(sock: socket.socket, served: Workload) -> SockAddr:
    """The in-pod ``PlaintextDestination``: where a connection redirected to 15006 was going. Not
    redirected (a client that dialled 15006 itself): the listener's own address, which the inbound
    phases then refuse as a self-call."""
    original = read_original_dst(sock)
    if original is not None:
        return original
    name = sock.getsockname()
    return SockAddr(str(name[0]), int(name[1]))


def listen_hosts(workload: Workload) -> tuple[str, ...]:
    """Wildcard addresses to listen on inside the pod: IPv4 always, IPv6 too when the pod has a v6 address."""
    return ("0.0.0.0", "::") if any(":" in a for a in workload.addresses) else ("0.0.0.0",)


def _listener_key(w: Workload) -> tuple[object, ...]:
    """What the running listeners depend on: a change of either means new listeners."""
    return (w.identity, w.addresses)


class _Listeners:
    """The listeners of one pod for one workload version."""

    def __init__(self, proxy: Proxy, outbound: list[OutboundCaptureListener]) -> None:
        self.proxy = proxy
        self.outbound = outbound

    def close(self) -> None:
        self.proxy.close_listeners()
        for listener in self.outbound:
            listener.close()

    async def drain(self, inputs: ProxyInputs, uid: str, deadline: float) -> None:
        """Inbound through ``Proxy.drain``; outbound: wait, close what is left at the deadline, end."""

        async def outbound() -> None:
            await asyncio.gather(*(o.drain(deadline) for o in self.outbound))
            closed = inputs.connections.close_all(POD_LEFT_MESSAGE, workload_uid=uid, direction=Direction.OUTBOUND)
            if closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await inputs.connections.wait_none(uid, Direction.OUTBOUND)
            for o in self.outbound:
                await o.aclose()

        await asyncio.gather(self.proxy.drain(deadline), outbound(), return_exceptions=True)

    async def aclose(self) -> None:
        await self.proxy.aclose()
        for o in self.outbound:
            await o.aclose()


class PodProxy:
    """One pod handed over by the node agent (see the module docstring)."""

    def __init__(
        self,
        uid: str,
        info: WorkloadInfo,
        sockets: PodSockets,
        base: ProxyInputs,
        identity: SpiffeId,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.uid = uid  # the Kubernetes pod uid, as ZDS names the pod
        self.info = info
        self.sockets = sockets
        # Whose certificate the pod needs: from the node agent's WorkloadInfo until xDS describes the pod.
        self.identity = identity
        config = base.config
        self.pool = HbonePool(
            mtls_connector(base.tls.client, socket_for=self._pool_socket),
            max_streams=config.pool_max_streams,
            idle_timeout=config.pool_idle_timeout,
        )
        self.inputs = dataclasses.replace(base, sockets=sockets, pool=self.pool)
        self.workload: Workload | None = None
        self.problem: str | None = WAITING_FOR_XDS
        self._on_change = on_change
        self._listeners: _Listeners | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------------------------- queries

    @property
    def state(self) -> str:
        """``Up`` once every listener is serving, else ``Pending`` (``problem`` says why)."""
        return "Up" if self._listeners is not None else "Pending"

    @property
    def netns_id(self) -> object:
        return self.sockets.netns_id

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        """Where the pod's listeners are bound (HBONE, plaintext, then outbound); empty while pending."""
        if self._listeners is None:
            return []
        return self._listeners.proxy.addresses + [o.address for o in self._listeners.outbound]

    def current_workload(self) -> Workload | None:
        """This pod's workload in the latest snapshot (the outbound source), None if xDS lost it."""
        if self.workload is None:
            return None
        return self.inputs.cell.current().find_workload(self.workload.uid)

    def status_workload(self) -> Workload:
        """The workload for status pages: the matched one, or one made of the node agent's WorkloadInfo."""
        if self.workload is not None:
            return self.workload
        return Workload(
            uid=self.uid, name=self.info.name, namespace=self.info.namespace,
            service_account=self.info.service_account, trust_domain=self.identity.trust_domain,
        )

    # ----------------------------------------------------------------------------------- lifecycle

    def set_workload(self, workload: Workload | None, problem: str | None = None) -> None:
        """The pod's match in the latest snapshot (None: ``problem`` says why there is none)."""
        if self._closed:
            return
        if workload is None:
            if self.workload is None and problem is not None and problem != self.problem:
                self.problem = problem
                self._on_change()
            return  # a running pod keeps its listeners; connections see the snapshot themselves
        if self.workload is not None and _listener_key(workload) == _listener_key(self.workload):
            self.workload = workload
            return
        if self.workload is not None:
            log.info("pod's workload changed; restarting its listeners", pod=self.uid, workload=workload.uid)
        self.workload = workload
        self.identity = workload.identity
        self._restart(workload)

    def close_listeners(self) -> None:
        """Stop accepting now (live connections carry on); used before acking a DelWorkload."""
        self._closed = True
        if self._start_task is not None:
            self._start_task.cancel()
        if self._listeners is not None:
            self._listeners.close()

    async def drain(self, deadline: float) -> None:
        """Stop accepting, let live connections finish until ``deadline`` (loop time), then release all."""
        self.close_listeners()
        try:
            if self._listeners is not None:
                listeners, self._listeners = self._listeners, None
                await listeners.drain(self.inputs, self._uid_for_connections(), deadline)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close every listener, connection and pooled connection now and release the netns."""
        self.close_listeners()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._listeners is not None:
            listeners, self._listeners = self._listeners, None
            await listeners.aclose()
        await self.pool.aclose()
        self.sockets.close()

    # ----------------------------------------------------------------------------------- internals

    def _uid_for_connections(self) -> str:
        return self.workload.uid if self.workload is not None else self.uid

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _pool_socket(self, key: PoolKey) -> socket.socket:
        family = socket.AF_INET6 if ":" in key.dst_addr[0] else socket.AF_INET
        return self.sockets.new_socket(family, source_ip=key.src_ip)

    def _restart(self, workload: Workload) -> None:
        if self._start_task is not None:
            self._start_task.cancel()
        if self._listeners is not None:
            old, self._listeners = self._listeners, None
            old.close()
            deadline = asyncio.get_running_loop().time() + self.inputs.config.drain_duration
            self._spawn(old.drain(self.inputs, self._uid_for_connections(), deadline))
        self.problem = "starting"
        self._start_task = self._spawn(self._start(workload))
        self._on_change()

    def _failed(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("pod proxy not started yet", pod=self.uid, reason=problem)
            self.problem = problem
            self._on_change()

    async def _start(self, workload: Workload) -> None:
        """Bring the pod's listeners up, retrying until they are (or the pod's workload changes/leaves)."""
        delay = RETRY_INITIAL
        secrets = self.inputs.secrets
        while True:
            version = secrets.version
            try:
                self._listeners = await self._open(workload)
            except CertificateUnavailable as exc:
                self._failed(f"no certificate yet: {exc}")
                await secrets.changed(version)  # the SecretManager retries with its own backoff
                continue
            except SecretError as exc:  # forgotten or closed: the pod is going away
                self._failed(str(exc))
                return
            except PodNetnsUnavailable as exc:  # the pod's namespace is gone: wait for its DelWorkload
                self._failed(str(exc))
                return
            except OSError as exc:
                self._failed(f"cannot listen inside the pod: {exc.strerror or exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.problem = None
            log.info("pod proxy started", pod=self.uid, workload=workload.uid, listeners=self.listen_addresses)
            self._on_change()
            return

    async def _open(self, workload: Workload) -> _Listeners:
        hosts = listen_hosts(workload)
        proxy = Proxy(self.inputs, workload, self.sockets, hosts=hosts, plaintext=original_destination)
        outbound: list[OutboundCaptureListener] = []
        try:
            await proxy.start()
            for host in hosts:
                sock = self.sockets.listen(host, OUTBOUND_PORT)
                listener = OutboundCaptureListener(self.inputs, sock, self.current_workload)
                outbound.append(listener)
                await listener.start()
        except BaseException:
            await proxy.aclose()
            for listener in outbound:
                await listener.aclose()
            raise
        return _Listeners(proxy, outbound)

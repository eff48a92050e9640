"""Dedicated mode: serve this node's mesh workloads from ztunnel's own network namespace.

Which workloads? ``select_local_workloads`` (pure): those whose ``node`` is ours, that are in the mesh
(HBONE) and have an address. ``DedicatedProxyManager`` follows the StateCell and reconciles: it tells the
SecretManager which identities to hold (``track``: prefetch new ones, forget gone ones), starts one
``Proxy`` per new workload (listeners on the workload's IPs; retried until the certificate is held and
the address binds), restarts one whose addresses or identity changed, and drains the proxies of
workloads that left. It also answers the SOCKS5 front's question "which local workload is at this
source IP?" from the latest snapshot. Every task it starts is in ``self._tasks``; ``close`` ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass

import structlog

from meshcore.aio.secrets import CertificateUnavailable, SecretError, SecretManagerClosed
from meshcore.aio.state_cell import StateCell
from meshcore.model import Workload
from meshcore.routing import canonical_ip
from meshcore.state import ProxyState
from ztunnel.proxy.inbound_plaintext import fixed_port
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.proxy.listeners import Proxy
from ztunnel.sockets import SocketFactory

log = structlog.get_logger("ztunnel.dedicated")

RETRY_INITIAL = 0.5  # seconds before retrying a proxy whose address did not bind
RETRY_MAX = 30.0


def select_local_workloads(state: ProxyState, node: str) -> dict[str, Workload]:
    """uid -> workload for the workloads this node's ztunnel serves (node matches, in the mesh, has an IP).

    A workload with ``native_tunnel`` (a waypoint) terminates HBONE itself: ztunnel never proxies for it."""
    return {
        uid: w for uid, w in state.workloads.items()
        if w.node == node and w.in_mesh and w.addresses and not w.native_tunnel
    }


def _identity_and_addresses(w: Workload) -> tuple[object, ...]:
    """What a running proxy depends on: a change of either means new listeners."""
    return (w.identity, w.addresses)


@dataclass(slots=True)
class ProxyStatus:
    """One local workload's proxy, for readiness and ``workloadState``."""

    workload: Workload
    proxy: Proxy | None = None  # set once started
    error: str | None = None  # why it is not up yet
    task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return "Up" if self.proxy is not None and self.proxy.started else "Pending"


class DedicatedProxyManager:
    """Keeps one ``Proxy`` per local workload (see the module docstring)."""

    def __init__(self, inputs: ProxyInputs, sockets: SocketFactory) -> None:
        self._inputs = inputs
        self._sockets = sockets
        self._cell: StateCell[ProxyState] = inputs.cell
        self._node = inputs.config.node_name
        self._proxies: dict[str, ProxyStatus] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._index_state: ProxyState | None = None
        self._by_ip: dict[str, Workload] = {}
        self._closing = False
        self.version = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------------------------- queries

    def find_local_workload(self, ip: str) -> Workload | None:
        """The local mesh workload whose address is ``ip`` in the latest snapshot, or None."""
        state = self._cell.current()
        if state is not self._index_state:
            local = select_local_workloads(state, self._node)
            self._by_ip = {canonical_ip(a): w for w in local.values() for a in w.addresses}
            self._index_state = state
        return self._by_ip.get(canonical_ip(ip))

    def statuses(self) -> dict[str, ProxyStatus]:
        """uid -> status of every local workload's proxy."""
        return dict(self._proxies)

    def pending(self) -> dict[str, str]:
        """uid -> why its proxy is not up yet (empty when every local workload is served)."""
        return {
            uid: s.error or "starting" for uid, s in self._proxies.items() if s.state != "Up"
        }

    async def changed(self, since: int) -> int:
        """Wait until a proxy started, failed or stopped after version ``since``."""
        while self.version <= since:
            await self._changed.wait()
        return self.version

    # ----------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Reconcile now and on every new snapshot, until cancelled."""
        await self._cell.follow(self.reconcile)

    def reconcile(self, state: ProxyState) -> None:
        """Make the proxies and certificates match the local workloads of ``state``."""
        if self._closing:
            return
        wanted = select_local_workloads(state, self._node)
        try:
            self._inputs.secrets.track({w.identity for w in wanted.values()})
        except SecretManagerClosed:
            return
        for uid in list(self._proxies):
            status = self._proxies[uid]
            new = wanted.get(uid)
            if new is None or _identity_and_addresses(new) != _identity_and_addresses(status.workload):
                del self._proxies[uid]
                self._spawn(self._stop(status, "the workload left this node" if new is None else "it changed"))
            else:
                status.workload = new
        for uid, workload in wanted.items():
            if uid not in self._proxies:
                status = ProxyStatus(workload)
                self._proxies[uid] = status
                status.task = self._spawn(self._start(status))
        self._bump()

    async def drain(self, deadline: float) -> None:
        """Stop every proxy gracefully: no new connections, live ones until ``deadline``."""
        self._closing = True
        statuses = list(self._proxies.values())
        self._proxies.clear()
        for status in statuses:
            if status.task is not None:
                status.task.cancel()
        await asyncio.gather(
            *(s.proxy.drain(deadline) for s in statuses if s.proxy is not None), return_exceptions=True
        )
        self._bump()

    async def close(self) -> None:
        """Stop everything now (after ``drain``, or instead of it)."""
        self._closing = True
        for status in self._proxies.values():
            if status.task is not None:
                status.task.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for status in self._proxies.values():
            if status.proxy is not None:
                await status.proxy.aclose()
        self._proxies.clear()

    # ----------------------------------------------------------------------------------- internals

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _bump(self) -> None:
        self.version += 1
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def _start(self, status: ProxyStatus) -> None:
        """Start the workload's proxy, retrying until it is up (or the workload leaves)."""
        config = self._inputs.config
        plaintext = (
            fixed_port(config.inbound_plaintext_target_port)
            if config.inbound_plaintext_target_port is not None else None
        )
        delay = RETRY_INITIAL
        secrets = self._inputs.secrets
        while True:
            proxy = Proxy(self._inputs, status.workload, self._sockets, plaintext=plaintext)
            version = secrets.version
            try:
                await proxy.start()
            except CertificateUnavailable as exc:
                self._failed(status, f"no certificate yet: {exc}")
                await secrets.changed(version)  # the SecretManager retries with its own backoff
                continue
            except SecretError as exc:  # forgotten or closed: this workload is going away
                self._failed(status, str(exc))
                return
            except OSError as exc:
                self._failed(status, f"cannot listen on {', '.join(proxy.hosts)}: {exc.strerror or exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            status.proxy = proxy
            status.error = None
            self._bump()
            return

    def _failed(self, status: ProxyStatus, error: str) -> None:
        if status.error != error:
            log.warning("workload proxy not started yet", workload=status.workload.uid, reason=error)
        status.error = error
        self._bump()

    async def _stop(self, status: ProxyStatus, why: str) -> None:
        if status.task is not None and not status.task.done():
            status.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status.task
        if status.proxy is not None:
            log.info("draining workload proxy", workload=status.workload.uid, reason=why)
            loop = asyncio.get_running_loop()
            await status.proxy.drain(loop.time() + self._inputs.config.drain_duration)
        self._bump()



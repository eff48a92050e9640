"""``Proxy``: the inbound listeners of one served workload, the unit both modes start and stop.

One ``Proxy`` per workload (ztunnel's per-pod proxy): an HBONE listener (15008) per address, terminating
mTLS with the workload identity's certificate (no SNI, so one certificate per listener: the reason for
one listener per workload), and optionally a plaintext listener (15006). Sockets come from the given
``SocketFactory`` and addresses from ``hosts``: dedicated mode binds each workload IP from ztunnel's
namespace; in-pod mode binds the wildcard inside the pod's namespace. Clients are accepted only from
this workload's trust domain (checked on the verified chain, as ztunnel's TrustDomainVerifier).
``start`` waits for the certificate (the SecretManager fetches it) and raises if a socket cannot be bound,
closing whatever it had opened. ``drain(deadline)`` stops accepting, sends GOAWAY, lets connections
finish and closes the rest at the deadline (logged with the reason); ``aclose`` ends everything now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from meshcore.aio.hbone_server import HboneServer, serve_hbone
from meshcore.model import Workload
from meshcore.tls.verify import verify_peer
from ztunnel.proxy.connections import Direction
from ztunnel.proxy.inbound import hbone_handler
from ztunnel.proxy.inbound_plaintext import PlaintextDestination, PlaintextListener
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.sockets import SocketFactory

log = structlog.get_logger("ztunnel.proxy")

DRAIN_CLOSE_MESSAGE = "connection closed: the workload's proxy was drained"
HARD_CLOSE_GRACE = 0.5  # seconds between closing our tracked connections and closing the HTTP/2 ones


class Proxy:
    """The inbound listeners of one workload (see the module docstring)."""

    def __init__(
        self,
        inputs: ProxyInputs,
        workload: Workload,
        sockets: SocketFactory,
        *,
        hosts: Sequence[str] | None = None,
        plaintext: PlaintextDestination | None = None,
    ) -> None:
        self.inputs = inputs
        self.workload = workload
        self.sockets = sockets
        # Addresses to listen on; default: each of the workload's own addresses.
        self.hosts = tuple(hosts) if hosts is not None else tuple(workload.addresses)
        self._plaintext_destination = plaintext
        self._hbone: list[HboneServer] = []
        self._plaintext: list[PlaintextListener] = []
        self.started = False

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the listeners are bound (HBONE first, then plaintext)."""
        out = []
        for server in self._hbone:
            name = server.sockets[0].getsockname() if server.sockets else ("", 0)
            out.append((str(name[0]), int(name[1])))
        out.extend(p.address for p in self._plaintext)
        return out

    async def start(self) -> None:
        """Fetch the certificate, then bind and serve; on failure nothing stays open."""
        if not self.hosts:
            raise ValueError(f"workload {self.workload.uid} has no address to listen on")
        context = await self.inputs.tls.server(self.workload.identity)
        trust_domain = self.workload.trust_domain
        config = self.inputs.config
        on_tunnel = hbone_handler(self.inputs, self.workload, self.sockets)
        try:
            for host in self.hosts:
                sock = self.sockets.listen(host, config.hbone_port)
                self._hbone.append(
                    await serve_hbone(
                        None, 0, context,
                        lambda der: verify_peer(der, trust_domain=trust_domain),
                        on_tunnel,
                        counters=self.inputs.hbone_counters,
                        sock=sock,
                    )
                )
                if self._plaintext_destination is not None:
                    psock = self.sockets.listen(host, config.inbound_plaintext_port)
                    listener = PlaintextListener(
                        self.inputs, self.workload, self.sockets, psock, self._plaintext_destination
                    )
                    self._plaintext.append(listener)
                    await listener.start()
        except BaseException:
            await self.aclose()
            raise
        self.started = True
        log.info("workload proxy started", workload=self.workload.uid, listeners=self.addresses)

    def close_listeners(self) -> None:
        """Stop accepting new connections; live ones carry on."""
        for server in self._hbone:
            server.close()
        for listener in self._plaintext:
            listener.close()

    async def drain(self, deadline: float) -> None:
        """Stop accepting, let inbound connections finish until ``deadline`` (loop time), then close the
        rest. Outbound connections belong to the outbound listener, which drains them itself."""
        self.close_listeners()
        uid = self.workload.uid
        connections = self.inputs.connections
        # HBONE servers send GOAWAY and wait for their tunnels; their hard close comes a little after
        # ours, so connections still open at the deadline are logged with the drain as the reason.
        tasks = [asyncio.ensure_future(s.drain(deadline + HARD_CLOSE_GRACE)) for s in self._hbone]
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await connections.wait_none(uid, Direction.INBOUND)
            closed = connections.close_all(DRAIN_CLOSE_MESSAGE, workload_uid=uid, direction=Direction.INBOUND)
            if closed:
                log.warning("closed connections still open at the drain deadline", workload=uid, count=closed)
                with contextlib.suppress(TimeoutError):  # let them log their close before the hard stop
                    async with asyncio.timeout(HARD_CLOSE_GRACE):
                        await connections.wait_none(uid, Direction.INBOUND)
        finally:
            await self.aclose()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    async def aclose(self) -> None:
        """Close every listener and connection now."""
        self.close_listeners()
        for server in self._hbone:
            await server.aclose()
        for listener in self._plaintext:
            await listener.aclose()
        self._hbone.clear()
        self._plaintext.clear()

"""ztunnel's composition root: build every part from one ``ZtunnelConfig``, run them, stop them in order.

``Ztunnel(config, *, ca=None, xds=None, socket_factory=None)`` wires: a ``StateCell`` fed by the xDS
client (node credential, Istio's node metadata) or by the ``LOCAL_XDS_PATH`` file; a ``SecretManager``
over the CA (``CaCertificateProvider`` with the node credential or, with ``CA_AUTH=token``, the pod's
service-account token: ``ztunnel.credentials``; or the fake CA); ``TlsContexts`` over
it; ``TcpMetrics`` and ztunnel's collector on a per-instance ``CollectorRegistry``; the ``HbonePool``
(mTLS connector, sockets from the factory); the ``ConnectionManager`` and ``PolicyWatcher``; dedicated
mode's ``DedicatedProxyManager`` and SOCKS5 listener, or shared (in-pod) mode's ``WorkloadProxyManager``
(pods handed over by the node agent on ``INPOD_UDS``, each with its own listeners, sockets and pool inside
its netns; no dedicated listeners); admin (15000), stats (15020) and readiness (15021).
Tests swap the CA (``ca``: any ``CertificateProvider``), the config source (``xds``: a function of the
cell returning something with ``run()``, ``close()`` and a ``ready`` event, e.g. an ``XdsClient`` on a
``FakeXdsServer``) and the sockets. No module-level state: two instances in one process are independent.

Lifecycle: ``start()`` loads or connects config, binds every listener and starts the background tasks
(all owned here); ``drain(deadline)`` stops accepting and lets live connections finish until the
deadline (loop time), then closes the rest; ``stop()`` ends everything. SIGTERM handling is in
``__main__`` (drain for ``DRAIN_DURATION``, then stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Callable
from importlib.metadata import version as package_version
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from meshcore.aio.ca_client import CaCertificateProvider, CaClient, CertificateProvider
from meshcore.aio.hbone_server import HboneServerCounters
from meshcore.aio.httpserver import HttpServer, Request, Response
from meshcore.aio.pool import HbonePool, PoolKey, PoolStats, mtls_connector
from meshcore.aio.process import BackgroundTasks, serve_operator_http
from meshcore.aio.secrets import SecretManager
from meshcore.aio.state_cell import StateCell
from meshcore.aio.tls_contexts import TlsContexts
from meshcore.aio.xds_client import XdsClient
from meshcore.logs import set_level
from meshcore.readiness import ReadinessReport, check_readiness, readiness_handler
from meshcore.state import ProxyState
from meshcore.telemetry import TcpMetrics
from meshcore.testing.shared_ca import fake_certificate_provider
from meshcore.tls.contexts import channel_credentials, channel_options
from ztunnel.admin import LogLevel, admin_routes, config_dump
from ztunnel.config import CaAuth, ProxyMode, ZtunnelConfig
from ztunnel.credentials import (
    CredentialError,
    TokenXdsSource,
    ca_client_for,
    node_credential,
    token_xds_source,
)
from ztunnel.dedicated import DedicatedProxyManager, select_local_workloads
from ztunnel.inpod.manager import WorkloadProxyManager
from ztunnel.metrics import ZtunnelCollector
from ztunnel.proxy.connections import ConnectionManager, Direction, PolicyWatcher
from ztunnel.proxy.inputs import ProxyInputs
from ztunnel.proxy.local_config import load_local_config
from ztunnel.proxy.outbound import Socks5Listener
from ztunnel.sockets import DedicatedSocketFactory, SocketFactory

log = structlog.get_logger("ztunnel")


class StartupError(Exception):
    """ztunnel cannot start as configured; the message says what to change."""


class ConfigSource(Protocol):
    """Feeds the StateCell (``XdsClient`` is one)."""

    ready: asyncio.Event

    async def run(self) -> None: ...

    def close(self) -> None: ...


XdsFactory = Callable[[StateCell[ProxyState]], ConfigSource]


def node_id(config: ZtunnelConfig) -> str:
    """Istio's sidecar-style node id for a ztunnel (``ztunnel~<ip>~<pod>.<ns>~<ns>.svc.<domain>``)."""
    return f"ztunnel~0.0.0.0~ztunnel-{config.node_name}.istio-system~istio-system.svc.{config.trust_domain}"


class Ztunnel:
    """One ztunnel (see the module docstring)."""

    def __init__(
        self,
        config: ZtunnelConfig,
        *,
        ca: CertificateProvider | None = None,
        xds: XdsFactory | None = None,
        socket_factory: SocketFactory | None = None,
    ) -> None:
        self.config = config
        self._ca_override = ca
        self._xds_factory = xds
        self.sockets: SocketFactory = socket_factory or DedicatedSocketFactory()
        self.cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
        self.registry = CollectorRegistry()
        self.metrics = TcpMetrics(self.registry)
        self.connections = ConnectionManager()
        self.hbone_counters = HboneServerCounters()
        self.watcher = PolicyWatcher(self.cell, self.connections)
        self.log_level = LogLevel(config.log_level, set_level)
        self.synced = asyncio.Event()
        self.source: ConfigSource | None = None
        self._ca_client: CaClient | None = None
        self._token_source: TokenXdsSource | None = None  # CA_AUTH=token's xDS connection
        self._tasks = BackgroundTasks("ztunnel")
        self._http: list[HttpServer] = []
        self._stop_requested = asyncio.Event()
        self._started = False
        self._stopped = False
        # Built in start(), where the event loop runs.
        self.secrets: SecretManager
        self.tls: TlsContexts
        self.pool: HbonePool
        self.inputs: ProxyInputs
        self.manager: DedicatedProxyManager | WorkloadProxyManager
        self.socks5: Socks5Listener | None = None
        self.admin_address: tuple[str, int] | None = None
        self.stats_address: tuple[str, int] | None = None
        self.readiness_address: tuple[str, int] | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bring everything up; raises ``StartupError`` (nothing left running) when it cannot."""
        if self._started:
            raise RuntimeError("Ztunnel.start() called twice")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        provider = self._certificate_provider()
        self.secrets = SecretManager(provider)
        self.tls = TlsContexts(self.secrets)
        self.pool = HbonePool(
            mtls_connector(self.tls.client, socket_for=self._pool_socket),
            max_streams=config.pool_max_streams,
            idle_timeout=config.pool_idle_timeout,
        )
        self.inputs = ProxyInputs(
            config=config, cell=self.cell, secrets=self.secrets, tls=self.tls, pool=self.pool,
            metrics=self.metrics, connections=self.connections, hbone_counters=self.hbone_counters,
            sockets=self.sockets,
        )
        if config.proxy_mode is ProxyMode.SHARED:
            self.manager = WorkloadProxyManager(self.inputs, config.inpod_uds)
        else:
            self.manager = DedicatedProxyManager(self.inputs, self.sockets)
        self.registry.register(
            ZtunnelCollector(
                hbone=self.hbone_counters,
                pool=self._pool_stats,
                proxies=self._proxy_counts,
                policy_closes=lambda: self.watcher.closed_total,
                open_connections=self._open_counts,
            )
        )

        # Configuration first: proxies are started for the workloads it names.
        if config.local_xds_path is not None:
            try:
                state = await asyncio.to_thread(load_local_config, config.local_xds_path)
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
            self.cell.publish(state)
            self.synced.set()
            log.info("local config loaded", path=str(config.local_xds_path), workloads=len(state.workloads),
                     services=len(state.services), policies=len(state.policies))
        else:
            self.source = self._config_source()
            self._tasks.spawn(self.source.run(), "xds")
            self._tasks.spawn(self._mark_synced(self.source), "xds-ready")

        self._tasks.spawn(self.watcher.run(), "policy-watcher")
        self._tasks.spawn(self.tls.run(), "tls-refresh")
        self._tasks.spawn(self.manager.run(), "proxies")

        if config.socks5_addr is not None and isinstance(self.manager, DedicatedProxyManager):
            addr = config.socks5_addr
            try:
                sock = self.sockets.listen(addr.host, addr.port)
            except OSError as exc:
                raise StartupError(f"SOCKS5_ADDR={addr}: cannot listen: {exc.strerror or exc}") from exc
            self.socks5 = Socks5Listener(self.inputs, sock, self.manager.find_local_workload)
            await self.socks5.start()

        self.admin_address = await self._serve_http(
            "admin", config.admin_addr,
            admin_routes(
                dump=self.config_dump, connections=self.connections.to_json, log_level=self.log_level,
                quit=self.request_stop,
            ),
        )
        self.stats_address = await self._serve_http(
            "stats", config.stats_addr, {"/metrics": self._metrics, "/stats/prometheus": self._metrics}
        )
        self.readiness_address = await self._serve_http(
            "readiness", config.readiness_addr, {"/healthz/ready": readiness_handler(self.readiness)}
        )
        log.info(
            "ztunnel started", node=config.node_name, mode=config.proxy_mode.value,
            socks5=str(self.socks5.address) if self.socks5 else None, admin=self.admin_address,
            stats=self.stats_address, readiness=self.readiness_address,
        )

    async def drain(self, deadline: float) -> None:
        """Stop accepting everywhere; let live connections finish until ``deadline`` (loop time)."""
        if not self._started or self._stopped:
            return
        log.info("draining", seconds=round(max(0.0, deadline - asyncio.get_running_loop().time()), 3),
                 connections=len(self.connections))
        waits = []
        if self.socks5 is not None:
            waits.append(self.socks5.drain(deadline))
        if hasattr(self, "manager"):
            waits.append(self.manager.drain(deadline))
        await asyncio.gather(*waits, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.connections.wait_empty()
        left = self.connections.close_all("connection closed: ztunnel is shutting down")
        if left:
            log.warning("closed connections still open at the drain deadline", count=left)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.connections.wait_empty()

    async def stop(self) -> None:
        """End everything now (idempotent). Connections still open are closed."""
        if self._stopped:
            return
        self._stopped = True
        if self.source is not None:
            self.source.close()
        if self.socks5 is not None:
            await self.socks5.aclose()
        if hasattr(self, "manager"):
            await self.manager.close()
        self.connections.close_all("connection closed: ztunnel stopped")
        await self._tasks.cancel_all()
        for server in self._http:
            await server.close()
        if hasattr(self, "pool"):
            await self.pool.aclose()
        if hasattr(self, "secrets"):
            await self.secrets.close()
        if self._token_source is not None:
            await self._token_source.aclose()
        if self._ca_client is not None:
            await self._ca_client.close()
        log.info("ztunnel stopped", node=self.config.node_name)

    def request_stop(self) -> None:
        """Ask the process to shut down gracefully (``/quitquitquit``); ``__main__`` waits on it."""
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    # ------------------------------------------------------------------------------------ observers

    def readiness(self) -> ReadinessReport:
        held = {i for i in self.secrets.identities if self.secrets.find_certificate(i) is not None}
        if isinstance(self.manager, WorkloadProxyManager):
            report = check_readiness(
                config_synced=self.synced.is_set(),
                wanted_identities=self.manager.wanted_identities(),
                held_identities=held,
                pending_proxies=self.manager.pending(),
            )
            if self.manager.snapshot_received.is_set():
                return report
            waiting = f"the node agent's pod snapshot (ZDS on {self.manager.uds_path})"
            return ReadinessReport(False, (waiting, *report.pending))
        state = self.cell.current()
        local = select_local_workloads(state, self.config.node_name)
        return check_readiness(
            config_synced=self.synced.is_set(),
            wanted_identities={w.identity for w in local.values()},
            held_identities=held,
            pending_proxies={uid: why for uid, why in self.manager.pending().items() if uid in local},
        )

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109 - a readiness deadline
        """Return once ``readiness()`` is ready; ``TimeoutError`` (naming what is pending) after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.readiness().ready:
                    waits = [
                        asyncio.ensure_future(self.cell.changed(self.cell.version)),
                        asyncio.ensure_future(self.secrets.changed(self.secrets.version)),
                        asyncio.ensure_future(self.manager.changed(self.manager.version)),
                        asyncio.ensure_future(self.synced.wait()),
                    ]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
        except TimeoutError:
            raise TimeoutError(f"ztunnel {self.config.node_name} not ready: {self.readiness().text()}") from None

    def config_dump(self) -> dict[str, object]:
        statuses = self.manager.statuses()
        return config_dump(
            self.cell.current(),
            self.secrets.snapshot(),
            local_workloads={uid: (s.workload, s.state) for uid, s in statuses.items()},
            connections=self.connections.connections(),
            config=self.config,
        )

    # ------------------------------------------------------------------------------------- internals

    def _certificate_provider(self) -> CertificateProvider:
        config = self.config
        if self._ca_override is not None:
            return self._ca_override
        if config.fake_ca:
            log.warning("FAKE_CA: signing workload certificates in-process; never use this in production")
            return fake_certificate_provider(config.trust_domain, config.fake_ca_dir, config.secret_ttl_seconds)
        assert config.ca_address is not None  # parse_config guarantees a CA or FAKE_CA
        try:
            self._ca_client = ca_client_for(config)  # node credential or service-account token (CA_AUTH)
        except CredentialError as exc:
            raise StartupError(str(exc)) from exc
        return CaCertificateProvider(self._ca_client, impersonate=True, ttl_seconds=config.secret_ttl_seconds)

    def _node_credential(self, user: str) -> tuple[str, str, str]:
        try:
            return node_credential(self.config, user)
        except CredentialError as exc:
            raise StartupError(str(exc)) from exc

    def _config_source(self) -> ConfigSource:
        if self._xds_factory is not None:
            return self._xds_factory(self.cell)
        config = self.config
        assert config.xds_address is not None
        metadata = {"NODE_NAME": config.node_name, "CLUSTER_ID": config.cluster_id,
                    "ISTIO_VERSION": package_version("ambient-mesh")}
        if config.ca_auth is CaAuth.TOKEN:  # xDS with ztunnel's own certificate, fetched with the token
            if self._ca_client is None:
                raise StartupError("CA_AUTH=token needs CA_ADDRESS (istiod's token CA port) to fetch a certificate")
            self._token_source = token_xds_source(config, self._ca_client, self.cell, node_id(config), metadata)
            return self._token_source
        key, chain, roots = self._node_credential("XDS_ADDRESS")
        return XdsClient(
            config.xds_address,
            channel_credentials(roots, key, chain),
            node_id(config),
            metadata,
            self.cell,
            cluster_id=config.cluster_id,
            channel_options=channel_options(),
        )

    async def _mark_synced(self, source: ConfigSource) -> None:
        await source.ready.wait()
        self.synced.set()

    def _pool_socket(self, key: PoolKey) -> socket.socket:
        family = socket.AF_INET6 if ":" in key.dst_addr[0] else socket.AF_INET
        return self.sockets.new_socket(family, source_ip=key.src_ip)

    async def _serve_http(self, name: str, addr: Any, routes: dict[str, Any]) -> tuple[str, int]:
        return await serve_operator_http(name, addr, routes, self._http, StartupError)

    async def _metrics(self, _: Request) -> Response:
        self.connections.flush_metrics()  # bytes of live connections up to now
        return Response(body=generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)

    def _pool_stats(self) -> PoolStats:
        """The shared pool's statistics, plus every pod's pool in shared mode."""
        stats = [self.pool.stats()]
        if isinstance(self.manager, WorkloadProxyManager):
            stats += self.manager.pool_stats()
        return PoolStats(*(sum(getattr(s, f.name) for s in stats) for f in dataclasses.fields(PoolStats)))

    def _proxy_counts(self) -> dict[str, int]:
        counts = {"Up": 0, "Pending": 0}
        for status in self.manager.statuses().values():
            counts[status.state] += 1
        return counts

    def _open_counts(self) -> dict[str, int]:
        counts = {d.value: 0 for d in Direction}
        for conn in self.connections.connections():
            counts[conn.direction.value] += 1
        return counts

"""The waypoint's composition root: build every part from one ``WaypointConfig``, run them, stop them.

``Waypoint(config, *, ca=None, xds=None)`` wires: a ``StateCell[WaypointState]`` fed by one delta-ADS
stream (Address, Authorization and our L7Authorization kinds; mTLS with the waypoint's own certificate);
a ``SecretManager`` for its one identity (the CA, or the fake CA in tests); the HBONE listener on
``POD_IP:15008``; per tunnel, protocol detection then the HTTP engine (``waypoint.l7.session``) with
``WaypointHandler`` deciding each request (``waypoint.decide``: L7 policy, then an endpoint) and
upstream HBONE tunnels from an ``HbonePool`` presenting the waypoint's identity (so the destination's
ztunnel sees the waypoint's principal); opaque TCP gets L4 treatment only: it is relayed to an endpoint
unless a policy that applies here has HTTP-only attributes, in which case it is refused (fail closed:
such a policy cannot be evaluated on bytes that are not HTTP). Istio's request metrics with
``reporter="waypoint"`` and one access-log line per request; admin (15000, loopback), metrics (15020),
readiness (15021). Tests swap the CA (``ca``), the config source (``xds``: a function of the cell) and
the random source of weighted routes, fault percentages and balancing (``rng``).

Lifecycle: ``start()`` (fetches the certificate, connects config, binds listeners); ``drain(deadline)``
stops accepting and lets tunnels finish; ``stop()`` ends everything. SIGTERM handling is in ``__main__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Protocol

import msgspec
import structlog
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from meshcore.admin import LogLevel, admin_routes, certificate_json, config_json, service_json, workload_json
from meshcore.aio.ca_client import CaCertificateProvider, CaClient, CertificateProvider
from meshcore.aio.hbone_server import HboneServer, HboneServerCounters, TunnelRequest, serve_hbone
from meshcore.aio.httpserver import HttpServer, Request, Response
from meshcore.aio.pool import HbonePool, mtls_connector
from meshcore.aio.process import BackgroundTasks, serve_operator_http
from meshcore.aio.relay import relay
from meshcore.aio.secrets import SecretManager
from meshcore.aio.state_cell import StateCell
from meshcore.aio.tls_contexts import TlsContexts
from meshcore.aio.xds_client import XdsClient, run_setting_ready
from meshcore.identity import SpiffeId
from meshcore.logs import set_level
from meshcore.model.l7 import L7Authorization
from meshcore.policy.l7 import L7PolicyCache, select_l7_policies
from meshcore.readiness import ReadinessReport, check_readiness, readiness_handler
from meshcore.routing import canonical_ip, service_endpoints, service_port
from meshcore.telemetry import Reporter, build_connection_labels
from meshcore.telemetry.http import HttpMetrics
from meshcore.testing.shared_ca import fake_certificate_provider
from meshcore.tls.contexts import channel_credentials, channel_options
from meshcore.tls.verify import verify_peer
from waypoint.admission import Admission, Ticket
from waypoint.config import WaypointConfig
from waypoint.decide import Me, RoundRobin, Routed, choose_endpoint, decide, destination_of
from waypoint.l7.detect import Detected
from waypoint.l7.model import (
    ConnectionFacts,
    Forward,
    HttpCounters,
    HttpLimits,
    LocalResponse,
    MirrorTarget,
    RequestRecord,
)
from waypoint.l7.model import (
    Request as HttpRequest,
)
from waypoint.l7.session import serve_http, sniff
from waypoint.l7.upstream import Upstreams
from waypoint.resilience.chooser import EndpointChooser
from waypoint.resilience.policies import outlier_policy, pool_limits, rate_limit_policy, retry_policy
from waypoint.resilience.retry import Outcome, RetryPolicy
from waypoint.router import RouteDecision
from waypoint.state import WAYPOINT_KINDS, WaypointState
from waypoint.upstream import HboneUpstreamPool

log = structlog.get_logger("waypoint")
access_log = structlog.get_logger("waypoint.access")

ACCESS_SCOPE = "access"
_ROUTED_LIMIT = 4096  # decisions waiting for their request's completion record (bounded: a leak guard)
_UPSTREAM_FAILURES = frozenset({"UF", "UC", "UT", "UPE"})  # attempt flags outlier detection counts as 5xx
_PENDING_WAIT = 10.0  # seconds a request may wait for a connection-pool slot without a route timeout


class StartupError(Exception):
    """The waypoint cannot start as configured; the message says what to change."""


class ConfigSource(Protocol):
    ready: asyncio.Event

    async def run(self) -> None: ...

    def close(self) -> None: ...


XdsFactory = Callable[[StateCell[WaypointState]], ConfigSource]


def node_id(config: WaypointConfig) -> str:
    """Istio's node id for a waypoint proxy (``router~<ip>~<pod>.<ns>~<ns>.svc.<domain>``)."""
    return f"router~{config.pod_ip}~{config.pod_name}.{config.namespace}~{config.namespace}.svc.{config.trust_domain}"


def has_http_only_rules(policy: L7Authorization) -> bool:
    """Whether ``policy`` uses attributes only HTTP requests have (methods, paths, hosts, headers)."""
    for rule in policy.rules:
        for op in rule.operations:
            if op.methods or op.not_methods or op.paths or op.not_paths or op.hosts or op.not_hosts:
                return True
        for cond in rule.conditions:
            if cond.header:
                return True
    return False


@dataclass(slots=True)
class _InFlight:
    routed: Routed
    ticket: Ticket | None = None
    label: str = ""  # the endpoint counted in flight (least request)


class WaypointHandler:
    """The HTTP engine's ``RequestHandler``: ``decide`` on the current snapshot (L7 policy, route,
    endpoint), then admission (local rate limit 429 ``RL``, injected fault ``DI``/``FI``, connection-pool
    limits 503 ``UO``) and the route's resilience settings on the ``Forward`` (request and per-try
    timeouts, retries with alternative endpoints, mirrors). Remembers each decision until its completion
    record (``take``), which releases its pool slot and feeds outlier detection with every attempt."""

    def __init__(self, cell: StateCell[WaypointState], me: Me, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cell = cell
        self._me = me
        self._rng = rng or random.Random()
        self.chooser = EndpointChooser(rng=self._rng, clock=clock)
        self.admission = Admission(clock=clock)
        self._cache = L7PolicyCache()
        self._routed: dict[tuple[str, str, int], _InFlight] = {}
        self.denied = 0

    async def decide(self, request: HttpRequest) -> Forward | LocalResponse:
        state = self._cell.current()
        routed = decide(state, self._me, request, self.chooser, cache=self._cache, rand=self._rng.random)
        if routed.policy is not None and not routed.policy.allowed:
            self.denied += 1
        entry = _InFlight(routed)
        self._remember(request, entry)
        decision = routed.decision
        route = routed.route
        if not isinstance(decision, Forward) or route is None or routed.service is None:
            return decision
        service = routed.service
        identity = str(request.connection.peer_identity) if request.connection.peer_identity else ""
        limited = self.admission.rate_limit(service.key, rate_limit_policy(route.rate_limit), identity)
        if limited is not None:
            return limited
        flags = ""
        if route.fault_delay > 0 or route.fault_abort:
            flags, aborted = await self.admission.fault(route.fault_delay, route.fault_abort)
            if aborted is not None:
                return aborted
        limits = pool_limits(route.policy.connection_pool) if route.policy is not None else None
        if limits is not None:
            got = await self.admission.admit(routed.pool or service.key, limits,
                                             http1=request.http_version != "2",
                                             wait_limit=route.timeout or _PENDING_WAIT)
            if isinstance(got, LocalResponse):
                return got
            entry.ticket = got
        retry = retry_policy(route.retry, route.backend_timeout)
        if retry is None and route.backend_timeout:
            retry = RetryPolicy(0, frozenset(), per_try_timeout=route.backend_timeout)
        entry.label = decision.label
        self.chooser.balancer.started(decision.label)
        return replace(decision, timeout=route.timeout or None, retry=retry, flags=flags,
                       mirrors=self._mirrors(state, route, request), alternatives=decision.alternatives)

    def _mirrors(self, state: WaypointState, route: RouteDecision, request: HttpRequest) -> tuple[MirrorTarget, ...]:
        """An endpoint of each mirror backend (a service this waypoint knows; others are skipped, logged)."""
        if not route.mirrors:
            return ()
        dst = destination_of(request)
        targets = []
        for backend in route.mirrors:
            service = state.proxy.find_service(backend.service_key)
            port = service_port(service, backend.port or (dst.port if dst else 0)) if service else None
            if service is None or port is None:
                log.warning("mirror backend unknown or without that port; copy skipped", backend=backend.service_key)
                continue
            usable, _ = service_endpoints(state.proxy, service, port, network=self._me.network,
                                          v6=dst is not None and ":" in dst.ip)
            if not usable:
                continue
            mirrored = choose_endpoint(service, usable, request, self.chooser)
            if isinstance(mirrored.decision, Forward):
                targets.append(MirrorTarget(mirrored.decision.endpoint, mirrored.decision.label))
        return tuple(targets)

    def _remember(self, request: HttpRequest, entry: _InFlight) -> None:
        if len(self._routed) >= _ROUTED_LIMIT:  # a leak guard: completion records always come, normally
            for dropped in self._routed.values():
                self._finish(dropped)
            self._routed.clear()
        self._routed[(request.request_id, request.connection.source_ip, request.connection.source_port)] = entry

    def _finish(self, entry: _InFlight) -> None:
        self.admission.release(entry.ticket)
        entry.ticket = None
        if entry.label:
            self.chooser.balancer.finished(entry.label)
            entry.label = ""

    def take(self, record: RequestRecord) -> Routed | None:
        """The decision of ``record``'s request; releases what it held and feeds outlier detection."""
        conn = record.connection
        entry = self._routed.pop((record.request_id, conn.source_ip, conn.source_port), None)
        if entry is None:
            return None
        self._finish(entry)
        routed = entry.routed
        route = routed.route
        outlier = None
        if route is not None and route.policy is not None:
            outlier = outlier_policy(route.policy.outlier_detection)
        if outlier is not None and routed.pool:
            for attempt in record.attempts:
                if not attempt.status and attempt.flags not in _UPSTREAM_FAILURES:
                    continue  # the client went away (DC) or broke the request: says nothing about the endpoint
                outcome = Outcome(status=attempt.status, flag="" if attempt.status else attempt.flags)
                if self.chooser.observe(routed.pool, attempt.upstream, outcome, outlier, routed.pool_size):
                    log.warning("endpoint ejected by outlier detection", pool=routed.pool, endpoint=attempt.upstream)
        return routed


class Waypoint:
    """One waypoint proxy (see the module docstring)."""

    def __init__(
        self, config: WaypointConfig, *, ca: CertificateProvider | None = None, xds: XdsFactory | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.identity: SpiffeId = config.identity
        self.me = Me(config.gateway, self.identity, config.network)
        self.cell: StateCell[WaypointState] = StateCell(WaypointState())
        self.registry = CollectorRegistry()
        self.http_metrics = HttpMetrics(self.registry)
        self.tcp_refused = Counter(
            "waypoint_tcp_refused", "Opaque TCP connections refused at the waypoint, by reason", ["reason"],
            registry=self.registry,
        )
        self.hbone_counters = HboneServerCounters()
        self.http_counters = HttpCounters()
        self.limits = HttpLimits(max_header_bytes=config.max_header_bytes, max_header_count=config.max_header_count)
        self.handler = WaypointHandler(self.cell, self.me, rng=rng)
        self.registry.register(_ResilienceCollector(self.http_counters, self.handler))
        self.log_level = LogLevel(config.log_level, set_level)
        self.synced = asyncio.Event()
        self.source: ConfigSource | None = None
        self._ca_override = ca
        self._xds_factory = xds
        self._ca_client: CaClient | None = None
        self._tasks = BackgroundTasks("waypoint")
        self._http: list[HttpServer] = []
        self._stop_requested = asyncio.Event()
        self._started = False
        self._stopped = False
        self.secrets: SecretManager
        self.tls: TlsContexts
        self.pool: HbonePool
        self.upstream_pool: HboneUpstreamPool
        self.upstreams: Upstreams
        self.hbone: HboneServer | None = None
        self.hbone_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.stats_address: tuple[str, int] | None = None
        self.readiness_address: tuple[str, int] | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bring everything up; raises ``StartupError`` (nothing left running) when it cannot."""
        if self._started:
            raise RuntimeError("Waypoint.start() called twice")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        self.secrets = SecretManager(self._certificate_provider())
        self.tls = TlsContexts(self.secrets)
        self.secrets.track([self.identity])
        self.pool = HbonePool(mtls_connector(self.tls.client))
        self.upstream_pool = HboneUpstreamPool(self.pool, self.identity)
        self.upstreams = Upstreams(self.upstream_pool, self.limits)
        self._tasks.spawn(self.tls.run(), "tls-refresh")
        self.source = self._config_source()
        self._tasks.spawn(self.source.run(), "xds")
        self._tasks.spawn(self._mark_synced(self.source), "xds-ready")
        try:
            server_context = await self.tls.server(self.identity)
        except Exception as exc:
            raise StartupError(f"cannot get a certificate for {self.identity}: {exc}") from exc
        trust_domain = config.trust_domain
        try:
            self.hbone = await serve_hbone(
                config.pod_ip, config.hbone_port, server_context,
                lambda der: verify_peer(der, trust_domain=trust_domain), self._on_tunnel,
                counters=self.hbone_counters,
            )
        except OSError as exc:
            raise StartupError(f"HBONE {config.pod_ip}:{config.hbone_port}: cannot listen: {exc.strerror or exc}") from exc
        self.hbone_address = (config.pod_ip, self.hbone.port)
        self.admin_address = await self._serve_http(
            "admin", config.admin_addr,
            admin_routes(
                dump=self.config_dump, connections=lambda: [], log_level=self.log_level, quit=self.request_stop,
                title="waypoint admin", dump_contents="workloads, services, policies, l7Policies, certificates",
            ),
        )
        self.stats_address = await self._serve_http(
            "stats", config.stats_addr, {"/metrics": self._metrics, "/stats/prometheus": self._metrics}
        )
        self.readiness_address = await self._serve_http(
            "readiness", config.readiness_addr, {"/healthz/ready": readiness_handler(self.readiness)}
        )
        log.info("waypoint started", gateway=config.gateway, identity=str(self.identity),
                 hbone=self.hbone_address, admin=self.admin_address, stats=self.stats_address)

    async def drain(self, deadline: float) -> None:
        """Stop accepting; let live tunnels finish until ``deadline`` (loop time)."""
        if self.hbone is not None:
            await self.hbone.drain(deadline)

    async def stop(self) -> None:
        """End everything now (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        if self.source is not None:
            self.source.close()
        if self.hbone is not None:
            await self.hbone.aclose()
        if hasattr(self, "upstreams"):
            await self.upstreams.aclose()
            await self.upstream_pool.aclose()
        await self._tasks.cancel_all()
        for server in self._http:
            await server.close()
        if hasattr(self, "pool"):
            await self.pool.aclose()
        if hasattr(self, "secrets"):
            await self.secrets.close()
        if self._ca_client is not None:
            await self._ca_client.close()
        log.info("waypoint stopped", gateway=self.config.gateway)

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    # ------------------------------------------------------------------------------------ observers

    def readiness(self) -> ReadinessReport:
        held = {i for i in self.secrets.identities if self.secrets.find_certificate(i) is not None}
        return check_readiness(
            config_synced=self.synced.is_set(), wanted_identities=[self.identity], held_identities=held,
            pending_proxies={} if self.hbone is not None else {self.config.gateway: "HBONE listener not up"},
        )

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109 - a readiness deadline
        try:
            async with asyncio.timeout(timeout):
                while not self.readiness().ready:
                    waits = [
                        asyncio.ensure_future(self.secrets.changed(self.secrets.version)),
                        asyncio.ensure_future(self.synced.wait()),
                        asyncio.ensure_future(self.cell.changed(self.cell.version)),
                    ]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
        except TimeoutError:
            raise TimeoutError(f"waypoint {self.config.gateway} not ready: {self.readiness().text()}") from None

    def config_dump(self) -> dict[str, object]:
        state = self.cell.current()
        proxy = state.proxy
        return {
            "gateway": self.config.gateway,
            "identity": str(self.identity),
            "workloads": [workload_json(w) for _, w in sorted(proxy.workloads.items())],
            "services": [service_json(s, proxy) for _, s in sorted(proxy.services.items())],
            "l7Policies": [_l7_json(p) for _, p in sorted(state.l7_policies.items())],
            "serviceTraffic": [msgspec.to_builtins(t) for _, t in sorted(state.traffic.items())],
            "certificates": [certificate_json(c) for c in self.secrets.snapshot()],
            "config": config_json(self.config),
            "version": state.version,
        }

    # ------------------------------------------------------------------------------------- data path

    async def _on_tunnel(self, request: TunnelRequest) -> None:
        peer = request.peer_address or ("0.0.0.0", 0)
        facts = ConnectionFacts(
            source_ip=canonical_ip(peer[0]), source_port=peer[1], destination=request.authority,
            peer_identity=request.peer_identity,
        )
        stream = await request.accept()
        try:
            detected, first = await sniff(stream, self.limits)
        except (ConnectionError, OSError):
            await stream.aclose()
            return
        if detected in (Detected.HTTP1, Detected.HTTP2):
            await serve_http(
                stream, first_bytes=first, handler=self.handler, upstreams=self.upstreams, limits=self.limits,
                connection=facts, on_complete=self._on_complete, counters=self.http_counters, protocol=detected,
                background=self._spawn_mirror,
            )
            return
        await self._serve_tcp(stream, first, facts)

    async def _serve_tcp(self, stream: Any, first: bytes, facts: ConnectionFacts) -> None:
        """Opaque bytes: L4 only. Refused when a policy here needs HTTP to be evaluated (fail closed)."""
        try:
            state = self.cell.current()
            probe = HttpRequest("CONNECT", "tcp", "", "", (), "tcp", "", facts)
            routed = decide(state, self.me, probe, RoundRobin())
            service = routed.service.hostname if routed.service is not None else None
            http_only = [p.key for p in select_l7_policies(state.l7_policies.values(), self.me.gateway, service)
                         if has_http_only_rules(p)]
            if http_only:
                self.tcp_refused.labels("http_policy_on_tcp").inc()
                access_log.warning(
                    "connection refused", scope=ACCESS_SCOPE, src=f"{facts.source_ip}:{facts.source_port}",
                    dst=facts.destination, error="non-HTTP traffic reached the waypoint, and policies that apply here "
                    f"need HTTP attributes to be evaluated: {', '.join(http_only)}",
                )
                return
            if not isinstance(routed.decision, Forward):
                self.tcp_refused.labels(routed.decision.response_flags or "denied").inc()
                access_log.warning("connection refused", scope=ACCESS_SCOPE, dst=facts.destination,
                                   src=f"{facts.source_ip}:{facts.source_port}", error=routed.detail)
                return
            upstream = await self.upstream_pool.acquire(routed.decision.endpoint)
            try:
                if first:
                    await upstream.send_all(first)
                sent, received = await relay(stream, upstream)
            finally:
                await upstream.aclose()
            access_log.info("connection complete", scope=ACCESS_SCOPE, src=f"{facts.source_ip}:{facts.source_port}",
                            dst=facts.destination, upstream=routed.decision.label, bytes_sent=received,
                            bytes_recv=len(first) + sent, protocol="tcp")
        except (ConnectionError, OSError) as exc:
            access_log.warning("connection failed", scope=ACCESS_SCOPE, dst=facts.destination, error=repr(exc))
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    def _spawn_mirror(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro, "mirror")

    def _on_complete(self, record: RequestRecord) -> None:
        routed = self.handler.take(record)
        state = self.cell.current()
        conn = record.connection
        source = state.proxy.find_workload_by_addr(conn.source_ip, self.config.network) if conn.source_ip else None
        destination = routed.workload if routed is not None else None
        if routed is not None and record.upstream in routed.workloads:
            destination = routed.workloads[record.upstream]  # a retry may have ended on another endpoint
        labels = build_connection_labels(
            Reporter.WAYPOINT,
            source=source,
            destination=destination,
            destination_service=routed.service if routed is not None else None,
            source_identity=conn.peer_identity,
            mtls=True,
        )
        self.http_metrics.observe(
            labels, response_code=record.status, grpc_status=record.grpc_status, response_flags=record.response_flags,
            request_bytes=record.request_bytes, response_bytes=record.response_bytes, duration_s=record.duration,
        )
        fields: dict[str, object] = {
            "src.addr": f"{conn.source_ip}:{conn.source_port}",
            "src.identity": str(conn.peer_identity) if conn.peer_identity else None,
            "src.workload": source.name if source is not None else None,
            "dst.addr": conn.destination,
            "dst.service": routed.service.hostname if routed and routed.service else None,
            "dst.workload": destination.name if destination is not None else None,
            "upstream": record.upstream,
            "method": record.method,
            "path": record.path,
            "authority": record.authority,
            "protocol": record.protocol,
            "response_code": record.status,
            "response_flags": record.response_flags,
            "request_id": record.request_id,
            "bytes_recv": record.request_bytes,
            "bytes_sent": record.response_bytes,
            "duration": f"{max(0, int(record.duration * 1000))}ms",
        }
        if routed is not None and routed.policy is not None and routed.policy.policy:
            fields["policy"] = routed.policy.policy
        if routed is not None and routed.route is not None and routed.route.origin:
            fields["route"] = routed.route.origin
        if len(record.attempts) > 1:  # every attempt, in order: "upstream status flags"
            fields["attempts"] = ", ".join(f"{a.upstream} {a.status or '-'} {a.flags}" for a in record.attempts)
        detail = record.detail or (routed.detail if routed is not None else "")
        if detail:
            fields["detail"] = detail
        access_log.info("request complete", scope=ACCESS_SCOPE, **{k: v for k, v in fields.items() if v is not None})

    # ------------------------------------------------------------------------------------- internals

    def _certificate_provider(self) -> CertificateProvider:
        config = self.config
        if self._ca_override is not None:
            return self._ca_override
        if config.fake_ca:
            log.warning("FAKE_CA: signing the waypoint's certificate in-process; never use this in production")
            return fake_certificate_provider(config.trust_domain, config.fake_ca_dir, config.secret_ttl_seconds)
        assert config.ca_address is not None
        from meshcore.aio.ca_client import token_ca_client  # the service-account token flow

        try:
            roots = Path(config.root_cert_path).read_text(encoding="ascii")
        except OSError as exc:
            raise StartupError(
                f"ISTIO_ROOT_CERT_PATH={config.root_cert_path}: cannot read the mesh root certificate: {exc}"
            ) from exc
        self._ca_client = token_ca_client(config.ca_address, roots, config.token_path)
        return CaCertificateProvider(self._ca_client, impersonate=False, ttl_seconds=config.secret_ttl_seconds)

    def _config_source(self) -> ConfigSource:
        if self._xds_factory is not None:
            return self._xds_factory(self.cell)
        config = self.config
        if config.xds_address is None:
            raise StartupError("XDS_ADDRESS is empty: the waypoint needs the control plane")
        return _MtlsXdsSource(self, config.xds_address)

    async def _mark_synced(self, source: ConfigSource) -> None:
        await source.ready.wait()
        self.synced.set()

    async def _serve_http(self, name: str, addr: Any, routes: dict[str, Any]) -> tuple[str, int]:
        return await serve_operator_http(name, addr, routes, self._http, StartupError)

    async def _metrics(self, _: Request) -> Response:
        return Response(body=generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)


class _ResilienceCollector:
    """The resilience counters (engine, admission, outlier detection) as Prometheus counters, read live."""

    def __init__(self, http: HttpCounters, handler: WaypointHandler) -> None:
        self._http = http
        self._handler = handler

    def collect(self) -> Iterator[CounterMetricFamily]:
        http, adm = self._http, self._handler.admission.counters
        outlier = self._handler.chooser.outlier
        simple = [
            ("waypoint_upstream_retries", "Upstream attempts after the first", http.retries),
            ("waypoint_upstream_retries_exhausted", "Retriable failures answered without a retry", http.retries_exhausted),
            ("waypoint_overflow", "Requests answered 503 UO by connection-pool limits", adm.overflowed),
            ("waypoint_pending_requests", "Requests that waited for a connection-pool slot", adm.queued),
            ("waypoint_outlier_ejections", "Endpoints ejected by outlier detection", outlier.ejections),
            ("waypoint_outlier_ejections_overflow", "Ejections skipped by maxEjectionPercent",
             outlier.ejections_overflow),
        ]
        for name, text, value in simple:
            family = CounterMetricFamily(name, text)
            family.add_metric([], value)
            yield family
        mirrors = CounterMetricFamily("waypoint_mirror_requests", "Mirror copies by outcome", labels=["outcome"])
        for outcome, value in (("sent", http.mirrored), ("dropped", http.mirrors_dropped),
                               ("failed", http.mirror_failures)):
            mirrors.add_metric([outcome], value)
        yield mirrors
        limited = CounterMetricFamily("waypoint_rate_limited", "Requests answered 429 RL, by the bucket that was empty",
                                      labels=["reason"])
        for reason, value in sorted(adm.rate_limited.items()):
            limited.add_metric([reason], value)
        yield limited
        faults = CounterMetricFamily("waypoint_faults_injected", "Injected faults by kind", labels=["kind"])
        faults.add_metric(["abort"], adm.faults_aborted)
        faults.add_metric(["delay"], adm.faults_delayed)
        yield faults


class _MtlsXdsSource:
    """Delta ADS to istiod over mTLS with the waypoint's own certificate (fetched first)."""

    def __init__(self, waypoint: Waypoint, target: str) -> None:
        self._waypoint = waypoint
        self._target = target
        self.ready = asyncio.Event()
        self._client: XdsClient[WaypointState] | None = None
        self._closed = False

    async def run(self) -> None:
        wp = self._waypoint
        bundle = await wp.secrets.fetch_certificate(wp.identity)
        if self._closed:
            return
        config = wp.config
        self._client = XdsClient(
            self._target,
            channel_credentials(bundle.roots_pem, bundle.key_pem, bundle.chain_pem),
            node_id(config),
            {"NAMESPACE": config.namespace, "CLUSTER_ID": config.cluster_id, "WAYPOINT": config.gateway,
             "SERVICE_ACCOUNT": config.service_account, "ISTIO_VERSION": package_version("ambient-mesh")},
            wp.cell,
            kinds=WAYPOINT_KINDS,
            cluster_id=config.cluster_id,
            channel_options=channel_options(),
        )
        await run_setting_ready(self._client, self.ready)

    def close(self) -> None:
        self._closed = True
        if self._client is not None:
            self._client.close()


def _l7_json(p: L7Authorization) -> dict[str, object]:
    return msgspec.to_builtins(p)  # type: ignore[no-any-return]

"""istiod_lite's composition root: builds every part from one ``IstiodConfig`` and runs them.

Parts: the store (SQLite, or the API server with ``STORE=kubernetes``), the registry (resources ->
workloads, services, policies), the CA (root from the state dir or plugged-in files; on Kubernetes from
a Secret, ``ca.secret``), the delta ADS push server, one gRPC server on the xDS port
carrying both ADS and the CA over TLS (client certificates required: node credentials), a second one
on the token CA port carrying only the CA for service-account-token callers (``ca.token_service``), and the
monitoring HTTP server (``/metrics``, ``/debug/syncz``, ``/debug/registryz``, ``/ready``).

Replicas: on the Kubernetes store several replicas run at once. Every one serves xDS and the CA; only the
one holding the Lease (``istiod_lite.leader``) runs the waypoint controller, writes route/policy
status and keeps the mesh root's ConfigMap in every namespace (``ca.secret.RootPublisher``) (``is_leader``). A follower keeps its registry current but writes nothing; on taking the lease it
re-reads the whole store once and writes only what differs from what the cluster holds (so status the
previous leader wrote is not written again). On the SQLite store there is one writer and no election.

Flow: at start the whole store is read and pushed, so what was applied while istiod_lite was down is
served at once; then a watch loop follows the store's change log in order and updates the registry once
per batch of changes, incrementally (``registry.incremental``: a pod change recomputes that pod only),
handing only the changed resources to the push server (which debounces). Nothing here is a module-level
singleton; tests build several ControlPlanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence, Set
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import msgspec
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from istiod_lite.ca.authority import CertificateAuthority, IssuedCredential
from istiod_lite.ca.nodeauth import NodeAuthConfig
from istiod_lite.ca.service import CaServicer, TlsAccounting, add_to_server, server_credentials
from istiod_lite.ca.storage import CaMaterial, load_or_create_root, load_plugged
from istiod_lite.ca.token_service import TokenCaServicer, token_server_credentials
from istiod_lite.ca.token_service import add_to_server as add_token_ca_to_server
from istiod_lite.ca.tokenauth import PodFacts, TokenAuthConfig, pod_facts
from istiod_lite.ca.tokenreview import TokenReviewVerifier, Verifier
from istiod_lite.config import IstiodConfig, open_store
from istiod_lite.leader import LeaderElector, LeaseSettings
from istiod_lite.push import PushServer
from istiod_lite.registry import AUTHORIZATION, SERVICE, WORKLOAD, Severity, diff
from istiod_lite.registry.incremental import RegistrySettings, RegistryState, build, empty, update
from istiod_lite.registry.index import Value, diff_l7
from istiod_lite.registry.policy_status import PolicyFacts, merge_status, policy_conditions, policy_facts
from istiod_lite.registry.traffic import TrafficState, TrafficUpdate
from istiod_lite.registry.traffic import update as update_traffic
from istiod_lite.waypoints import ControllerSettings, WaypointController
from meshcore import satoken
from meshcore.aio.httpserver import HttpServer, Request, Response, metrics_handler
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    address_to_proto,
    authorization_to_proto,
)
from meshcore.model.convert_l7 import L7_AUTHORIZATION_TYPE_URL, l7_authorization_to_proto
from meshcore.model.convert_traffic import SERVICE_TRAFFIC_TYPE_URL, service_traffic_to_proto
from meshcore.model.l7 import L7Authorization
from meshcore.proto import discovery_pb2_grpc
from meshcore.store.errors import ResourceNotFound
from meshcore.store.resource import Resource, ResourceRef

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, Configuration

    from istiod_lite.ca.secret import RootPublisher

log = structlog.get_logger("istiod_lite")

# What the push server serves: ztunnels' Address and Authorization, waypoints' L7 policies and traffic.
SERVED_TYPE_URLS = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, L7_AUTHORIZATION_TYPE_URL, SERVICE_TRAFFIC_TYPE_URL)
MAX_MESSAGE_BYTES = 200 * 1024 * 1024  # ztunnel accepts xDS messages up to 200 MiB (what we may send)
# What 15012 accepts in one message: DeltaDiscoveryRequests and CSRs are small. gRPC refuses a larger one
# (RESOURCE_EXHAUSTED) before it is deserialized, so it costs no memory.
MAX_RECEIVE_BYTES = 4 * 1024 * 1024
WATCH_POLL_SECONDS = 0.02
# Status writes per turn of the watch loop: each is a store transaction (a few ms on SQLite), and the loop
# also serves xDS and the CA, so a bulk apply of policies is written over several turns.
STATUS_WRITES_PER_TURN = 32
# This replica's identity in the leader Lease: the pod name (the manifests set POD_NAME), else the host.
POD_NAME_ENV = "POD_NAME"


def load_ca(
    config: IstiodConfig, now: datetime, *, kubernetes: Configuration | None = None, namespace: str = "istio-system"
) -> CertificateAuthority:
    """The CA from plugged-in files when configured; else on Kubernetes (``kubernetes``: the API client
    configuration) the root kept in a Secret in ``namespace`` (``ca.secret``); else the state dir's root
    (created on first start)."""
    material: CaMaterial
    if config.ca_cert_file and config.ca_key_file:
        material = load_plugged(
            config.ca_cert_file, config.ca_key_file, chain_path=config.ca_chain_file, root_path=config.ca_root_file
        )
    elif kubernetes is not None:
        from istiod_lite.ca.secret import load_secret_root  # the Kubernetes client only on that store

        material = load_secret_root(kubernetes, namespace=namespace, trust_domain=config.trust_domain, now=now)
    else:
        material = load_or_create_root(config.state_dir, trust_domain=config.trust_domain, now=now)
    return material.authority(
        config.trust_domain,
        default_ttl=timedelta(seconds=config.default_cert_ttl),
        max_ttl=timedelta(seconds=config.max_cert_ttl),
    )


class ControlPlane:
    """One running istiod_lite. ``start()`` binds and serves; ``stop()`` shuts down cleanly."""

    def __init__(
        self,
        config: IstiodConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease: LeaseSettings | None = None,
    ) -> None:
        """``lease``: the leader election settings on the Kubernetes store (default: identity from
        ``POD_NAME`` or the host name, client-go's usual durations); ignored on SQLite."""
        self.config = config
        self._clock = clock
        self.metrics = CollectorRegistry(auto_describe=True)
        self._recomputes = Counter(
            "istiod_lite_registry_recomputes", "Registry updates (one per batch of store changes)", registry=self.metrics
        )
        self._recompute_time = Histogram(
            "istiod_lite_registry_recompute_seconds",
            "Time to update the registry and hand the changes to the push server",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.metrics,
        )
        self._problems = Gauge(
            "istiod_lite_registry_problems", "Resources with problems, by severity", ["severity"], registry=self.metrics
        )
        self.store = open_store(config)
        # Leader election and the CA root's Secret live in the istiod namespace (Kubernetes store only).
        self._lease = lease or LeaseSettings(identity=os.environ.get(POD_NAME_ENV) or socket.gethostname())
        try:
            kube = self.store.configuration if config.store == "kubernetes" else None  # type: ignore[attr-defined]
            self.ca = load_ca(config, clock(), kubernetes=kube, namespace=self._lease.namespace)
        except BaseException:
            self.store.close()
            raise
        self.tls_accounting = TlsAccounting(self.metrics)  # TLS handshakes on 15012 (see ca.service)
        self.push = PushServer(
            self.metrics,
            debounce=config.debounce_seconds,
            type_urls=SERVED_TYPE_URLS,
            on_call=self.tls_accounting.call_seen,
        )
        self._registry_settings = RegistrySettings(
            trust_domain=config.trust_domain, cluster_id=config.cluster_id, root_namespace=config.root_namespace
        )
        self._state = empty(self._registry_settings)
        self.waypoints = WaypointController(
            self.store,
            ControllerSettings(
                xds_address=config.waypoint_xds_address,
                ca_address=config.waypoint_ca_address,
                image=config.waypoint_image,
                trust_domain=config.trust_domain,
                domain_suffix=self._registry_settings.domain_suffix,
            ),
            metrics=self.metrics,
        )
        self.snapshot = self._state.snapshot
        self._traffic = TrafficState()  # routes, DestinationRules, rate limits -> ServiceTraffic per service
        # AuthorizationPolicies as last seen (their status is compared with what we compute) and what the
        # converters decided for each, kept while its spec and annotations hold (``registry.policy_status``).
        self._policies: dict[ResourceRef, Resource] = {}
        self._policy_facts: dict[ResourceRef, tuple[Resource, PolicyFacts]] = {}
        self._policy_dirty: set[ResourceRef] = set()  # policies whose status is to be computed (and written)
        self._policy_status_writes = Counter(
            "istiod_lite_policy_status_writes",
            "AuthorizationPolicy status writes (only when a condition changed)",
            registry=self.metrics,
        )
        self._revision = 0
        self._grpc: grpc.aio.Server | None = None
        self._token_grpc: grpc.aio.Server | None = None  # the token CA port (None: not served)
        self._review_api: ApiClient | None = None  # TokenReview's API client (Kubernetes store only)
        # The service-account token issuer's public key (<state-dir>/sa-issuer, made if missing).
        # On Kubernetes the API server's TokenReview verifies tokens instead (``ca.tokenreview``).
        self._issuer_key = (
            satoken.ensure_issuer_key(config.state_dir).public_key()
            if config.token_ca_port is not None and config.store != "kubernetes"
            else None
        )
        self.token_ca_port = 0
        self._http: HttpServer | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.xds_port = 0
        self.monitoring_port = 0
        self.ready = asyncio.Event()
        # Leader election (Kubernetes store only); without it this replica is the only writer.
        self.elector: LeaderElector | None = None
        self._elector_task: asyncio.Task[None] | None = None
        self._resync_as_leader = False
        self.leader_resyncs = 0  # full re-reads done on taking the lease (for tests and debugging)
        self._leader_gauge = Gauge(
            "istiod_lite_leader", "1 while this replica runs the controllers and writes status", registry=self.metrics
        )
        self._leader_gauge.set(0 if config.store == "kubernetes" else 1)
        # istio-ca-root-cert in every namespace (Kubernetes store only; the leader writes).
        self.root_publisher: RootPublisher | None = None
        self._root_task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this replica may run the controllers and write status (always, without election)."""
        return self.elector is None or self.elector.is_leader

    def _on_leadership(self, leading: bool) -> None:
        self._leader_gauge.set(1 if leading else 0)
        # Taking the lease: the watch loop re-reads everything once before its next batch. Losing it:
        # writes stop at once (is_leader is read before each one).
        self._resync_as_leader = leading
        if leading and self.root_publisher is not None:
            self.root_publisher.everywhere()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._load_all()
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        discovery_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.push, self._grpc)  # type: ignore[no-untyped-call]
        ca_servicer = CaServicer(
            self.ca,
            lambda node: self.snapshot.identities_on_node(node),
            registry=self.metrics,
            config=NodeAuthConfig(
                trust_domain=cfg.trust_domain, trusted_node_accounts=frozenset(cfg.trusted_node_accounts)
            ),
            clock=self._clock,
            on_call=self.tls_accounting.call_seen,
        )
        add_to_server(self._grpc, ca_servicer)
        ips = ["127.0.0.1"] + ([cfg.xds_host] if cfg.xds_host not in ("0.0.0.0", "::", "") else [])
        server_cert = self.ca.issue_server_cert(["localhost"], ips, self._clock())
        self.xds_port = self._grpc.add_secure_port(
            f"{_bracket(cfg.xds_host)}:{cfg.xds_port}",
            server_credentials(self.ca, server_cert, accounting=self.tls_accounting),
        )
        if self.xds_port == 0:
            raise OSError(f"cannot listen on {cfg.xds_host}:{cfg.xds_port} (xDS/CA); is another istiod-lite running?")
        await self._grpc.start()
        if cfg.token_ca_port is not None:
            await self._start_token_ca(ca_servicer, server_cert)
        self._http = HttpServer(
            {
                "/metrics": metrics_handler(self.metrics),
                "/debug/syncz": self._syncz,
                "/debug/registryz": self._registryz,
                "/ready": self._ready,
            },
            name="istiod-monitoring",
        )
        _, self.monitoring_port = await self._http.start(cfg.monitoring_host, cfg.monitoring_port)
        self._watch_task = asyncio.create_task(self._watch(), name="istiod-store-watch")
        if cfg.store == "kubernetes":
            self._start_election()
            self._start_root_publisher()
        self.ready.set()
        log.info(
            "istiod-lite serving",
            xds=f"{cfg.xds_host}:{self.xds_port}",
            token_ca=f"{cfg.token_ca_host}:{self.token_ca_port}" if self._token_grpc is not None else "off",
            monitoring=f"{cfg.monitoring_host}:{self.monitoring_port}",
            state_dir=str(cfg.state_dir),
            trust_domain=cfg.trust_domain,
            workloads=len(self.snapshot.workloads),
            services=len(self.snapshot.services),
            policies=len(self.snapshot.policies),
        )

    def _start_election(self) -> None:
        from kubernetes_asyncio.client import ApiClient  # the Kubernetes client only on that store

        configuration = self.store.configuration  # type: ignore[attr-defined]
        self.elector = LeaderElector(ApiClient(configuration), self._lease, on_change=self._on_leadership)
        self._elector_task = asyncio.create_task(self.elector.run(), name="istiod-leader-election")

    def _start_root_publisher(self) -> None:
        from kubernetes_asyncio.client import ApiClient  # the Kubernetes client only on that store

        from istiod_lite.ca.secret import RootPublisher

        self.root_publisher = RootPublisher(
            ApiClient(self.store.configuration),  # type: ignore[attr-defined]
            self.ca.roots_pem,
            namespaces=lambda: self.store.list("Namespace"),
            is_leader=lambda: self.is_leader,
            metrics=self.metrics,
        )
        self._root_task = asyncio.create_task(self.root_publisher.run(), name="istiod-root-configmaps")

    async def _stop_election(self) -> None:
        if self._elector_task is None or self.elector is None:
            return
        self._elector_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._elector_task
        await self.elector.release()  # a clean stop hands over at once
        await self.elector.api.close()

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self._stop_election()
        if self._root_task is not None and self.root_publisher is not None:
            self._root_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._root_task
            await self.root_publisher.api.close()
        await self.push.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._token_grpc is not None:
            await self._token_grpc.stop(grace)
        if self._review_api is not None:
            await self._review_api.close()
        if self._http is not None:
            await self._http.close()
        self.store.close()
        log.info("istiod-lite stopped")

    async def _start_token_ca(self, ca_servicer: CaServicer, server_cert: IssuedCredential) -> None:
        """The CA again on the token port: server TLS only, callers authenticated by their service-account
        token (``ca.tokenauth``); refusals counted with 15012's."""
        cfg = self.config
        assert cfg.token_ca_port is not None
        self._token_grpc = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        verify: Verifier | None = None
        if cfg.store == "kubernetes":
            from kubernetes_asyncio.client import ApiClient  # the Kubernetes client only on that store

            self._review_api = ApiClient(self.store.configuration)  # type: ignore[attr-defined]
            verify = TokenReviewVerifier(self._review_api, clock=self._clock)
        servicer = TokenCaServicer(
            self.ca,
            self._find_pod,
            metrics=ca_servicer.metrics,
            config=TokenAuthConfig(trust_domain=cfg.trust_domain, public_key=self._issuer_key),
            clock=self._clock,
            verify=verify,
            identities_on_node=lambda node: self.snapshot.identities_on_node(node),
            trusted_node_accounts=frozenset(cfg.trusted_node_accounts),
        )
        add_token_ca_to_server(self._token_grpc, servicer)
        address = f"{_bracket(cfg.token_ca_host)}:{cfg.token_ca_port}"
        self.token_ca_port = self._token_grpc.add_secure_port(address, token_server_credentials(server_cert))
        if self.token_ca_port == 0:
            raise OSError(f"cannot listen on {address} (token CA); is another istiod-lite running?")
        await self._token_grpc.start()

    def _find_pod(self, namespace: str, name: str) -> PodFacts | None:
        pod = self.store.get(ResourceRef("Pod", namespace, name))
        return pod_facts(pod) if pod is not None else None

    # -- registry -> push --------------------------------------------------------------------------

    def _load_all(self) -> None:
        """Read the whole store and push what differs from the current snapshot (all of it at start)."""
        self._revision, resources = self.store.snapshot()  # one transaction: no change seen twice
        started = time.perf_counter()
        state = build(resources, self._registry_settings)
        changed, removed = diff(self.snapshot, state.snapshot)
        self._publish(state, changed, removed, started, diff_l7(self.snapshot, state.snapshot))
        self._update_traffic(resources, (), everything=True)
        self._update_policy_status(resources, (), everything=True)
        self.waypoints.observe(resources)  # every Gateway and what was made for one: resync them

    async def _watch(self) -> None:
        """Follow the store's change log in order; one incremental registry update per batch of changes."""
        while True:
            if self._resync_as_leader:
                self._resync_as_leader = False
                self._take_over()
            try:
                events = self.store.changes_since(self._revision)
            except Exception:
                log.exception("reading the store's change log failed; retrying")
                events = []
            if events:
                latest: dict[ResourceRef, Resource | None] = {}  # per resource, its last event wins
                for ev in events:
                    latest[ev.resource.ref] = None if ev.type == "DELETED" else ev.resource
                    self._revision = ev.revision
                try:
                    started = time.perf_counter()
                    before = self._state
                    state, changed, removed = update(
                        self._state,
                        [r for r in latest.values() if r is not None],
                        [ref for ref, r in latest.items() if r is None],
                    )
                    self._publish(state, changed, removed, started, state.l7_changes)
                    self._update_traffic(
                        [r for r in latest.values() if r is not None], [ref for ref, r in latest.items() if r is None]
                    )
                    self._update_policy_status(
                        [r for r in latest.values() if r is not None],
                        [ref for ref, r in latest.items() if r is None],
                        # a table the batch did not write is the previous state's object (copy-on-write)
                        bindings_changed=state.services is not before.services or state.waypoints is not before.waypoints,
                    )
                except Exception:  # a registry bug must not stop config updates: start over from the store
                    log.exception("incremental registry update failed; rebuilding from the whole store")
                    self._load_all()
                self.waypoints.observe(ev.resource for ev in events)
                if self.root_publisher is not None:
                    self.root_publisher.namespaces_added(
                        ev.resource.name for ev in events if ev.type == "ADDED" and ev.resource.kind == "Namespace"
                    )
            self._reconcile_waypoints()
            self._flush_policy_status()  # once per turn, within its write budget
            await asyncio.sleep(WATCH_POLL_SECONDS)

    def _take_over(self) -> None:
        """Just took the lease: re-read the whole store (writing the status that differs from the cluster's)
        and reconcile every waypoint Gateway, since a follower wrote nothing."""
        try:
            self._load_all()
            self.waypoints.resync()
        except Exception:
            log.exception("re-reading the store on taking the lease failed; retrying")
            self._resync_as_leader = self.is_leader
            return
        self.leader_resyncs += 1
        log.info("leader: store re-read, controllers running", identity=self._lease.identity)

    def _reconcile_waypoints(self) -> None:
        """The waypoint controller's turn (its own writes come back through the watch as no-ops); the
        leader's only."""
        if not self.waypoints.pending or not self.is_leader:
            return
        try:
            self.waypoints.reconcile_pending()
        except Exception:  # a controller bug must not stop config updates
            log.exception("waypoint controller failed; the affected Gateways are retried on their next change")

    def _publish(
        self,
        state: RegistryState,
        changed: dict[str, dict[str, Value]],
        removed: dict[str, set[str]],
        started: float,
        l7: tuple[Mapping[str, L7Authorization], Set[str]],
    ) -> None:
        """Make ``state`` current and hand only what changed to the push server."""
        addresses = {**changed[WORKLOAD], **changed[SERVICE]}
        self.push.set_resources(
            ADDRESS_TYPE_URL,
            {name: address_to_proto(m) for name, m in addresses.items()},  # type: ignore[arg-type]
            removed[WORKLOAD] | removed[SERVICE],
        )
        self.push.set_resources(
            AUTHORIZATION_TYPE_URL,
            {name: authorization_to_proto(m) for name, m in changed[AUTHORIZATION].items()},  # type: ignore[arg-type]
            removed[AUTHORIZATION],
        )
        self.push.set_resources(
            L7_AUTHORIZATION_TYPE_URL, {name: l7_authorization_to_proto(m) for name, m in l7[0].items()}, l7[1]
        )
        self._state, self.snapshot = state, state.snapshot
        self._recomputes.inc()
        self._recompute_time.observe(time.perf_counter() - started)
        counts = state.problem_counts
        for sev in Severity:
            self._problems.labels(sev.name).set(counts.get(sev, 0))
        for p in state.fresh_problems:
            log.warning("resource problem", resource=str(p.ref), reason=p.reason.value, message=p.message)
        n_changed = sum(len(v) for v in changed.values())
        n_removed = sum(len(v) for v in removed.values())
        if n_changed or n_removed:
            log.info("registry updated", revision=self._revision, changed=n_changed, removed=n_removed)

    def _update_traffic(self, changed: list[Resource], deleted: Sequence[ResourceRef], *, everything: bool = False) -> None:
        """Recompile the traffic resources a batch can affect, push the services whose ``ServiceTraffic``
        changed and write route/policy status back (``registry.traffic``). Call after ``_publish``."""
        snap = self.snapshot
        before = self._traffic
        result: TrafficUpdate = update_traffic(
            TrafficState() if everything else before, changed, deleted,
            services=snap.services, workloads=snap.workloads, waypoints=snap.waypoints,
            cluster_id=self._registry_settings.cluster_id, domain_suffix=self._registry_settings.domain_suffix,
            trust_domain=self._registry_settings.trust_domain, everything=everything,
        )
        updates, removed = result.changed, result.removed
        if everything:  # from scratch: compare with what was pushed
            updates = {k: v for k, v in result.state.traffic.items() if before.traffic.get(k) != v}
            removed = set(before.traffic) - set(result.state.traffic)
        self.push.set_resources(
            SERVICE_TRAFFIC_TYPE_URL, {k: service_traffic_to_proto(v) for k, v in updates.items()}, removed
        )
        self._traffic = result.state
        for p in result.problems:
            log.warning("traffic config problem", resource=str(p.ref), reason=p.reason.value, message=p.message)
        now = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        # A follower writes no status: the leader does, and re-checks all of it when it takes the lease.
        for ref, compiled_status in result.statuses.items() if self.is_leader else ():
            status = copy.deepcopy(compiled_status)  # the compiled value stays as compiled (no times)
            for cond in [*status.get("conditions", []), *(c for p in status.get("parents", []) for c in p["conditions"])]:
                cond["lastTransitionTime"] = now
            try:
                self.store.set_status(ref, status)
            except ResourceNotFound:
                continue  # deleted meanwhile: its deletion comes through the watch
            except Exception:
                log.exception("writing traffic status failed", resource=str(ref))
        if updates or removed:
            log.info("service traffic updated", changed=sorted(updates), removed=sorted(removed))

    def _update_policy_status(
        self,
        changed: Sequence[Resource],
        deleted: Sequence[ResourceRef],
        *,
        everything: bool = False,
        bindings_changed: bool = False,
    ) -> None:
        """Mark for ``_flush_policy_status`` (``ZtunnelAccepted``/``WaypointAccepted``, ``registry.policy_status``)
        the AuthorizationPolicies a batch can affect: those changed, and every one with targetRefs when a
        Service's or a waypoint's binding may have changed. Call after ``_publish``. Only the leader writes,
        and only a condition that changed, so our own write, coming back through the watch, writes nothing."""
        if everything:
            self._policies = {}
        for ref in deleted:
            self._policies.pop(ref, None)
            self._policy_facts.pop(ref, None)
            self._policy_dirty.discard(ref)
        for r in changed:
            if r.kind == "AuthorizationPolicy":
                self._policies[r.ref] = r
                self._policy_dirty.add(r.ref)
        if everything:
            self._policy_dirty = set(self._policies)
            self._policy_facts = {ref: f for ref, f in self._policy_facts.items() if ref in self._policies}
        elif bindings_changed:
            self._policy_dirty |= {ref for ref, r in self._policies.items() if self._facts(r).for_waypoint}

    def _flush_policy_status(self) -> None:
        """Write the status of the policies marked dirty, at most ``STATUS_WRITES_PER_TURN`` writes per turn
        of the watch loop (each is a store transaction: a bulk apply must not stall xDS serving); the rest
        wait for the next turn, computed against the snapshot of then."""
        if not self._policy_dirty:
            return
        if not self.is_leader:  # a follower writes no status; on taking the lease it re-reads everything
            self._policy_dirty.clear()
            return
        snap = self.snapshot
        now = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        budget = STATUS_WRITES_PER_TURN
        for ref in sorted(self._policy_dirty):
            if budget == 0:
                break
            self._policy_dirty.discard(ref)
            resource = self._policies.get(ref)
            if resource is None:
                continue
            try:
                conditions = policy_conditions(
                    self._facts(resource),
                    waypoints=snap.waypoints,
                    services=snap.services,
                    bindings=snap.waypoint_bindings,
                )
                status = merge_status(resource.status, conditions, generation=resource.generation, now=now)
                if status is None:
                    continue
                budget -= 1
                result = self.store.set_status(ref, status)
            except ResourceNotFound:
                continue  # deleted meanwhile: its deletion comes through the watch
            except Exception:
                log.exception("writing policy status failed", resource=str(ref))
                continue
            if result.action != "unchanged":
                self._policy_status_writes.inc()

    def _facts(self, policy: Resource) -> PolicyFacts:
        """What the converters decide about ``policy``, computed again only when its spec or annotations
        changed (a status write alone reuses it)."""
        cached = self._policy_facts.get(policy.ref)
        if cached is not None and cached[0].spec == policy.spec and cached[0].annotations == policy.annotations:
            return cached[1]
        facts = policy_facts(
            policy,
            root_namespace=self._registry_settings.root_namespace,
            cluster_domain=self._registry_settings.domain_suffix,
        )
        self._policy_facts[policy.ref] = (policy, facts)
        return facts

    # -- monitoring --------------------------------------------------------------------------------

    async def _syncz(self, _: Request) -> Response:
        return Response.json(self.push.syncz())

    async def _registryz(self, _: Request) -> Response:
        snap = self.snapshot
        return Response.json(
            {
                "workloads": msgspec.to_builtins(list(snap.workloads.values())),
                "services": msgspec.to_builtins(list(snap.services.values())),
                "policies": msgspec.to_builtins(list(snap.policies.values())),
                "l7Policies": msgspec.to_builtins(list(snap.l7_policies.values())),
                "serviceTraffic": msgspec.to_builtins(list(self._traffic.traffic.values())),
                "waypoints": msgspec.to_builtins(list(snap.waypoints.values())),
                # Why each workload/service that asked for a waypoint has (or has not) got one.
                "waypointBindings": {name: msgspec.to_builtins(b) for name, b in snap.waypoint_bindings.items()},
                "problems": [
                    {"resource": str(p.ref), "severity": p.severity.name, "reason": p.reason.value, "message": p.message}
                    for p in snap.problems
                ],
            }
        )

    async def _ready(self, _: Request) -> Response:
        return Response.text("ready\n") if self.ready.is_set() else Response.text("not ready\n", 503)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host

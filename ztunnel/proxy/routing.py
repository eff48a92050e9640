"""Outbound routing: where a local workload's connection to ``dst_ip:dst_port`` goes, as a pure decision.

``build_route(state, src, dst_ip, dst_port)`` reads one ProxyState snapshot and returns a ``Route`` value
(or raises a ``RouteError``); the outbound shell only carries it out. Rules, in ztunnel's order
(reference/istio-ambient-protocols.md §4 "Waypoint selection"):

1. A service VIP: the port must be one the service exposes (else ``UnknownServicePort``, as Istio
   refuses it too). A service waypoint takes the connection (authority = the VIP and port as dialled).
   Otherwise one endpoint is picked among those that are healthy (or any, with health policy
   ALLOW_ALL), on the source's network and serving the port; the service port becomes the endpoint's
   target port. None left: ``NoHealthyUpstream``, or passthrough for a PASSTHROUGH-mode service.
2. A workload IP: its workload waypoint takes the connection unless the source is that waypoint.
3. Mesh destinations (HBONE or native tunnel) always get HBONE to ``<pod ip>:15008``; a known workload
   outside the mesh or an unknown IP gets plain TCP to the destination as dialled. Fail closed: nothing
   bound for a mesh workload ever leaves as plaintext, and a waypoint that cannot be resolved is an
   error, never a reason to skip it.
Not handled yet (typed errors or skipped endpoints, never silent plaintext): cross-network endpoints
(double HBONE through a network gateway), hostname-only workloads (DNS), weighted waypoints.
Pure: no I/O, no clock; randomness only through ``pick``.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass

from meshcore.identity import SpiffeId
from meshcore.model import (
    DEFAULT_HBONE_PORT,
    GatewayAddress,
    LoadBalancingMode,
    Service,
    Workload,
)
from meshcore.routing import SockAddr, address_of, expected_identities, service_endpoints, service_port
from meshcore.state import ProxyState
from ztunnel.proxy.errors import (
    InvalidDestination,
    NoHealthyUpstream,
    SelfCall,
    UnknownServicePort,
    UnknownWaypoint,
)

# ztunnel's own listener ports (15001 outbound, 15006 inbound plaintext, 15008 HBONE, 15080 SOCKS5): a
# connection to one of them on loopback would loop back into ztunnel (ztunnel's ``SelfCall``).
ILLEGAL_PORTS = frozenset({15001, 15006, 15008, 15080})

Pick = Callable[[int], int]
"""``pick(n)`` returns the index (0 <= i < n) of the endpoint to use; default: uniformly random."""


class Protocol(enum.Enum):
    HBONE = "HBONE"  # HTTP/2 CONNECT over mTLS to the next hop
    TCP = "TCP"  # plain TCP to the next hop, bytes as the app sent them


class RouteKind(enum.Enum):
    """Why the route looks the way it does (ztunnel's ``RequestType``; for logs and metrics)."""

    DIRECT = "Direct"  # to the destination workload itself (HBONE if it is in the mesh, else TCP)
    WAYPOINT = "ToServerWaypoint"  # to the destination's waypoint, which forwards it
    PASSTHROUGH = "Passthrough"  # destination unknown to the mesh: TCP to it as dialled


@dataclass(frozen=True, slots=True)
class Route:
    """What the outbound shell does with one application connection."""

    # HBONE or plain TCP to ``next_hop``.
    protocol: Protocol
    # Direct, via a waypoint, or passthrough.
    kind: RouteKind
    # Where to dial: the pod's HBONE port (in-pod mode: ztunnel listens inside each pod's netns, so the
    # pod IP:15008 is the tunnel endpoint), the waypoint's HBONE address, or the TCP destination itself.
    next_hop: SockAddr
    # The CONNECT ``:authority`` for HBONE: the chosen pod IP and translated target port, or, via a
    # waypoint, the address exactly as the app dialled it (VIP and service port). None for TCP.
    hbone_target: SockAddr | None
    # Identities the next hop's certificate may carry (its SPIFFE URI SAN must be one of them); empty
    # for TCP. Direct: the destination workload's identity plus the service's subject_alt_names;
    # waypoint: the waypoint workload's identity plus the waypoint service's SANs.
    upstream_ids: tuple[SpiffeId, ...]
    # The workload that finally serves the connection, when known (None for passthrough, and for a
    # service reached through its waypoint: the waypoint picks the endpoint).
    destination_workload: Workload | None
    # The service when the app dialled a service VIP, else None.
    destination_service: Service | None
    # The waypoint workload the connection goes through (kind WAYPOINT only).
    waypoint: Workload | None = None

    @property
    def authority(self) -> str | None:
        """``hbone_target`` in ``:authority`` form, or None for TCP routes."""
        return None if self.hbone_target is None else str(self.hbone_target)


def build_route(
    state: ProxyState,
    src: Workload,
    dst_ip: str,
    dst_port: int,
    *,
    pick: Pick | None = None,
    hbone_port: int = DEFAULT_HBONE_PORT,
) -> Route:
    """The route for ``src``'s connection to ``dst_ip:dst_port`` (see the module docstring).

    ``hbone_port`` is the port peers' ztunnels accept HBONE on (15008 in Istio). Raises a ``RouteError``
    subclass when the connection must be refused.
    """
    ip = _parse_destination(dst_ip, dst_port)
    dst = SockAddr(str(ip), dst_port)
    if ip.is_loopback and dst_port in ILLEGAL_PORTS:
        raise SelfCall(str(dst), f"port {dst_port} is one of ztunnel's own listeners; refusing a loop")
    ctx = _Ctx(state, src, dst, ip.version == 6, pick or random.randrange, hbone_port)
    found = state.find_destination(dst.ip, src.network)
    if isinstance(found, Service):
        return ctx.to_service(found)
    if isinstance(found, Workload):
        return ctx.to_workload(found)
    return Route(Protocol.TCP, RouteKind.PASSTHROUGH, dst, None, (), None, None)


def _parse_destination(dst_ip: str, dst_port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    shown = f"{dst_ip}:{dst_port}"
    try:
        ip = ipaddress.ip_address(dst_ip)
    except ValueError:
        raise InvalidDestination(shown, f"{dst_ip!r} is not an IP address literal") from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            raise InvalidDestination(shown, "IPv6 zone identifiers are not routable destinations")
        if ip.ipv4_mapped is not None:
            # What a dual-stack socket reports for an IPv4 peer: the mesh knows it by its IPv4 form.
            ip = ip.ipv4_mapped
    if isinstance(dst_port, bool) or not isinstance(dst_port, int) or not 1 <= dst_port <= 65535:
        raise InvalidDestination(shown, f"port {dst_port!r} is outside 1..65535")
    return ip


@dataclass(frozen=True, slots=True)
class _Ctx:
    """One routing decision's inputs, so the helpers do not pass six arguments around."""

    state: ProxyState
    src: Workload
    dst: SockAddr  # as the app dialled it, IP canonicalised
    v6: bool  # the destination is IPv6: prefer endpoint addresses of that family
    pick: Pick
    hbone_port: int

    def choose(self, n: int) -> int:
        i = self.pick(n)
        if not 0 <= i < n:
            raise ValueError(f"pick({n}) returned {i}; it must return an index in 0..{n - 1}")
        return i

    def address_of(self, wl: Workload) -> str | None:
        """The workload's address of the destination's IP family, else its first one."""
        return address_of(wl, self.v6)

    # -- services

    def to_service(self, svc: Service) -> Route:
        svc_port = service_port(svc, self.dst.port)
        if svc_port is None:
            exposed = ", ".join(str(p.service_port) for p in svc.ports) or "none"
            raise UnknownServicePort(
                str(self.dst),
                f"service {svc.key} exposes ports [{exposed}], not {self.dst.port}; "
                "add the port to the Service or dial one it exposes",
            )
        if svc.waypoint is not None and not self.src_is_waypoint(svc.waypoint):
            return self.via_waypoint(svc.waypoint, destination_service=svc, destination_workload=None)
        usable, skipped = service_endpoints(self.state, svc, svc_port, network=self.src.network, v6=self.v6)
        if not usable:
            lb = svc.load_balancing
            if lb is not None and lb.mode == LoadBalancingMode.PASSTHROUGH:
                return Route(Protocol.TCP, RouteKind.PASSTHROUGH, self.dst, None, (), None, svc)
            why = ", ".join(f"{n} {what}" for what, n in skipped.items()) or "it has no endpoints"
            raise NoHealthyUpstream(
                str(self.dst), f"service {svc.key} has no usable endpoint for port {self.dst.port} ({why})"
            )
        chosen = usable[self.choose(len(usable))]
        return self.direct(chosen.workload, chosen.address, chosen.port, svc)

    # -- workloads

    def to_workload(self, wl: Workload) -> Route:
        # Only when the app dialled the pod itself (Istio step 4): a service's endpoints are reached
        # directly once the service (and its waypoint, if any) has been dealt with.
        if wl.waypoint is not None and not self.src_is_waypoint(wl.waypoint):
            return self.via_waypoint(wl.waypoint, destination_service=None, destination_workload=wl)
        return self.direct(wl, self.dst.ip, self.dst.port, None)

    def direct(self, wl: Workload, ip: str, port: int, svc: Service | None) -> Route:
        if not wl.in_mesh:
            return Route(Protocol.TCP, RouteKind.DIRECT, SockAddr(ip, port), None, (), wl, svc)
        return Route(
            Protocol.HBONE,
            RouteKind.DIRECT,
            SockAddr(ip, self.hbone_port),
            SockAddr(ip, port),
            expected_identities(wl.identity, svc.subject_alt_names if svc is not None else ()),
            wl,
            svc,
        )

    # -- waypoints

    def via_waypoint(
        self,
        gw: GatewayAddress,
        *,
        destination_service: Service | None,
        destination_workload: Workload | None,
    ) -> Route:
        wp, ip, ids = self.resolve_waypoint(gw)
        return Route(
            Protocol.HBONE,  # always HBONE to a waypoint, whatever its own tunnel protocol
            RouteKind.WAYPOINT,
            SockAddr(ip, gw.hbone_mtls_port or DEFAULT_HBONE_PORT),
            self.dst,  # untranslated: the waypoint does its own service routing
            ids,
            destination_workload,
            destination_service,
            waypoint=wp,
        )

    def waypoint_candidates(self, gw: GatewayAddress) -> tuple[Service | None, list[Workload]]:
        """The waypoint service (if addressed through one) and the workloads that may serve as it."""
        if gw.address is not None:
            found = self.state.find_destination(gw.address.address, gw.address.network)
            if isinstance(found, Workload):
                return None, [found]
            if found is None:
                return None, []
            svc = found
        elif gw.hostname is not None:
            maybe = self.state.find_service(f"{gw.hostname.namespace}/{gw.hostname.hostname}")
            if maybe is None:
                return None, []
            svc = maybe
        else:
            return None, []
        return svc, [wl for wl, _ in self.state.endpoints(svc.key)]

    def src_is_waypoint(self, gw: GatewayAddress) -> bool:
        """True when the source is (one of) this waypoint's own workloads: going through it would loop."""
        return any(wl.uid == self.src.uid for wl in self.waypoint_candidates(gw)[1])

    def resolve_waypoint(self, gw: GatewayAddress) -> tuple[Workload, str, tuple[SpiffeId, ...]]:
        where = _describe(gw)
        if gw.address is not None and gw.address.network != self.src.network:
            raise UnknownWaypoint(
                str(self.dst),
                f"waypoint {where} is on network {gw.address.network!r}, not this workload's "
                f"{self.src.network!r}; cross-network waypoints (double HBONE) are not supported",
            )
        svc, workloads = self.waypoint_candidates(gw)
        usable = [
            (wl, addr)
            for wl in workloads
            if wl.healthy and wl.network == self.src.network and (addr := self.address_of(wl)) is not None
        ]
        if not usable:
            what = "is unknown to this proxy" if not workloads else "has no healthy workload on this network"
            raise UnknownWaypoint(
                str(self.dst),
                f"the destination's waypoint {where} {what}; check that the waypoint is deployed and "
                "ready (traffic is refused rather than bypassing it)",
            )
        wl, addr = usable[self.choose(len(usable))]
        if svc is None and gw.address is not None:
            addr = gw.address.address  # a waypoint named by its pod address: dial exactly that
        sans = svc.subject_alt_names if svc is not None else ()
        return wl, addr, expected_identities(wl.identity, sans)


def _describe(gw: GatewayAddress) -> str:
    if gw.address is not None:
        return gw.address.address
    if gw.hostname is not None:
        return f"{gw.hostname.namespace}/{gw.hostname.hostname}"
    return "(with neither address nor hostname)"

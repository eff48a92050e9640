"""Routing facts both proxies need: addresses, target ports, expected identities, usable endpoints.

ztunnel's outbound routing (``ztunnel.proxy.routing``) and the waypoint's per-request endpoint choice
read the same ``ProxyState`` the same way, so the rules live here once:
- ``SockAddr``: an IP literal and a port whose ``str()`` is the ``ip:port`` / ``[ip]:port`` authority.
- ``target_port``: the port an endpoint serves a service port on (the endpoint's own mapping of a named
  targetPort wins, then the service's numeric target, 0 meaning "the service port"), or None when the
  endpoint lists ports for the service but not this one (Istio skips such an endpoint).
- ``expected_identities``: the workload's identity plus every parseable SPIFFE SAN of its service.
- ``service_endpoints``: the endpoints of a service usable for one port from one network, with the count
  of each reason the others were skipped (unhealthy unless the service's health policy allows all, on
  another network, not serving the port, without an IP of any family), for error messages that say why.
Pure: no I/O, no clock, no randomness (callers pick among the candidates).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from meshcore.identity import SpiffeId
from meshcore.model import HealthPolicy, Port, Service, Workload
from meshcore.state import ProxyState


class SockAddr(NamedTuple):
    """An IP literal and a port; ``str()`` is the ``ip:port`` / ``[ip]:port`` authority form."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@functools.lru_cache(maxsize=4096)  # called per connection and per request; addresses repeat
def canonical_ip(ip: str) -> str:
    """An IP literal in the mesh's canonical form: an IPv4-mapped IPv6 address (``::ffff:10.0.0.1``,
    what a dual-stack socket reports for an IPv4 peer) as plain IPv4, IPv6 compressed; raises ValueError
    for a string that is not an IP literal. The mesh knows IPv4 peers by their IPv4 form."""
    if ip.startswith("::ffff:") and "." in ip:  # the common dual-stack case, without ipaddress
        ip = ip[7:]
        if ip.count(".") == 3 and all(part.isdigit() for part in ip.split(".")):
            return ip
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def target_port(svc_port: Port, endpoint_ports: Sequence[Port]) -> int | None:
    """The port an endpoint serves ``svc_port`` on, or None when it does not serve it (module docstring)."""
    for p in endpoint_ports:
        if p.service_port == svc_port.service_port:
            return p.target_port or svc_port.target_port or svc_port.service_port
    if svc_port.target_port:
        return svc_port.target_port
    return None if endpoint_ports else svc_port.service_port


def expected_identities(first: SpiffeId, sans: Iterable[str]) -> tuple[SpiffeId, ...]:
    """``first`` plus every parseable SPIFFE SAN, without duplicates (unparseable SANs cannot match)."""
    out = [first]
    for san in sans:
        parsed = SpiffeId.try_parse(san)
        if parsed is not None and parsed not in out:
            out.append(parsed)
    return tuple(out)


def address_of(wl: Workload, v6: bool) -> str | None:
    """The workload's address of the wanted IP family, else its first one, else None."""
    for a in wl.addresses:
        if (":" in a) == v6:
            return a
    return wl.addresses[0] if wl.addresses else None


def service_port(svc: Service, port: int) -> Port | None:
    """The service's port entry for ``port``, or None when the service does not expose it."""
    return next((p for p in svc.ports if p.service_port == port), None)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One usable endpoint of a service for one service port."""

    workload: Workload
    address: str  # the IP to reach it on
    port: int  # the service port translated to this endpoint's target port


def service_endpoints(
    state: ProxyState, svc: Service, svc_port: Port, *, network: str, v6: bool = False
) -> tuple[list[Endpoint], dict[str, int]]:
    """The usable endpoints of ``svc`` for ``svc_port`` seen from ``network``, and why others were
    skipped (reason -> count, reasons with zero left out)."""
    lb = svc.load_balancing
    allow_unhealthy = lb is not None and lb.health_policy == HealthPolicy.ALLOW_ALL
    usable: list[Endpoint] = []
    skipped = {"unhealthy": 0, "on another network": 0, "not serving the port": 0, "without an IP": 0}
    for wl, ports in state.endpoints(svc.key):
        target = target_port(svc_port, ports)
        addr = address_of(wl, v6)
        if not (wl.healthy or allow_unhealthy):
            skipped["unhealthy"] += 1
        elif wl.network != network:
            skipped["on another network"] += 1  # needs double HBONE via a network gateway
        elif target is None:
            skipped["not serving the port"] += 1
        elif addr is None:
            skipped["without an IP"] += 1  # hostname-only workloads need DNS
        else:
            usable.append(Endpoint(wl, addr, target))
    return usable, {reason: n for reason, n in skipped.items() if n}

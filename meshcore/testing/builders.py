"""Builders for models with sane defaults, so tests state only what matters to them."""

from __future__ import annotations

from meshcore.model import (
    Action,
    Authorization,
    Clause,
    Match,
    NetworkAddress,
    Port,
    Rule,
    Scope,
    Service,
    TunnelProtocol,
    Workload,
)

TRUST_DOMAIN = "cluster.local"


def workload(
    name: str,
    ip: str,
    *,
    namespace: str = "default",
    service_account: str | None = None,
    node: str = "node-1",
    hbone: bool = True,
    services: dict[str, tuple[Port, ...]] | None = None,
    **kw: object,
) -> Workload:
    """A pod workload ``<cluster>//Pod/<ns>/<name>`` at ``ip``; in the mesh (HBONE) unless ``hbone=False``."""
    return Workload(
        uid=f"Kubernetes//Pod/{namespace}/{name}",
        name=name,
        namespace=namespace,
        service_account=service_account or name,
        trust_domain=TRUST_DOMAIN,
        addresses=(ip,),
        tunnel_protocol=TunnelProtocol.HBONE if hbone else TunnelProtocol.NONE,
        node=node,
        workload_name=name,
        canonical_name=name,
        services=services or {},
        **kw,  # type: ignore[arg-type]
    )


def service(
    name: str,
    vip: str,
    ports: dict[int, int] | None = None,
    *,
    namespace: str = "default",
    **kw: object,
) -> Service:
    """A service ``name.namespace.svc.cluster.local`` at ``vip``; ``ports`` maps service port -> target port."""
    return Service(
        name=name,
        namespace=namespace,
        hostname=f"{name}.{namespace}.svc.cluster.local",
        addresses=(NetworkAddress(address=vip),),
        ports=tuple(Port(service_port=p, target_port=t) for p, t in (ports or {80: 8080}).items()),
        **kw,  # type: ignore[arg-type]
    )


def policy(
    name: str,
    *matches: Match,
    namespace: str = "default",
    action: Action = Action.ALLOW,
    scope: Scope = Scope.NAMESPACE,
) -> Authorization:
    """A policy with one rule of one clause holding ``matches`` (none given: a policy with no rules)."""
    rules = (Rule(clauses=(Clause(matches=matches),)),) if matches else ()
    return Authorization(name=name, namespace=namespace, action=action, scope=scope, rules=rules)

"""Readiness (15021 ``/healthz/ready``): ready once config is synced and every local workload is served.

``check_readiness`` is pure: given whether the configuration source has synced (xDS: every subscribed
type answered once; local file: loaded), the identities of local workloads and those whose certificates
are held, and the proxies not up yet, it returns a ``ReadinessReport`` listing everything pending.
The handler answers 200 ``ready`` or 503 ``not ready, pending: ...`` (ztunnel answers 500; 503 is what
a load balancer or kubelet expects for "not yet"), so an operator sees exactly what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from meshcore.aio.httpserver import Handler, Request, Response
from meshcore.identity import SpiffeId


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    ready: bool
    pending: tuple[str, ...]  # what is missing, one short phrase each

    def text(self) -> str:
        return "ready\n" if self.ready else f"not ready, pending: {'; '.join(self.pending)}\n"


def check_readiness(
    *,
    config_synced: bool,
    wanted_identities: Iterable[SpiffeId],
    held_identities: Iterable[SpiffeId],
    pending_proxies: Mapping[str, str],
) -> ReadinessReport:
    """Ready when config is synced, every wanted identity has a certificate and no proxy is pending."""
    pending: list[str] = []
    if not config_synced:
        pending.append("configuration not synced from the control plane yet")
    held = set(held_identities)
    missing = sorted(set(wanted_identities) - held)
    if missing:
        pending.append("certificates for " + ", ".join(str(i) for i in missing))
    for uid, why in sorted(pending_proxies.items()):
        pending.append(f"proxy for {uid} ({why})")
    return ReadinessReport(not pending, tuple(pending))


def readiness_handler(probe: Callable[[], ReadinessReport]) -> Handler:
    """``GET /healthz/ready``."""

    async def handle(_: Request) -> Response:
        report = probe()
        return Response.text(report.text(), 200 if report.ready else 503)

    return handle

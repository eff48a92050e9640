"""Small shared pieces of per-connection telemetry for inbound and outbound: baggage both ways, error text.

``workload_baggage`` is what ztunnel says about a workload in the ``baggage`` header (the source on
requests, the destination on 200 answers); ``workload_from_baggage`` turns a peer's baggage back into a
label-only ``Workload`` when the source address is not one we know. ``describe_error`` renders an
exception for the access log's ``error`` field once, the same way everywhere. Pure.
"""

from __future__ import annotations

from meshcore.hbone import WorkloadBaggage
from meshcore.model import Workload, WorkloadType

_TYPE_NAMES = {
    WorkloadType.DEPLOYMENT: "deployment",
    WorkloadType.CRONJOB: "cronjob",
    WorkloadType.POD: "pod",
    WorkloadType.JOB: "job",
}


def workload_baggage(w: Workload) -> str:
    """The ``baggage`` header value describing ``w`` (ztunnel's member order, empty values left out)."""
    return WorkloadBaggage(
        cluster=w.cluster_id,
        namespace=w.namespace,
        workload_type=_TYPE_NAMES.get(w.workload_type, ""),
        workload_name=w.workload_name or w.name,
        service_name=w.canonical_name,
        service_version=w.canonical_revision,
        region=w.locality.region if w.locality is not None else "",
        zone=w.locality.zone if w.locality is not None else "",
    ).to_header()


def workload_from_baggage(text: str | None) -> Workload | None:
    """A label-only workload from a peer's ``baggage`` (None when it names no namespace or workload).

    Used for metric labels only, never for authorization: baggage is whatever the peer chose to send.
    """
    if not text:
        return None
    b = WorkloadBaggage.parse(text)
    if not b.namespace or not (b.workload_name or b.service_name):
        return None
    return Workload(
        uid="",
        name=b.workload_name or b.service_name,
        namespace=b.namespace,
        workload_name=b.workload_name,
        canonical_name=b.service_name,
        canonical_revision=b.service_version,
        cluster_id=b.cluster,
    )


def describe_error(exc: BaseException) -> str:
    """``ExceptionType: message`` (just the type when there is no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

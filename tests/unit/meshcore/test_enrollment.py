"""The shared enrollment rule: pod label over namespace label, never host-network or sidecar pods."""

from __future__ import annotations

import pytest

from meshcore.enrollment import in_ambient_mesh

AMBIENT = {"istio.io/dataplane-mode": "ambient"}
OPT_OUT = {"istio.io/dataplane-mode": "none"}
SIDECAR = {"sidecar.istio.io/status": "{}"}


@pytest.mark.parametrize(
    ("pod_labels", "pod_annotations", "ns_labels", "host_network", "expected"),
    [
        ({}, {}, AMBIENT, False, True),
        (AMBIENT, {}, {}, False, True),
        (OPT_OUT, {}, AMBIENT, False, False),
        ({}, {}, {}, False, False),
        ({"istio.io/dataplane-mode": "sidecar"}, {}, AMBIENT, False, True),
        ({}, {}, {"istio.io/dataplane-mode": "none"}, False, False),
        (AMBIENT, SIDECAR, AMBIENT, False, False),
        (AMBIENT, {}, AMBIENT, True, False),
        ({}, {}, {"istio.io/dataplane-mode": "Ambient"}, False, False),
    ],
    ids=[
        "a pod in an ambient namespace is enrolled",
        "a pod labelled ambient is enrolled though its namespace is not",
        "a pod labelled none opts out of an ambient namespace",
        "a pod with no labels anywhere is not enrolled",
        "an unknown pod mode falls back to the namespace label",
        "a namespace labelled none enrols nobody",
        "a pod with a sidecar is never enrolled",
        "a host-network pod is never enrolled",
        "label values are case-sensitive as in Istio",
    ],
)
def test_enrollment_rule(
    pod_labels: dict[str, str],
    pod_annotations: dict[str, str],
    ns_labels: dict[str, str],
    host_network: bool,
    expected: bool,
) -> None:
    assert in_ambient_mesh(pod_labels, pod_annotations, ns_labels, host_network=host_network) is expected

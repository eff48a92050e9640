"""Workload certificates with a short TTL on the local cluster: every ztunnel keeps a valid certificate for
each identity it serves, renewing it before it expires, for as long as it runs.

Found by the chaos campaign (``bench/chaos.py``, rotation phase): with ``SECRET_TTL`` and the CA's
``MAX_WORKLOAD_CERT_TTL`` at 20 s, one identity was renewed twice in 50 s and another not at all. The CA
backdates ``notBefore`` by a minute (clock skew), the SecretManager plans the renewal at the half-life
counted from ``notBefore``, so a certificate shorter than two minutes is "due already" when it arrives; the
renewal is then put on the failure backoff (1, 2, 4 ... 150 s) although it succeeded, and the delay soon
outgrows the certificate's life. The certificate served then is expired: new TLS handshakes to that
identity fail, while pooled HBONE connections hide it from existing traffic.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ambientctl.cluster.mesh import MeshSettings
from ambientctl.cluster.testing import AMBIENT, MeshCluster, echo_pod, namespace, sleeper_pod, wait_for

TTL_S = 10
OBSERVE_S = 4 * TTL_S
SLACK = timedelta(seconds=1)  # expirationTime has whole seconds

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mc() -> Iterator[MeshCluster]:
    ttl = f"{TTL_S}s"
    settings = MeshSettings(
        extra_env={"SECRET_TTL": ttl, "MAX_WORKLOAD_CERT_TTL": ttl, "DEFAULT_WORKLOAD_CERT_TTL": ttl}
    )
    cluster = MeshCluster.create(settings=settings)
    try:
        cluster.apply(
            namespace("rotate", AMBIENT),
            echo_pod("server", "rotate", "node-2", {"app": "echo"}, sa="server"),
            sleeper_pod("client", "rotate", "node-1", sa="client"),
        )
        pods = [("server", "rotate"), ("client", "rotate")]
        cluster.wait_running(pods)
        cluster.wait_redirection(pods, "enabled")
        yield cluster
    finally:
        cluster.close()


def leaf_certificates(mc: MeshCluster, node: str) -> dict[str, tuple[str, datetime]]:
    """identity -> (serial, notAfter) of the leaf the node's ztunnel serves for it."""
    status, body = mc.mesh.ztunnel_get(node, "/config_dump")
    assert status == 200, body
    out = {}
    for cert in json.loads(body)["certificates"]:
        if cert["certChain"]:
            leaf = cert["certChain"][0]
            expiry = datetime.strptime(leaf["expirationTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            out[cert["identity"]] = (leaf["serialNumber"], expiry)
    return out


def test_a_short_lived_workload_certificate_is_always_renewed_before_it_expires(mc: MeshCluster) -> None:
    expected = {
        ("node-1", "spiffe://cluster.local/ns/rotate/sa/client"),
        ("node-2", "spiffe://cluster.local/ns/rotate/sa/server"),
    }

    def all_present() -> bool:
        return all(identity in leaf_certificates(mc, node) for node, identity in expected)

    wait_for("both identities' certificates issued", all_present, timeout=30)
    serials: dict[tuple[str, str], set[str]] = {key: set() for key in expected}
    expired: list[str] = []
    deadline = datetime.now(UTC) + timedelta(seconds=OBSERVE_S)
    samples = 0
    pace = threading.Event()  # never set
    while datetime.now(UTC) < deadline:
        for node, identity in expected:
            serial, not_after = leaf_certificates(mc, node)[identity]
            serials[(node, identity)].add(serial)
            now = datetime.now(UTC)
            if not_after + SLACK < now:
                expired.append(f"{node} {identity}: expired {now - not_after} ago (serial {serial})")
        samples += 1
        pace.wait(0.5)  # sampling interval, not a readiness wait
    assert samples > OBSERVE_S  # it looked the whole time
    assert expired == [], expired[:5]
    # Renewed at half-life: about OBSERVE_S / (TTL_S / 2) new certificates; at least 3 for each identity.
    assert all(len(s) >= 4 for s in serials.values()), {k[1]: len(v) for k, v in serials.items()}

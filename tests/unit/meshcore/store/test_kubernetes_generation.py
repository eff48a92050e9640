"""The Kubernetes store carries the API server's ``metadata.generation`` into ``Resource.generation`` (what
istiod_lite echoes as observedGeneration) and never sends it back: it is server-set."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from meshcore.store import ResourceRef, build_resource
from meshcore.store.kubernetes import KubernetesStore, to_manifest, to_resource
from meshcore.testing.kube_api import ThreadedKubeApi

POLICY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "p", "namespace": "demo"},
    "spec": {"action": "DENY", "rules": [{}]},
}


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        yield server


def test_generation_is_read_and_never_written() -> None:
    resource = to_resource({**POLICY, "metadata": {**POLICY["metadata"], "generation": 4}}, "AuthorizationPolicy")
    assert resource.generation == 4
    assert "generation" not in to_manifest(resource)["metadata"]


def test_a_spec_change_is_seen_as_the_next_generation(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    ref = ResourceRef("AuthorizationPolicy", "demo", "p")
    with KubernetesStore.connect(host=api.url, sync_timeout=10, write_timeout=10) as store:
        (created,) = store.apply([build_resource(POLICY)])
        first = created.resource.generation
        store.apply([build_resource({**POLICY, "spec": {"action": "ALLOW"}})])
        end = time.monotonic() + 10
        while (got := store.get(ref)) is None or got.spec.get("action") != "ALLOW":
            assert time.monotonic() < end, "the change never reached the store's cache"
            time.sleep(0.01)
        assert first >= 1 and got.generation == first + 1

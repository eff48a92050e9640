"""The CA root kept in a Secret on Kubernetes (``istiod_lite.ca.secret``), against the API stand-in:
created once as ``istio-ca-secret`` and read back by every replica, Istio's ``cacerts`` plug-in preferred
when present, a damaged Secret refused (never replaced), and only the verbs the manifests grant used."""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes_asyncio.client import Configuration

from istiod_lite.ca.errors import CaMaterialInvalid, CaStorageError
from istiod_lite.ca.secret import CA_SECRET, CONFIGMAP_VERBS, ROOT_CONFIGMAP, SECRET_VERBS, load_secret_root
from meshcore.store.kubernetes import load_configuration
from meshcore.testing.kube_api import ThreadedKubeApi
from meshcore.tls import certs

NOW = datetime.now(UTC)
NS = "istio-system"


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        server.call(server.server.put_object, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield server


def config(api: ThreadedKubeApi) -> Configuration:
    return load_configuration(host=api.url)


def load(api: ThreadedKubeApi) -> Any:
    return load_secret_root(config(api), namespace=NS, trust_domain="cluster.local", now=NOW)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put_secret(api: ThreadedKubeApi, name: str, data: dict[str, str]) -> None:
    api.call(api.server.put_object, {"apiVersion": "v1", "kind": "Secret",
                                     "metadata": {"name": name, "namespace": NS}, "data": data})


def creates(api: ThreadedKubeApi) -> int:
    return sum(1 for r in api.server.requests if r.resource == "secrets" and r.verb == "create")


def test_the_first_replica_creates_the_root_secret_and_the_next_reads_the_same_root(api: ThreadedKubeApi) -> None:
    first = load(api)
    stored = api.call(api.server.get_object, "Secret", NS, CA_SECRET)
    assert stored["type"] == "istio.io/ca-root"
    assert base64.b64decode(stored["data"]["ca-cert.pem"]).decode() == certs.cert_to_pem(first.cert)
    again = load(api)
    assert again.cert == first.cert and certs.key_to_pem(again.key) == certs.key_to_pem(first.key)
    assert creates(api) == 1
    assert {r.verb for r in api.server.requests if r.resource == "secrets"} == set(SECRET_VERBS)


def test_replicas_starting_at_once_end_up_with_one_root(api: ThreadedKubeApi) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        roots = list(pool.map(lambda _: load(api).cert, range(4)))
    assert len({certs.cert_to_pem(r) for r in roots}) == 1
    stored = api.call(api.server.get_object, "Secret", NS, CA_SECRET)
    assert base64.b64decode(stored["data"]["ca-cert.pem"]).decode() == certs.cert_to_pem(roots[0])


def test_the_cacerts_plug_in_secret_is_used_as_istio_reads_it(api: ThreadedKubeApi) -> None:
    root_key, int_key = certs.generate_key(), certs.generate_key()
    root = certs.build_ca_certificate(root_key, common_name="corp root", organization="corp",
                                      not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(days=365))
    intermediate = certs.build_ca_certificate(int_key, common_name="mesh intermediate", organization="corp",
                                              not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(days=30),
                                              issuer=(root, root_key))
    put_secret(api, "cacerts", {
        "ca-cert.pem": b64(certs.cert_to_pem(intermediate)), "ca-key.pem": b64(certs.key_to_pem(int_key)),
        "cert-chain.pem": b64(certs.cert_to_pem(intermediate) + certs.cert_to_pem(root)),
        "root-cert.pem": b64(certs.cert_to_pem(root)),
    })
    material = load(api)
    assert material.cert == intermediate and material.roots == (root,) and material.chain == ()
    assert "cacerts" in material.source
    assert api.call(api.server.get_object, "Secret", NS, CA_SECRET) is None  # no self-signed root made
    assert creates(api) == 0


def _root_pems() -> tuple[str, str]:
    key = certs.generate_key()
    cert = certs.build_ca_certificate(key, common_name="r", organization="cluster.local",
                                      not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(days=1))
    return certs.cert_to_pem(cert), certs.key_to_pem(key)


CERT, KEY = _root_pems()
OTHER_CERT, _ = _root_pems()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (CA_SECRET, {"ca-cert.pem": b64(CERT)}, "has no 'ca-key.pem'"),
        (CA_SECRET, {"ca-cert.pem": b64(CERT), "ca-key.pem": "%%%"}, "not base64"),
        (CA_SECRET, {"ca-cert.pem": b64(OTHER_CERT), "ca-key.pem": b64(KEY)}, "does not match"),
        (CA_SECRET, {"ca-cert.pem": b64("not a certificate"), "ca-key.pem": b64(KEY)}, "key ca-cert.pem"),
        ("cacerts", {"ca-key.pem": b64(KEY)}, "has no 'ca-cert.pem'"),
    ],
    ids=[
        "a root secret without its key is refused and not replaced",
        "a key that is not base64 is refused",
        "a key that does not belong to the certificate is refused",
        "a certificate that is not PEM is refused naming the secret's key",
        "a plug-in secret without its certificate is refused",
    ],
)
def test_a_damaged_secret_is_refused_with_what_to_do_and_never_replaced(
    api: ThreadedKubeApi, name: str, data: dict[str, str], message: str
) -> None:
    put_secret(api, name, data)
    with pytest.raises(CaMaterialInvalid, match=message) as refused:
        load(api)
    assert f"{NS}/{name}" in str(refused.value)
    assert creates(api) == 0
    assert api.call(api.server.get_object, "Secret", NS, name)["data"] == data


def test_a_forbidden_read_names_the_rbac_the_role_needs(api: ThreadedKubeApi) -> None:
    api.call(api.server.fail_next, 403, 1, "get")
    with pytest.raises(CaStorageError, match="needs get and create on secrets"):
        load(api)
    assert creates(api) == 0


def published(api: ThreadedKubeApi) -> str | None:
    stored = api.call(api.server.get_object, "ConfigMap", NS, ROOT_CONFIGMAP)
    return None if stored is None else str(stored["data"]["root-cert.pem"])


def configmap_writes(api: ThreadedKubeApi) -> list[str]:
    return [r.verb for r in api.server.requests if r.resource == "configmaps" and r.verb != "get"]


def test_the_root_is_published_in_istio_ca_root_cert_for_ztunnel(api: ThreadedKubeApi) -> None:
    material = load(api)
    assert published(api) == "".join(certs.cert_to_pem(c) for c in material.roots)
    load(api)  # a second replica: the same root, nothing written
    assert configmap_writes(api) == ["create"]
    assert {r.verb for r in api.server.requests if r.resource == "configmaps"} <= set(CONFIGMAP_VERBS)


def test_a_published_root_that_differs_is_replaced(api: ThreadedKubeApi) -> None:
    api.call(api.server.put_object, {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": ROOT_CONFIGMAP, "namespace": NS},
                                     "data": {"root-cert.pem": "an old root"}})
    material = load(api)
    assert published(api) == "".join(certs.cert_to_pem(c) for c in material.roots)
    assert configmap_writes(api) == ["update"]


def test_a_root_that_cannot_be_published_does_not_stop_the_ca(api: ThreadedKubeApi) -> None:
    load(api)  # the Secret exists now: the next start reads it, then the ConfigMap read fails
    api.call(api.server.put_object, {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": ROOT_CONFIGMAP, "namespace": NS},
                                     "data": {"root-cert.pem": "an old root"}})
    api.call(api.server.fail_next, 403, 1, "update")
    assert load(api).cert is not None
    assert published(api) == "an old root"

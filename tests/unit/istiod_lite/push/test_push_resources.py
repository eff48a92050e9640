"""PushServer.set_resources without a network: validation, content-hash versions, no-op detection."""

from __future__ import annotations

import hashlib

import pytest
from prometheus_client import CollectorRegistry

from istiod_lite.push import PushServer
from istiod_lite.push.errors import (
    EmptyResourceNameError,
    MessageTypeMismatchError,
    PushUsageError,
    UnservedTypeError,
)
from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, address_to_proto, resource_name
from meshcore.proto import authorization_pb2, workload_pb2
from meshcore.testing import builders


def address(name: str, ip: str) -> tuple[str, workload_pb2.Address]:
    model = builders.workload(name, ip)
    return resource_name(model), address_to_proto(model)


@pytest.fixture
def server() -> PushServer:
    return PushServer(CollectorRegistry())


def test_version_is_a_hash_of_the_deterministic_encoding(server: PushServer) -> None:
    name, message = address("a", "10.0.0.1")
    server.set_resources(ADDRESS_TYPE_URL, {name: message})
    expected = hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=8).hexdigest()
    assert server.resource_versions(ADDRESS_TYPE_URL) == {name: expected}


def test_versions_survive_a_restart(server: PushServer) -> None:
    name, message = address("a", "10.0.0.1")
    server.set_resources(ADDRESS_TYPE_URL, {name: message})
    restarted = PushServer(CollectorRegistry())
    restarted.set_resources(ADDRESS_TYPE_URL, {name: message})
    assert restarted.resource_versions(ADDRESS_TYPE_URL) == server.resource_versions(ADDRESS_TYPE_URL)


def test_changed_content_changes_the_version_and_removal_forgets_it(server: PushServer) -> None:
    name, before = address("a", "10.0.0.1")
    _, after = address("a", "10.0.0.2")
    server.set_resources(ADDRESS_TYPE_URL, {name: before})
    v1 = server.resource_versions(ADDRESS_TYPE_URL)[name]
    server.set_resources(ADDRESS_TYPE_URL, {name: after})
    assert server.resource_versions(ADDRESS_TYPE_URL)[name] != v1
    server.set_resources(ADDRESS_TYPE_URL, {}, removed=[name, "never-existed"])
    assert dict(server.resource_versions(ADDRESS_TYPE_URL)) == {}


@pytest.mark.parametrize(
    ("type_url", "changed", "error"),
    [
        ("type.googleapis.com/istio.workload.Workload", {"x": workload_pb2.Workload()}, UnservedTypeError),
        (ADDRESS_TYPE_URL, {"x": workload_pb2.Workload()}, MessageTypeMismatchError),
        (AUTHORIZATION_TYPE_URL, {"x": workload_pb2.Address()}, MessageTypeMismatchError),
        (ADDRESS_TYPE_URL, {"": workload_pb2.Address()}, EmptyResourceNameError),
    ],
    ids=[
        "a type the server does not serve is refused",
        "a bare Workload is not an Address",
        "an Address is not an Authorization",
        "a resource without a name is refused",
    ],
)
def test_caller_mistakes_raise(server: PushServer, type_url: str, changed: dict, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        server.set_resources(type_url, changed)
    assert isinstance(info.value, PushUsageError)


def test_a_bad_batch_stores_nothing(server: PushServer) -> None:
    name, good = address("a", "10.0.0.1")
    with pytest.raises(MessageTypeMismatchError):
        server.set_resources(ADDRESS_TYPE_URL, {name: good, "bad": authorization_pb2.Authorization()})
    assert dict(server.resource_versions(ADDRESS_TYPE_URL)) == {}

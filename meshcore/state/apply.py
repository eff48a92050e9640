"""apply_delta: turn one delta-xDS response (serialized resources + removed names) into a new ProxyState.

Each resource is decoded and validated on its own (``meshcore.model.convert``); a bad one becomes a
``Rejection(name, reason)`` and the value held under that name before (if any) stays, while every good
resource in the same delta applies. The resource name must equal the decoded content's own name (workload
uid, service ``ns/hostname``, policy ``ns/name``): a mismatch would file the value under the wrong key.
Order follows ztunnel: updates first, then removals; removing an unknown name is a no-op. When nothing
changes the input state object is returned unchanged, so the caller can skip publishing.
Pure: no I/O, no logging; the caller logs and NACKs the rejections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from google.protobuf.message import DecodeError

from meshcore.model import Authorization, Service, Workload
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ConversionError,
    address_from_proto,
    authorization_from_proto,
    resource_name,
)
from meshcore.proto import authorization_pb2, workload_pb2
from meshcore.state.errors import UnsupportedTypeUrl
from meshcore.state.snapshot import ProxyState

SUPPORTED_TYPE_URLS = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)


class Rejection(NamedTuple):
    """One resource that was not applied, and why (the text goes into the NACK's error_detail)."""

    name: str
    reason: str


def _decode(type_url: str, name: str, raw: bytes) -> Workload | Service | Authorization:
    """Decode and validate one resource; raises ValueError (ConversionError) or DecodeError."""
    model: Workload | Service | Authorization
    if type_url == ADDRESS_TYPE_URL:
        model = address_from_proto(workload_pb2.Address.FromString(raw))
    else:
        model = authorization_from_proto(authorization_pb2.Authorization.FromString(raw))
    actual = resource_name(model)
    if actual != name:
        raise ConversionError("name", f"resource name {name!r} does not match its content's name {actual!r}")
    return model


def apply_delta(
    state: ProxyState,
    type_url: str,
    updates: Mapping[str, bytes],
    removals: Iterable[str],
) -> tuple[ProxyState, list[Rejection]]:
    """Apply one delta of ``type_url`` resources; returns the new state and the rejected resources.

    Raises ``UnsupportedTypeUrl`` only for a type URL the state does not hold (a caller bug).
    """
    if type_url not in SUPPORTED_TYPE_URLS:
        raise UnsupportedTypeUrl(type_url, SUPPORTED_TYPE_URLS)
    good: list[Workload | Service | Authorization] = []
    rejections: list[Rejection] = []
    for name, raw in updates.items():
        try:
            good.append(_decode(type_url, name, raw))
        except DecodeError as e:
            rejections.append(Rejection(name, f"cannot decode protobuf: {e}"))
        except ValueError as e:  # ConversionError, and msgspec/enum validation inside the models
            rejections.append(Rejection(name, str(e)))
    removed = list(removals)
    if type_url == ADDRESS_TYPE_URL:
        new = state.updated(put=good, remove_addresses=removed)
    else:
        new = state.updated(put=good, remove_policies=removed)
    return new, rejections

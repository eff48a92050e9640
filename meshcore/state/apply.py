"""apply_delta: turn one delta-xDS response (serialized resources + removed names) into a new ProxyState.

Each resource is decoded and validated on its own (``meshcore.model.convert``); a bad one becomes a
``Rejection(name, reason)`` and the value held under that name before (if any) stays, while every good
resource in the same delta applies. The resource name must equal the decoded content's own name (workload
uid, service ``ns/hostname``, policy ``ns/name``): a mismatch would file the value under the wrong key.
Order follows ztunnel: updates first, then removals; removing an unknown name is a no-op. When nothing
changes the input state object is returned unchanged, so the caller can skip publishing.
``DeltaApplier`` does the same work in bounded steps, so an asyncio caller can yield between them while a
big push (10,000+ resources) is decoded; ``apply_delta`` runs it to the end at once.
Pure: no I/O, no logging; the caller logs and NACKs the rejections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import NamedTuple

from google.protobuf.message import DecodeError

from meshcore.model import Authorization, Service, Workload
from meshcore.model.convert import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ConversionError,
    DecodeCache,
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


def _decode(type_url: str, name: str, raw: bytes, cache: DecodeCache) -> Workload | Service | Authorization:
    """Decode and validate one resource; raises ValueError (ConversionError) or DecodeError."""
    model: Workload | Service | Authorization
    if type_url == ADDRESS_TYPE_URL:
        model = address_from_proto(workload_pb2.Address.FromString(raw), cache)
    else:
        model = authorization_from_proto(authorization_pb2.Authorization.FromString(raw))
    actual = resource_name(model)
    if actual != name:
        raise ConversionError("name", f"resource name {name!r} does not match its content's name {actual!r}")
    return model


class DeltaApplier:
    """One delta being applied: ``step(n)`` decodes and applies up to ``n`` more updates to a private draft;
    ``finish()`` applies the removals and returns ``(new_state, rejections)``, exactly as ``apply_delta``.

    ``state`` is not modified; the caller must not publish another state derived from it in between (the
    xDS client is the only writer, so it never does).
    """

    def __init__(
        self, state: ProxyState, type_url: str, updates: Mapping[str, bytes], removals: Iterable[str]
    ) -> None:
        if type_url not in SUPPORTED_TYPE_URLS:
            raise UnsupportedTypeUrl(type_url, SUPPORTED_TYPE_URLS)
        self._type_url = type_url
        self._editor = state.edit()
        self._cache = DecodeCache()
        self._pending = iter(updates.items())
        self._left = len(updates)
        self._removals = list(removals)
        self.rejections: list[Rejection] = []

    @property
    def remaining(self) -> int:
        """Updates not decoded yet."""
        return self._left

    def step(self, budget: int) -> bool:
        """Decode and apply up to ``budget`` more updates; True once none are left."""
        type_url, cache, editor, rejections = self._type_url, self._cache, self._editor, self.rejections
        for name, raw in islice(self._pending, max(budget, 1)):
            self._left -= 1
            try:
                editor.put(_decode(type_url, name, raw, cache))
            except DecodeError as e:
                rejections.append(Rejection(name, f"cannot decode protobuf: {e}"))
            except ValueError as e:  # ConversionError, and msgspec/enum validation inside the models
                rejections.append(Rejection(name, str(e)))
        return self._left == 0

    def finish(self) -> tuple[ProxyState, list[Rejection]]:
        """Apply what is left, then the removals; the new state (or the old one if nothing changed)."""
        while not self.step(1 << 30):
            pass
        remove = self._editor.remove_address if self._type_url == ADDRESS_TYPE_URL else self._editor.remove_policy
        for name in self._removals:
            remove(name)
        return self._editor.finish(), self.rejections


def apply_delta(
    state: ProxyState,
    type_url: str,
    updates: Mapping[str, bytes],
    removals: Iterable[str],
) -> tuple[ProxyState, list[Rejection]]:
    """Apply one delta of ``type_url`` resources; returns the new state and the rejected resources.

    Raises ``UnsupportedTypeUrl`` only for a type URL the state does not hold (a caller bug).
    """
    return DeltaApplier(state, type_url, updates, removals).finish()

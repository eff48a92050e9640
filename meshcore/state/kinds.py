"""The registry of resource kinds a delta-xDS client can apply, so one client serves any proxy.

A ``ResourceKind[S]`` says how responses of one type URL turn a snapshot of type ``S`` into the next one:
``start(state, updates, removals)`` returns an ``Applier`` that decodes in bounded steps (``step(n)``)
and ``finish()``es with ``(new_state, rejections)``, exactly as ``DeltaApplier`` does for ProxyState.
The client subscribes to the kinds it is given and publishes a typed snapshot of them:
- ztunnel: ``PROXY_STATE_KINDS`` (Address, Authorization) over ``ProxyState``;
- the waypoint: those two ``focus``ed into its own snapshot, plus a ``MapKind`` of its L7 policies.
``MapKind`` keeps an immutable ``Mapping[name, model]`` of a small kind (policies, routes): each resource
is decoded alone, a bad one is rejected and the value held before under that name stays; updates before
removals; the same mapping object is returned when nothing changed (callers skip publishing).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf.message import DecodeError

from meshcore.model.convert import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from meshcore.state.apply import DeltaApplier, Rejection
from meshcore.state.snapshot import ProxyState

S = TypeVar("S")
A = TypeVar("A")
M = TypeVar("M")
S_co = TypeVar("S_co", covariant=True)


class Applier(Protocol[S_co]):
    """One delta being applied in steps (see ``DeltaApplier``)."""

    rejections: list[Rejection]

    @property
    def remaining(self) -> int: ...

    def step(self, budget: int) -> bool: ...

    def finish(self) -> tuple[S_co, list[Rejection]]: ...


@dataclass(frozen=True, slots=True)
class ResourceKind(Generic[S]):
    """How responses of ``type_url`` apply to a snapshot of type ``S``."""

    type_url: str
    start: Callable[[S, Mapping[str, bytes], Iterable[str]], Applier[S]]


def _proxy_kind(type_url: str) -> ResourceKind[ProxyState]:
    return ResourceKind(type_url, lambda state, updates, removals: DeltaApplier(state, type_url, updates, removals))


PROXY_STATE_KINDS: tuple[ResourceKind[ProxyState], ...] = (
    _proxy_kind(ADDRESS_TYPE_URL),
    _proxy_kind(AUTHORIZATION_TYPE_URL),
)


class _Focused(Generic[S, A]):
    """An applier on a part ``A`` of a bigger snapshot ``S``."""

    def __init__(self, inner: Applier[A], state: S, put: Callable[[S, A], S], before: A) -> None:
        self._inner = inner
        self._state = state
        self._put = put
        self._before = before
        self.rejections = inner.rejections

    @property
    def remaining(self) -> int:
        return self._inner.remaining

    def step(self, budget: int) -> bool:
        return self._inner.step(budget)

    def finish(self) -> tuple[S, list[Rejection]]:
        part, rejections = self._inner.finish()
        if part is self._before:
            return self._state, rejections
        return self._put(self._state, part), rejections


def focus(kind: ResourceKind[A], get: Callable[[S], A], put: Callable[[S, A], S]) -> ResourceKind[S]:
    """``kind`` applied to the part of ``S`` that ``get`` reads and ``put`` replaces."""

    def start(state: S, updates: Mapping[str, bytes], removals: Iterable[str]) -> Applier[S]:
        before = get(state)
        return _Focused(kind.start(before, updates, removals), state, put, before)

    return ResourceKind(kind.type_url, start)


class _MapApplier(Generic[M]):
    def __init__(
        self,
        before: Mapping[str, M],
        updates: Mapping[str, bytes],
        removals: Iterable[str],
        decode: Callable[[bytes], M],
        name_of: Callable[[M], str],
    ) -> None:
        self._before = before
        self._draft: dict[str, M] | None = None
        self._pending = iter(updates.items())
        self._left = len(updates)
        self._removals = list(removals)
        self._decode = decode
        self._name_of = name_of
        self.rejections: list[Rejection] = []

    @property
    def remaining(self) -> int:
        return self._left

    def _edit(self) -> dict[str, M]:
        if self._draft is None:
            self._draft = dict(self._before)
        return self._draft

    def step(self, budget: int) -> bool:
        for name, raw in islice(self._pending, max(budget, 1)):
            self._left -= 1
            try:
                model = self._decode(raw)
                actual = self._name_of(model)
                if actual != name:
                    raise ValueError(f"resource name {name!r} does not match its content's name {actual!r}")
            except DecodeError as e:
                self.rejections.append(Rejection(name, f"cannot decode protobuf: {e}"))
                continue
            except ValueError as e:  # conversion errors and msgspec/enum validation
                self.rejections.append(Rejection(name, str(e)))
                continue
            if self._before.get(name) != model:
                self._edit()[name] = model
        return self._left == 0

    def finish(self) -> tuple[Mapping[str, M], list[Rejection]]:
        while not self.step(1 << 30):
            pass
        for name in self._removals:
            if name in (self._draft if self._draft is not None else self._before):
                self._edit().pop(name, None)
        if self._draft is None:
            return self._before, self.rejections
        return MappingProxyType(self._draft), self.rejections


EMPTY: Mapping[str, Any] = MappingProxyType({})


def map_kind(
    type_url: str, decode: Callable[[bytes], M], name_of: Callable[[M], str]
) -> ResourceKind[Mapping[str, M]]:
    """A kind kept as an immutable ``name -> model`` mapping; ``decode`` raises ValueError or DecodeError."""

    def start(state: Mapping[str, M], updates: Mapping[str, bytes], removals: Iterable[str]) -> Applier[Mapping[str, M]]:
        return _MapApplier(state, updates, removals, decode, name_of)

    return ResourceKind(type_url, start)

"""FrozenMap: an immutable mapping whose edits copy only the part they touch (ProxyState's indexes).

Layout: a list of ``2**k`` plain dicts ("shards"); a key lives in shard ``hash(key) & mask``. A FrozenMap
never changes after construction. ``MapEditor`` (``FrozenMap.edit()``) is the only way to derive a new one:
it copies the shard list on its first write and each shard on its first write to it, and ``finish()``
returns a FrozenMap that shares every untouched shard with the base. So a one-key change of a 10,000-key
map copies a 512-pointer list and one ~20-key dict instead of 10,000 entries. The shard count grows eight-
fold when shards average more than 64 keys (one O(n) rehash, amortised over the growth), so the cost of a
small edit stays around O(sqrt n); it never shrinks.
Invariants: a shard dict reachable from a FrozenMap is never mutated again; an editor mutates only shards
it created itself since its last ``finish()``. Iteration order is by shard, then insertion order within a
shard: deterministic for a given history, but not the global insertion order of a dict.
Pure data structure: no I/O, no clocks, no logging.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from typing import Any, Generic, TypeVar, overload

_K = TypeVar("_K")
_V = TypeVar("_V")
_D = TypeVar("_D")

# Grow the shard count by this factor once shards average more than _MAX_AVERAGE keys.
_GROWTH = 8
_MAX_AVERAGE = 64

_MISSING: Any = object()


class FrozenMap(Mapping[_K, _V]):
    """An immutable mapping; derive changed copies with ``edit()`` (see the module docstring)."""

    __slots__ = ("_len", "_mask", "_shards")

    _shards: list[dict[_K, _V]]
    _mask: int
    _len: int

    def __init__(self, source: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = ()) -> None:
        self._shards, self._mask, self._len = _split(dict(source))

    @classmethod
    def adopt(cls, items: dict[_K, _V]) -> FrozenMap[_K, _V]:
        """A map of ``items``, which the caller hands over and must never mutate again (a small dict becomes
        the only shard as is; a big one is split into new shards)."""
        return cls._of(*_split(items))

    @classmethod
    def _of(cls, shards: list[dict[_K, _V]], mask: int, length: int) -> FrozenMap[_K, _V]:
        self: FrozenMap[_K, _V] = object.__new__(cls)
        self._shards, self._mask, self._len = shards, mask, length
        return self

    def edit(self) -> MapEditor[_K, _V]:
        """An editor starting from this map; this map itself never changes."""
        return MapEditor(self)

    # -------------------------------------------------------------------------------------- Mapping

    def __getitem__(self, key: _K) -> _V:
        return self._shards[hash(key) & self._mask][key]

    @overload
    def get(self, key: _K, /) -> _V | None: ...
    @overload
    def get(self, key: _K, default: _V | _D, /) -> _V | _D: ...
    def get(self, key: _K, default: Any = None, /) -> Any:
        return self._shards[hash(key) & self._mask].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & self._mask]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[_K]:
        for shard in self._shards:
            yield from shard

    def items(self) -> ItemsView[_K, _V]:
        return _Items(self)

    def values(self) -> ValuesView[_V]:
        return _Values(self)

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self.items())!r})"

    # Mapping's __eq__ (compare as dicts) applies; being mutable-free does not make it hashable.
    __hash__ = None  # type: ignore[assignment]


def _split(items: dict[_K, _V]) -> tuple[list[dict[_K, _V]], int, int]:
    """Shards for ``items`` (the count incremental growth would reach), their mask, and the length."""
    count = 1
    while len(items) > _MAX_AVERAGE * count:
        count *= _GROWTH
    if count == 1:
        return [items], 0, len(items)
    mask = count - 1
    shards: list[dict[_K, _V]] = [{} for _ in range(count)]
    for key, value in items.items():
        shards[hash(key) & mask][key] = value
    return shards, mask, len(items)


class _Items(ItemsView[_K, _V]):
    _mapping: FrozenMap[_K, _V]

    def __iter__(self) -> Iterator[tuple[_K, _V]]:
        for shard in self._mapping._shards:
            yield from shard.items()


class _Values(ValuesView[_V]):
    _mapping: FrozenMap[Any, _V]

    def __iter__(self) -> Iterator[_V]:
        for shard in self._mapping._shards:
            yield from shard.values()


class MapEditor(Generic[_K, _V]):
    """A private, mutable draft of a FrozenMap; ``finish()`` freezes the current contents into a new one.

    After ``finish()`` the editor may be used again: its next writes copy afresh, so maps already
    returned never change.
    """

    __slots__ = ("_len", "_list_owned", "_mask", "_owned", "_shards")

    def __init__(self, base: FrozenMap[_K, _V] | None) -> None:
        if base is None:
            self._shards: list[dict[_K, _V]] = [{}]
            self._mask = 0
            self._len = 0
            self._list_owned = True
            self._owned: set[int] = {0}
        else:
            self._shards, self._mask, self._len = base._shards, base._mask, base._len
            self._list_owned = False
            self._owned = set()

    def _own(self, i: int) -> dict[_K, _V]:
        """Shard ``i``, copied first (it may be shared with a frozen map); the caller checked ``_owned``."""
        if not self._list_owned:
            self._shards = list(self._shards)
            self._list_owned = True
        shard = self._shards[i] = dict(self._shards[i])
        self._owned.add(i)
        return shard

    def _grow(self) -> None:
        count = len(self._shards) * _GROWTH
        mask = count - 1
        shards: list[dict[_K, _V]] = [{} for _ in range(count)]
        for old in self._shards:
            for key, value in old.items():
                shards[hash(key) & mask][key] = value
        self._shards, self._mask = shards, mask
        self._list_owned = True
        self._owned = set(range(count))

    # ------------------------------------------------------------------------------------------ reads

    def __getitem__(self, key: _K) -> _V:
        return self._shards[hash(key) & self._mask][key]

    def get(self, key: _K, default: _V | None = None) -> _V | None:
        return self._shards[hash(key) & self._mask].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & self._mask]

    def __len__(self) -> int:
        return self._len

    # ----------------------------------------------------------------------------------------- writes

    def __setitem__(self, key: _K, value: _V) -> None:
        i = hash(key) & self._mask
        shard = self._shards[i] if i in self._owned else self._own(i)
        size = len(shard)
        shard[key] = value
        if len(shard) != size:
            self._len += 1
            if self._len > _MAX_AVERAGE * len(self._shards):
                self._grow()

    def __delitem__(self, key: _K) -> None:
        i = hash(key) & self._mask
        if key not in self._shards[i]:
            raise KeyError(key)
        del (self._shards[i] if i in self._owned else self._own(i))[key]
        self._len -= 1

    def pop(self, key: _K, default: _V | None = None) -> _V | None:
        """Remove ``key`` and return its value, or ``default`` (copying nothing) when it is absent."""
        i = hash(key) & self._mask
        value = self._shards[i].get(key, _MISSING)
        if value is _MISSING:
            return default
        del (self._shards[i] if i in self._owned else self._own(i))[key]
        self._len -= 1
        return value  # type: ignore[no-any-return]

    def finish(self) -> FrozenMap[_K, _V]:
        """Freeze the current contents. Later writes through this editor copy again."""
        self._list_owned = False
        self._owned = set()
        return FrozenMap._of(self._shards, self._mask, self._len)


__all__ = ["FrozenMap", "MapEditor"]

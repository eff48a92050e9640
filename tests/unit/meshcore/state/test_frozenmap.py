"""FrozenMap / MapEditor: behaves like a dict rebuilt from scratch, and no map ever changes once made."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.state.frozenmap import FrozenMap, MapEditor

# Few distinct keys so edits collide, many so the shard count grows (64 per shard, x8) within one example.
_keys = st.one_of(
    st.integers(0, 40), st.integers(0, 3000).map(lambda i: f"k{i}"), st.tuples(st.just("n"), st.text(max_size=2))
)
_edit = st.one_of(
    st.tuples(st.just("set"), _keys, st.integers()),
    st.tuples(st.just("del"), _keys, st.none()),
    st.tuples(st.just("pop"), _keys, st.none()),
    st.tuples(st.just("bulk"), st.integers(0, 600), st.none()),  # many fresh keys at once: forces growth
)


def _apply(editor: MapEditor[object, object], model: dict[object, object], op: str, key: object) -> None:
    if op == "set":
        editor[key] = model[key] = ("v", key)
    elif op == "del":
        if key in model:
            del editor[key], model[key]
        else:
            with pytest.raises(KeyError):
                del editor[key]
    elif op == "pop":
        assert editor.pop(key) == model.pop(key, None)
    else:
        for i in range(int(key)):  # type: ignore[call-overload]
            editor[("bulk", i)] = model[("bulk", i)] = i


@settings(deadline=None, max_examples=60)
@given(batches=st.lists(st.lists(_edit, max_size=12), min_size=1, max_size=5))
def test_every_map_equals_a_dict_of_the_same_edits_and_never_changes(
    batches: list[list[tuple[str, object, object]]],
) -> None:
    current: FrozenMap[object, object] = FrozenMap()
    model: dict[object, object] = {}
    history: list[tuple[FrozenMap[object, object], dict[object, object]]] = [(current, {})]
    for batch in batches:
        editor = current.edit()
        for op, key, _ in batch:
            _apply(editor, model, op, key)
            assert len(editor) == len(model)
        current = editor.finish()
        history.append((current, dict(model)))
    for snapshot, expected in history:
        assert dict(snapshot) == expected and len(snapshot) == len(expected)
        assert dict(snapshot.items()) == expected and sorted(map(repr, snapshot.values())) == sorted(
            map(repr, expected.values())
        )
        for key in list(expected)[:50]:
            assert key in snapshot and snapshot[key] == expected[key] and snapshot.get(key) == expected[key]
        assert snapshot.get("absent") is None and "absent" not in snapshot


def test_an_editor_used_after_finish_copies_again() -> None:
    editor: MapEditor[str, int] = FrozenMap({"a": 1}).edit()
    editor["b"] = 2
    first = editor.finish()
    editor["b"] = 3
    del editor["a"]
    second = editor.finish()
    assert dict(first) == {"a": 1, "b": 2} and dict(second) == {"b": 3}


def test_a_frozen_map_cannot_be_assigned_to() -> None:
    m = FrozenMap({"a": 1})
    with pytest.raises(TypeError):
        m["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        hash(m)


def test_a_frozen_map_equals_a_dict_with_the_same_items() -> None:
    assert FrozenMap({"a": 1, "b": 2}) == {"b": 2, "a": 1}
    assert FrozenMap({"a": 1}) != {"a": 2}


def test_one_edit_of_a_large_map_shares_almost_everything() -> None:
    base = FrozenMap((f"k{i}", i) for i in range(20_000))
    editor = base.edit()
    editor["k7"] = -7
    new = editor.finish()
    shared = sum(a is b for a, b in zip(base._shards, new._shards, strict=True))
    assert shared == len(base._shards) - 1, "only the edited shard is copied"
    assert base["k7"] == 7 and new["k7"] == -7


def test_growing_the_shard_count_leaves_earlier_maps_intact() -> None:
    maps = [FrozenMap[int, int]()]
    for step in range(6):  # up to 6,000 keys: 1 -> 8 -> 64 -> 512 shards (64 keys per shard on average)
        editor = maps[-1].edit()
        for i in range(step * 1000, (step + 1) * 1000):
            editor[i] = i * i
        del editor[step]
        maps.append(editor.finish())
    assert [len(m._shards) for m in maps] == [1, 64, 64, 64, 64, 512, 512]
    for n, m in enumerate(maps):  # map n holds 0 .. n*1000-1 except the n keys deleted so far
        assert dict(m) == {i: i * i for i in range(n, n * 1000)}

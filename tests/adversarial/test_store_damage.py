"""A damaged store file: every way of noticing it (opening, reading objects, decoding a row) raises
``StoreDamaged`` naming the file and the way out, and nothing touches the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from meshcore.store import NotAStore, SqliteStore, StoreDamaged, build_resource

RECOVERY = "restore it from a backup, or move it aside to start with an empty store"
PAGE = 4096


def populated(path: Path, pods: int = 300) -> None:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "demo", "labels": {"app": "x" * 50}},
            "spec": {"nodeName": "node-1"},
        }
        for i in range(pods)
    ]
    with SqliteStore(path) as store:
        store.apply([build_resource(d) for d in docs])


def garbage_file(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not a database\n" * 400)


def truncated_header(path: Path) -> None:
    populated(path)
    with path.open("r+b") as f:
        f.write(b"\xff" * 100)  # the 100-byte SQLite header, as a bad copy or a disk error leaves it


def garbled_pages(path: Path) -> None:
    populated(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(PAGE)  # every page after the first (which holds the schema)
        f.write(b"\xa5" * (size - PAGE))


def undecodable_row(path: Path) -> None:
    populated(path, pods=1)
    raw = sqlite3.connect(path)
    raw.execute("UPDATE objects SET body = ?", (b'{"kind": 42}',))
    raw.commit()
    raw.close()


@pytest.mark.parametrize(
    "damage",
    [garbage_file, truncated_header, garbled_pages, undecodable_row],
    ids=[
        "a file of garbage is called damaged or not a store",
        "an overwritten header is called damaged",
        "garbled pages are called damaged when the objects are read",
        "a row that does not decode is called damaged",
    ],
)
def test_a_damaged_store_is_reported_with_its_path_and_the_way_out(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = tmp_path / "store.db"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StoreDamaged) as info:
        with SqliteStore(path) as store:
            store.snapshot()
    message = str(info.value)
    assert str(path) in message and RECOVERY in message
    assert "\n" not in message
    assert isinstance(info.value, NotAStore), "callers that catch NotAStore still catch it"
    assert path.read_bytes() == before, "a damaged store is never modified"

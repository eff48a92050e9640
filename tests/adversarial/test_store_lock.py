"""Another process holding the store's lock: the error says "locked", names that process, and says what
to do; it never calls the store "not an ambient-mesh store" or sends the operator to another state dir."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcore.store import Resource, ResourceRef, SqliteStore, StoreLocked, build_resource

MARKER = "store-lock-holder-for-test"

# Runs in the holder process: take the lock, say so, hold it until stdin closes.
HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive":
    # What a backup or migration tool does: every lock it takes is kept until it closes.
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    db.execute("BEGIN EXCLUSIVE")
    db.execute("COMMIT")
else:
    db.execute("BEGIN IMMEDIATE")  # the write lock, as a writer stuck mid-transaction holds it
print("held", flush=True)
sys.stdin.read()
"""


def namespace(name: str) -> Resource:
    return build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def read_line(proc: subprocess.Popen[str], within: float) -> str:
    """One line of ``proc``'s stdout, failing the test if none arrives within ``within`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=deadline - time.monotonic()):
                return proc.stdout.readline()
    pytest.fail(f"no line from pid {proc.pid} within {within}s")


def hold_lock(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    # A script file named MARKER, so the holder's command line names it within the first few words.
    script = path.with_name(f"{MARKER}.py")
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(proc, 30) == "held\n"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    with SqliteStore(path) as store:
        store.apply([namespace("kept")])
    return path


@pytest.fixture
def exclusive_holder(db_path: Path) -> Iterator[subprocess.Popen[str]]:
    yield from hold_lock(db_path, "exclusive")


@pytest.fixture
def write_lock_holder(db_path: Path) -> Iterator[subprocess.Popen[str]]:
    yield from hold_lock(db_path, "write")


def test_opening_a_store_another_process_holds_exclusively_names_that_process(
    db_path: Path, exclusive_holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(StoreLocked) as info:
        SqliteStore(db_path, busy_timeout=0.2)
    message = str(info.value)
    assert f"store {db_path} is locked by pid {exclusive_holder.pid} (" in message
    assert MARKER in message, "the holder's command line is shown"
    assert "stop that process or let it finish, then retry" in message
    assert "not an ambient-mesh store" not in message and "--state-dir" not in message
    assert info.value.holders and info.value.holders[0].startswith(f"pid {exclusive_holder.pid} ")


def test_a_write_blocked_by_another_process_names_it_and_reads_still_work(
    db_path: Path, tmp_path: Path
) -> None:
    with SqliteStore(db_path, busy_timeout=0.2) as store:
        holder = hold_lock(db_path, "write")
        proc = next(holder)
        try:
            with pytest.raises(StoreLocked, match=f"is locked by pid {proc.pid} \\("):
                store.apply([namespace("blocked")])
            assert [r.name for r in store.list()] == ["kept"]
        finally:
            holder.close()
        # Once the holder is gone, the same store writes again; nothing was lost or half-written.
        store.apply([namespace("after")])
        assert [r.name for r in store.list()] == ["after", "kept"]
        assert store.get(ResourceRef("Namespace", "", "blocked")) is None


def test_the_lock_error_does_not_name_this_process(db_path: Path, exclusive_holder: subprocess.Popen[str]) -> None:
    with pytest.raises(StoreLocked) as info:
        SqliteStore(db_path, busy_timeout=0.2)
    assert f"pid {os.getpid()} " not in str(info.value) and f"pid {os.getpid()}," not in str(info.value)

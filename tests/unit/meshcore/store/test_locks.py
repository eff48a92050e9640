"""Reading /proc/locks: which processes hold locks on the store's files (pure parsing, table-tested)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshcore.store.locks import LockHolder, find_lock_holders, parse_proc_locks

STORE = (0xFE, 0x00, 2147318)
SHM = (0xFE, 0x00, 2147320)


@pytest.mark.parametrize(
    ("text", "pids"),
    [
        ("1: POSIX  ADVISORY  WRITE 5514 fe:00:2147318 1073741824 1073741824\n", [5514]),
        (
            "1: POSIX  ADVISORY  WRITE 5514 fe:00:2147318 1073741826 1073742335\n"
            "2: POSIX  ADVISORY  WRITE 5514 fe:00:2147318 1073741824 1073741824\n",
            [5514],
        ),
        ("1: POSIX  ADVISORY  READ 77 fe:00:2147320 123 123\n2: POSIX  ADVISORY  WRITE 78 fe:00:2147320 120 120\n", [77, 78]),
        ("1: POSIX  ADVISORY  WRITE 5514 fe:00:999 0 EOF\n", []),
        ("1: POSIX  ADVISORY  WRITE 5514 fe:01:2147318 0 EOF\n", []),
        ("1: OFDLCK ADVISORY  WRITE -1 fe:00:2147318 0 EOF\n", []),
        ("1: POSIX  ADVISORY  WRITE 5514 fe:00:2147318 0 EOF\n1: -> POSIX  ADVISORY  WRITE 6000 fe:00:2147318 0 EOF\n", [5514]),
        ("garbage\n1: POSIX ADVISORY WRITE notapid fe:00:2147318 0 EOF\n\n", []),
    ],
    ids=[
        "a write lock on the database names its pid",
        "a process with several locks is named once",
        "readers and the writer of the shm file are all named in order",
        "locks on other inodes are ignored",
        "the same inode on another device is ignored",
        "open file description locks have no pid and are skipped",
        "a process waiting for the lock is not a holder",
        "unparseable lines are skipped",
    ],
)
def test_parse_proc_locks(text: str, pids: list[int]) -> None:
    assert parse_proc_locks(text, {STORE, SHM}) == pids


def test_holders_are_named_by_pid_and_one_line_command_except_the_excluded_pid(tmp_path: Path) -> None:
    target = tmp_path / "store.db"
    target.write_bytes(b"")
    st = os.stat(target)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    proc = tmp_path / "proc"
    holders_cmdlines = (
        (41, b"sqlite3\0/var/lib/ambient-mesh/store.db\0"),
        (42, None),
        (43, b"me\0"),
        (44, b"python3\0-c\0import sqlite3\n  hold()\n\0"),
    )
    for pid, cmdline in holders_cmdlines:
        (proc / str(pid)).mkdir(parents=True)
        if cmdline is not None:
            (proc / str(pid) / "cmdline").write_bytes(cmdline)
    (proc / "locks").write_text(
        "".join(f"{i}: POSIX  ADVISORY  WRITE {pid} {dev} 0 EOF\n" for i, pid in enumerate((41, 42, 43, 44), 1))
    )
    holders = find_lock_holders([target, tmp_path / "missing-wal"], exclude_pid=43, proc=proc)
    assert [str(h) for h in holders] == [
        "pid 41 (sqlite3 /var/lib/ambient-mesh/store.db)",
        "pid 42",
        "pid 44 (python3 -c import sqlite3 hold())",  # one line, whatever the command line holds
    ]
    assert holders[1] == LockHolder(42, "")


def test_no_holders_when_proc_locks_is_unreadable_or_the_files_are_missing(tmp_path: Path) -> None:
    target = tmp_path / "store.db"
    target.write_bytes(b"")
    assert find_lock_holders([target], proc=tmp_path / "no-proc") == []
    assert find_lock_holders([tmp_path / "missing"]) == []

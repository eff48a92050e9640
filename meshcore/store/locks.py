"""Who holds a lock on the store: the processes ``/proc/locks`` lists for its files, with command lines.

SQLite locks with POSIX byte-range locks (``fcntl``) on the database file and, in WAL mode, on its
``-shm`` file; the kernel lists every lock in ``/proc/locks`` as ``pid major:minor:inode start end``.
When the store stays locked past the busy timeout, the error names those processes, so an operator
knows what to stop instead of guessing (or moving to another state directory).

Best effort, never raising: OFD locks show pid -1 and are skipped, as are lock waiters (``->``);
a process in another PID namespace or on another host (a network filesystem) is not listed, and a
process whose ``/proc/<pid>/cmdline`` is unreadable is shown by pid alone. Parsing is pure
(``parse_proc_locks``); ``find_lock_holders`` reads ``/proc``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

# /proc/<pid>/cmdline can be long (a JVM's); a message needs the start of it.
MAX_COMMAND_CHARS = 200

FileId = tuple[int, int, int]  # (device major, device minor, inode), as /proc/locks prints them


@dataclass(frozen=True, slots=True)
class LockHolder:
    """A process holding a lock on one of the files asked about."""

    pid: int
    command: str  # its command line, spaces between arguments; "" when unreadable

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def parse_proc_locks(text: str, files: Collection[FileId]) -> list[int]:
    """Pids that hold (not wait for) a lock on any of ``files``, in the order listed, each once."""
    pids: list[int] = []
    for line in text.splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 5514 fe:00:2147318 1073741824 1073741824"; waiters have "->" second.
        if len(fields) < 8 or fields[1] == "->":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            file_id = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if pid > 0 and file_id in files and pid not in pids:
            pids.append(pid)
    return pids


def find_lock_holders(
    paths: Iterable[Path], *, exclude_pid: int | None = None, proc: Path = Path("/proc")
) -> list[LockHolder]:
    """The processes holding locks on any of ``paths`` (missing paths ignored), except ``exclude_pid``."""
    files: set[FileId] = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    if not files:
        return []
    try:
        text = (proc / "locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    return [
        LockHolder(pid, _command(proc, pid)) for pid in parse_proc_locks(text, files) if pid != exclude_pid
    ]


def _command(proc: Path, pid: int) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    # Whitespace collapsed: a `python -c` script's newlines must not break a one-line error message.
    command = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return command if len(command) <= MAX_COMMAND_CHARS else command[: MAX_COMMAND_CHARS - 3] + "..."

"""The embedded store's file format, and a read-only look at a few objects in it for short-lived readers.

``SqliteStore`` (``sqlite.py``) owns the store: it creates, migrates, writes and watches it, and takes
its SQL and the file's marks (``APPLICATION_ID``, ``SCHEMA_VERSION``) from here, so the two readers
cannot drift apart. ``read_objects`` is for a process that starts, reads one or two objects and exits
(the CNI plugin, once per pod): it imports only ``sqlite3`` and ``msgspec``, opens the file read-only
(never creates, initialises or changes it; a missing file is ``StoreUnavailable``), checks the file's
marks as the store does (another file is ``NotAStore``, a newer schema ``StoreSchemaTooNew``, an
uninitialised one ``StoreUnavailable``), and reads every object in one read transaction (one consistent
snapshot). Failures are the store's own error classes, so callers can fail closed on ``StoreError``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from urllib.parse import quote

import msgspec

from .errors import NotAStore, StoreDamaged, StoreError, StoreLocked, StoreSchemaTooNew, StoreUnavailable
from .resource import Resource, ResourceRef

# "AMSH": marks a SQLite file as an ambient-mesh store.
APPLICATION_ID = 0x414D5348
SCHEMA_VERSION = 1
DEFAULT_BUSY_TIMEOUT = 5.0
# SQLite's primary result codes (the low byte of an extended code) that say what went wrong.
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CORRUPT, SQLITE_NOTADB = 5, 6, 11, 26
RECOVER_HINT = "restore it from a backup, or move it aside to start with an empty store"

SELECT_OBJECT = "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?"

_decoder = msgspec.json.Decoder(Resource)


def object_key(ref: ResourceRef) -> tuple[str, str, str]:
    """The primary key of ``ref``'s row in ``objects`` (the parameters of ``SELECT_OBJECT``)."""
    return (ref.kind, ref.namespace, ref.name)


def read_header(db: sqlite3.Connection) -> tuple[int, int]:
    """The file's (application_id, user_version): (0, 0) for a database nothing has initialised."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    return int(app_id), int(version)


def read_objects(
    path: str | os.PathLike[str], refs: Sequence[ResourceRef], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> list[Resource | None]:
    """The stored object for each of ``refs`` (None where there is none), from one snapshot of the store
    at ``path``; raises a ``StoreError`` saying why the store cannot be read (see the module doc)."""
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise StoreUnavailable(f"store {where} does not exist (nothing is created by a read)")
    try:
        db = sqlite3.connect(
            f"file:{quote(where)}?mode=ro", uri=True, timeout=busy_timeout, isolation_level=None
        )
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open store {where}: {e}") from None
    try:
        app_id, version = read_header(db)
        if (app_id, version) == (0, 0):
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise NotAStore(f"{where} is an SQLite database of another application")
            raise StoreUnavailable(
                f"store {where} is not initialised yet (no ambient-mesh process has opened it)"
            )
        if app_id != APPLICATION_ID:
            raise NotAStore(
                f"{where} is an SQLite database of another application (application_id {app_id:#x})"
            )
        if version > SCHEMA_VERSION:
            raise StoreSchemaTooNew(
                f"{where} has store schema v{version}, newer than this version reads (v{SCHEMA_VERSION})"
            )
        db.execute("BEGIN")  # one read transaction: every object from the same snapshot
        try:
            rows = [db.execute(SELECT_OBJECT, object_key(ref)).fetchone() for ref in refs]
        finally:
            db.execute("COMMIT")
        return [None if row is None else _decoder.decode(row[0]) for row in rows]
    except sqlite3.Error as e:
        raise read_failure(where, e, busy_timeout) from None
    except msgspec.DecodeError as e:
        raise StoreDamaged(
            f"{where}: a stored object cannot be read ({e}); the store is damaged: {RECOVER_HINT}"
        ) from None
    finally:
        db.close()


def read_failure(where: str, e: sqlite3.Error, busy_timeout: float) -> StoreError:
    """The store error for an SQLite error met while reading (no lock holders named: see ``locks``)."""
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    if code in (SQLITE_BUSY, SQLITE_LOCKED) or "database is locked" in str(e):
        return StoreLocked(f"store {where} stayed locked for more than {busy_timeout:g}s ({e}); retry")
    if code == SQLITE_NOTADB:
        return StoreDamaged(
            f"{where} is not an ambient-mesh store or is damaged (SQLite: {e}); {RECOVER_HINT}"
        )
    if code == SQLITE_CORRUPT:
        return StoreDamaged(f"{where} is damaged (SQLite: {e}); {RECOVER_HINT}")
    return StoreUnavailable(f"store {where}: {e}")

"""The embedded store: one SQLite file (WAL), shared by ambientctl, istiod_lite and the local cluster.

Invariants: every write appends one ``changes`` row and updates ``objects`` in the same transaction;
an object's resource_version is its change's revision; revisions commit in increasing order, so the
watch is a plain ``WHERE revision > ?`` poll. Server-set metadata as the API server keeps it: uid,
generation, and ``creationTimestamp`` (set from ``wall_clock`` on create, kept by every later write, a
writer's value ignored). The file is created 0600 and marked as ours
(``application_id``, schema in ``user_version``); any other file or a newer schema is refused
(``NotAStore``/``StoreSchemaTooNew``) and never modified; a file SQLite finds damaged is
``StoreDamaged``, a lock held past the busy timeout ``StoreLocked`` (naming the holder when
``/proc/locks`` shows it). Resources are validated by ``schema`` before ``apply``; here only their kind
and the size limits of ``limits.py`` are checked, on every write path.
"""

# Theory of operation:
# - Writers take the database write lock up front (BEGIN IMMEDIATE), so writers in any process are
#   serialised and revision N+1 never commits before N: a reader that has seen N has seen all below N.
# - WAL: readers never wait for the writer and see one consistent snapshot per statement (or per read
#   transaction, as `snapshot` uses); busy_timeout bounds the wait for the write lock.
# - The watch polls on the event-loop thread with its own connection, without asyncio.to_thread: an
#   idle poll is one primary-key range query on a local file (microseconds), and its own connection
#   never queues behind this process's writers on `_lock`.
# - The change log is not compacted yet (one row per write). A compaction would record the oldest
#   revision kept and make older `changes_since` raise, so watchers re-list.

from __future__ import annotations

import asyncio
import builtins
import os
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from .base import ApplyAction, ApplyResult, EventType, Store, WatchEvent
from .errors import (
    NotAStore,
    ResourceNotFound,
    ResourceTooLarge,
    StoreDamaged,
    StoreError,
    StoreLocked,
    StoreSchemaTooNew,
    StoreUnavailable,
    UnknownKind,
)
from .limits import (
    ANNOTATIONS_HINT,
    MAX_ANNOTATIONS_BYTES,
    MAX_OBJECT_BYTES,
    OBJECT_HINT,
    annotations_over_limit,
)
from .locks import find_lock_holders
from .resource import KINDS, Resource, ResourceRef

# The file's marks, SQLite's result codes and the object lookup, shared with the light reader.
from .sqlite_read import (
    APPLICATION_ID,
    DEFAULT_BUSY_TIMEOUT,
    RECOVER_HINT,
    SCHEMA_VERSION,
    SELECT_OBJECT,
    SQLITE_BUSY,
    SQLITE_CORRUPT,
    SQLITE_LOCKED,
    SQLITE_NOTADB,
    object_key,
    read_header,
)

_SCHEMA = (
    """CREATE TABLE objects (
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        resource_version INTEGER NOT NULL, uid TEXT NOT NULL, body BLOB NOT NULL,
        PRIMARY KEY (kind, namespace, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE changes (
        revision INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body BLOB NOT NULL
    )""",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

log = structlog.get_logger(__name__)


class SqliteStore:
    """The ``Store`` on one SQLite file; safe to use from several processes and threads at once."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = Path(path)
        # What metadata.creationTimestamp of a created object is read from (tests pass a fake one).
        self._wall_clock = wall_clock
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Resource)
        self._closed = False
        # Writes refused by the size limits, by reason (annotations_too_large, object_too_large).
        self.rejected_writes: Counter[str] = Counter()
        _create_private(self.path)
        self._db = self._connect()
        try:
            self._open_schema()
        except BaseException:
            self._db.close()
            raise

    # --- opening ---------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (sqlite3's implicit ones are not
            # IMMEDIATE). check_same_thread=False: access is serialised by self._lock instead.
            return sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open store {self.path}: {e}") from None

    def _open_schema(self) -> None:
        db = self._db
        try:
            app_id, version = self._header()
            if app_id == 0 and version == 0:
                app_id, version = self._initialise()
        except sqlite3.DatabaseError as e:
            other = NotAStore(f"{self.path} is not an ambient-mesh store ({e}); use another --state-dir")
            raise self._failure(e, other) from None
        if app_id != APPLICATION_ID:
            raise NotAStore(
                f"{self.path} is an SQLite database of another application (application_id {app_id:#x}); "
                "use another --state-dir"
            )
        if version > SCHEMA_VERSION:
            raise StoreSchemaTooNew(
                f"{self.path} has store schema v{version}, newer than this version reads (v{SCHEMA_VERSION}); "
                "upgrade ambient-mesh, or use another --state-dir"
            )
        try:
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as e:
            raise self._failure(e, StoreUnavailable(f"cannot use store {self.path}: {e}")) from None

    def _header(self) -> tuple[int, int]:
        return read_header(self._db)

    def _initialise(self) -> tuple[int, int]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have initialised it while we waited for the lock.
            app_id, version = self._header()
            if app_id == 0 and version == 0:
                tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise NotAStore(
                        f"{self.path} is an SQLite database of another application; use another --state-dir"
                    )
                for statement in _SCHEMA:
                    db.execute(statement)
                app_id, version = APPLICATION_ID, SCHEMA_VERSION
                log.info("store created", path=str(self.path), schema=SCHEMA_VERSION)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return app_id, version

    # --- transactions ---------------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._live()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            db = self._live()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise self._failure(e, StoreUnavailable(f"store {self.path}: {e}")) from None
        except msgspec.DecodeError as e:
            raise StoreDamaged(
                f"{self.path}: a stored object cannot be read ({e}); the store is damaged: {RECOVER_HINT}"
            ) from None

    def _failure(self, e: sqlite3.Error, otherwise: StoreError) -> StoreError:
        """The error for ``e``: a locked or a damaged store says so; anything else is ``otherwise``."""
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code in (SQLITE_BUSY, SQLITE_LOCKED) or "database is locked" in str(e):
            holders = tuple(
                str(h) for h in find_lock_holders(_store_files(self.path), exclude_pid=os.getpid())
            )
            who = ", ".join(holders) or (
                "another process (none is listed in /proc/locks: it may run in another PID namespace, "
                "container or host)"
            )
            return StoreLocked(
                f"store {self.path} is locked by {who}, which held its lock for more than "
                f"{self._busy_timeout:g}s; stop that process or let it finish, then retry",
                holders,
            )
        if code == SQLITE_NOTADB:  # no SQLite header: our store damaged, or a wrong --state-dir
            return StoreDamaged(
                f"{self.path} is not an ambient-mesh store or is damaged (SQLite: {e}); if it is this mesh's "
                f"store, {RECOVER_HINT}; otherwise use another --state-dir"
            )
        if code == SQLITE_CORRUPT:
            return StoreDamaged(f"{self.path} is damaged (SQLite: {e}); {RECOVER_HINT}")
        return otherwise

    def _live(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        return self._db

    # --- Store ------------------------------------------------------------------------------------------

    def apply(self, resources: Iterable[Resource]) -> builtins.list[ApplyResult]:
        batch = [self._canonical(r) for r in resources]
        for r in batch:
            if r.kind not in KINDS:
                raise UnknownKind(r.kind, list(KINDS))
        results: builtins.list[ApplyResult] = []
        created_at = self._now()
        with self._writing() as db:
            revision = _revision(db)
            for new in batch:
                old = self._select(db, new.ref)
                if old is not None and not new.status:
                    new = msgspec.structs.replace(new, status=old.status)
                if old is not None and _same_content(old, new):
                    results.append(ApplyResult(new.ref, "unchanged", old))
                    continue
                revision += 1
                action: ApplyAction = "created" if old is None else "configured"
                stored = msgspec.structs.replace(
                    new,
                    resource_version=revision,
                    uid=old.uid if old else str(uuid.uuid4()),
                    generation=_next_generation(old, new),
                    creation_timestamp=old.creation_timestamp if old else created_at,
                )
                self._write(db, revision, "ADDED" if old is None else "MODIFIED", stored)
                results.append(ApplyResult(stored.ref, action, stored))
        for res in results:
            if res.action != "unchanged":
                log.debug("resource " + res.action, ref=str(res.ref), revision=res.resource.resource_version)
        return results

    def delete(self, refs: Iterable[ResourceRef]) -> builtins.list[ResourceRef]:
        deleted: builtins.list[ResourceRef] = []
        with self._writing() as db:
            revision = _revision(db)
            for ref in refs:
                victims: builtins.list[Resource] = []
                if ref.kind == "Namespace":
                    # As in Kubernetes, deleting a namespace deletes what is in it (contents first).
                    victims.extend(self._select_many(db, None, ref.name))
                target = self._select(db, ref)
                if target is None:
                    continue
                victims.append(target)
                for victim in victims:
                    revision += 1
                    gone = msgspec.structs.replace(victim, resource_version=revision)
                    db.execute(
                        "INSERT INTO changes (revision, type, kind, namespace, name, body) VALUES (?, ?, ?, ?, ?, ?)",
                        (revision, "DELETED", *_key(victim.ref), self._encoder.encode(gone)),
                    )
                    db.execute(
                        "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", _key(victim.ref)
                    )
                    deleted.append(victim.ref)
        return deleted

    def get(self, ref: ResourceRef) -> Resource | None:
        with self._reading() as db:
            return self._select(db, ref)

    def list(self, kind: str | None = None, namespace: str | None = None) -> builtins.list[Resource]:
        with self._reading() as db:
            return self._select_many(db, kind, namespace)

    def snapshot(
        self, kind: str | None = None, namespace: str | None = None
    ) -> tuple[int, builtins.list[Resource]]:
        with self._reading() as db:
            # One read transaction: the revision and the objects come from the same database snapshot.
            db.execute("BEGIN")
            try:
                return _revision(db), self._select_many(db, kind, namespace)
            finally:
                db.execute("COMMIT")

    def set_labels(
        self, ref: ResourceRef, add: Mapping[str, str], remove: Iterable[str], *, create: bool = False
    ) -> ApplyResult:
        removed = set(remove)
        with self._writing() as db:
            old = self._select(db, ref)
            if old is None and not create:
                raise ResourceNotFound(str(ref))
            base = old or Resource(
                kind=ref.kind, namespace=ref.namespace, name=ref.name, api_version=KINDS[ref.kind][0]
            )
            labels = {k: v for k, v in base.labels.items() if k not in removed}
            labels.update(add)
            if old is not None and labels == old.labels:
                return ApplyResult(ref, "unchanged", old)
            revision = _revision(db) + 1
            stored = msgspec.structs.replace(
                base,
                labels=labels,
                resource_version=revision,
                uid=base.uid or str(uuid.uuid4()),
                generation=base.generation or 1,
                creation_timestamp=old.creation_timestamp if old else self._now(),
            )
            self._write(db, revision, "ADDED" if old is None else "MODIFIED", stored)
            return ApplyResult(ref, "created" if old is None else "configured", stored)

    def set_annotations(
        self, ref: ResourceRef, add: Mapping[str, str], remove: Iterable[str]
    ) -> ApplyResult:
        removed = set(remove)
        with self._writing() as db:
            old = self._select(db, ref)
            if old is None:
                raise ResourceNotFound(str(ref))
            annotations = {k: v for k, v in old.annotations.items() if k not in removed}
            annotations.update(add)
            if annotations == old.annotations:
                return ApplyResult(ref, "unchanged", old)
            revision = _revision(db) + 1
            stored = msgspec.structs.replace(old, annotations=annotations, resource_version=revision)
            self._write(db, revision, "MODIFIED", stored)
            return ApplyResult(ref, "configured", stored)

    def set_status(self, ref: ResourceRef, status: Mapping[str, Any]) -> ApplyResult:
        new_status = msgspec.json.decode(self._encoder.encode(status))  # as a later read returns it
        with self._writing() as db:
            old = self._select(db, ref)
            if old is None:
                raise ResourceNotFound(str(ref))
            if new_status == old.status:
                return ApplyResult(ref, "unchanged", old)
            revision = _revision(db) + 1
            stored = msgspec.structs.replace(old, status=new_status, resource_version=revision)
            self._write(db, revision, "MODIFIED", stored)
            return ApplyResult(ref, "configured", stored)

    def revision(self) -> int:
        with self._reading() as db:
            return _revision(db)

    def changes_since(self, revision: int, limit: int | None = None) -> builtins.list[WatchEvent]:
        with self._reading() as db:
            return self._changes(db, revision, limit)

    async def watch(self, since: int, poll_interval: float = 0.05) -> AsyncIterator[WatchEvent]:
        """Changes after ``since`` in order, forever (until the store is closed); see the module doc."""
        reader = self._connect()
        last = since
        try:
            while not self._closed:
                with self._errors():
                    events = self._changes(reader, last, 1000)
                for event in events:
                    last = event.revision
                    yield event
                if not events:
                    await asyncio.sleep(poll_interval)
        finally:
            reader.close()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _now(self) -> str:
        """metadata.creationTimestamp for an object created now: RFC 3339, UTC, whole seconds."""
        return self._wall_clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # --- rows -------------------------------------------------------------------------------------------

    def _canonical(self, resource: Resource) -> Resource:
        # Through JSON and back: what is compared and stored is exactly what a later read returns.
        try:
            return self._decoder.decode(self._encoder.encode(resource))
        except (TypeError, msgspec.EncodeError, msgspec.DecodeError) as e:
            raise StoreError(f"{resource.ref}: cannot be stored as JSON: {e}") from None

    def _select(self, db: sqlite3.Connection, ref: ResourceRef) -> Resource | None:
        row = db.execute(SELECT_OBJECT, _key(ref)).fetchone()
        return None if row is None else self._decoder.decode(row[0])

    def _select_many(
        self, db: sqlite3.Connection, kind: str | None, namespace: str | None
    ) -> builtins.list[Resource]:
        query = "SELECT body FROM objects"
        where: builtins.list[str] = []
        args: builtins.list[str] = []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if namespace is not None:
            where.append("namespace = ?")
            args.append(namespace)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY kind, namespace, name"
        return [self._decoder.decode(body) for (body,) in db.execute(query, args)]

    def _write(self, db: sqlite3.Connection, revision: int, type_: EventType, stored: Resource) -> None:
        body = self._encoder.encode(stored)
        self._check_size(stored, len(body))
        db.execute(
            "INSERT INTO changes (revision, type, kind, namespace, name, body) VALUES (?, ?, ?, ?, ?, ?)",
            (revision, type_, *_key(stored.ref), body),
        )
        db.execute(
            "INSERT OR REPLACE INTO objects (kind, namespace, name, resource_version, uid, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (*_key(stored.ref), revision, stored.uid, body),
        )

    def _check_size(self, stored: Resource, body_size: int) -> None:
        """Refuse (count, log, raise) an object over a limit; called inside the write transaction, so the
        whole call rolls back and nothing of it is stored."""
        error: ResourceTooLarge | None = None
        over = annotations_over_limit(stored.annotations)
        if over is not None:
            error = ResourceTooLarge(
                str(stored.ref),
                "annotations_too_large",
                "its annotations total",
                over,
                MAX_ANNOTATIONS_BYTES,
                ANNOTATIONS_HINT,
            )
        elif body_size > MAX_OBJECT_BYTES:
            error = ResourceTooLarge(
                str(stored.ref),
                "object_too_large",
                "the stored object is",
                body_size,
                MAX_OBJECT_BYTES,
                OBJECT_HINT,
            )
        if error is not None:
            self.rejected_writes[error.reason] += 1
            log.warning(
                "write refused", ref=error.ref, reason=error.reason, size=error.size, limit=error.limit
            )
            raise error

    def _changes(self, db: sqlite3.Connection, since: int, limit: int | None) -> builtins.list[WatchEvent]:
        rows = db.execute(
            "SELECT revision, type, body FROM changes WHERE revision > ? ORDER BY revision LIMIT ?",
            (since, -1 if limit is None else limit),
        )
        return [WatchEvent(type=t, resource=self._decoder.decode(b), revision=rev) for rev, t, b in rows]


if TYPE_CHECKING:

    def _implements_store(store: SqliteStore) -> Store:  # mypy checks SqliteStore against the protocol
        return store


def _revision(db: sqlite3.Connection) -> int:
    # sqlite_sequence keeps the highest revision ever used, even if the log is compacted later.
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return int(row[0]) if row else 0


_key = object_key


def _next_generation(old: Resource | None, new: Resource) -> int:
    """Kubernetes' rule: 1 on create, +1 when the spec changes; a generation given by the writer is
    ignored (server-set). An object stored before generations were kept counts as generation 1."""
    if old is None:
        return 1
    base = old.generation or 1
    return base + 1 if old.spec != new.spec else base


def _same_content(old: Resource, new: Resource) -> bool:
    return (
        old.labels == new.labels
        and old.annotations == new.annotations
        and old.spec == new.spec
        and old.status == new.status
        and old.api_version == new.api_version
        and old.owner_references == new.owner_references
    )


def _store_files(path: Path) -> list[Path]:
    """The database and the files SQLite keeps beside it in WAL mode (locks live on these)."""
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would use 0644 minus the umask)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except FileNotFoundError:
        raise StoreUnavailable(f"cannot create store {path}: its directory does not exist") from None
    except IsADirectoryError:
        raise NotAStore(f"{path} is a directory, not a store file") from None
    except OSError as e:
        raise StoreUnavailable(f"cannot open store {path}: {e.strerror}") from None
    os.close(fd)

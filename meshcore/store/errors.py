"""Errors of the resource store: one base class, subclasses whose messages an operator can act on.

``ResourceError`` covers problems with what the user gave (YAML, kinds, names, missing objects); the
rest of ``StoreError`` covers the store itself (a file that is not a store, a newer schema, a locked or
unreadable database). Messages are one line, name the file/document/field or the store path, and say
what to do. Nothing here does I/O.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store failure."""


class ResourceError(StoreError):
    """A problem with resources the caller gave or asked for (as opposed to the store itself)."""


class InvalidResource(ResourceError):
    """One YAML document failed validation; nothing from its file was applied.

    ``source`` is the file name (or ``-`` for stdin), ``index`` the 1-based document number, ``what`` the
    ``Kind ns/name`` when known, ``path`` the field path (``$.spec.ports[0].port``) when known.
    """

    def __init__(self, source: str, index: int, reason: str, *, what: str = "", path: str = "") -> None:
        self.source = source
        self.index = index
        self.what = what
        self.path = path
        self.reason = reason
        where = f"{source}: document {index}" + (f" ({what})" if what else "")
        super().__init__(f"{where}: {path + ': ' if path else ''}{reason}")


class UnknownKind(ResourceError):
    """A kind (in a document or on the command line) that the store does not hold."""

    def __init__(self, kind: str, supported: list[str]) -> None:
        self.kind = kind
        self.supported = supported
        super().__init__(f"unknown kind {kind!r}: supported kinds are {', '.join(supported)}")


class ResourceNotFound(ResourceError):
    """A resource that was asked for by name does not exist."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} not found")


class SourceNotReadable(ResourceError):
    """A file or directory given with ``-f`` cannot be read."""


class ResourceTooLarge(ResourceError):
    """A resource over one of the size limits of ``limits.py``; nothing of its write was stored.

    ``ref`` is the resource (``Kind/ns/name``), ``reason`` a stable label for counters and logs
    (``annotations_too_large``, ``object_too_large``), ``size`` and ``limit`` are bytes.
    """

    def __init__(self, ref: str, reason: str, measured: str, size: int, limit: int, hint: str) -> None:
        self.ref = ref
        self.reason = reason
        self.size = size
        self.limit = limit
        super().__init__(f"{ref}: {measured} {size} bytes, over the limit of {limit} bytes; {hint}")


class NotAStore(StoreError):
    """The store path exists but is not an ambient-mesh store (another file or another database)."""


class StoreDamaged(NotAStore):
    """The store file cannot be read as a store: SQLite finds no database in it, or a damaged one, or a
    stored object does not decode. The message names the file and says how to recover."""


class StoreSchemaTooNew(StoreError):
    """The store was written by a newer version whose schema this version cannot read."""


class StoreUnavailable(StoreError):
    """The store could not be opened or written (permissions, disk, lock held too long)."""


class StoreLocked(StoreUnavailable):
    """Another process held a lock on the store longer than the busy timeout.

    ``holders`` describes the processes ``/proc/locks`` shows holding locks on the store's files
    (``pid 123 (sqlite3 store.db)``); empty when that cannot be known (another PID namespace or host).
    """

    def __init__(self, message: str, holders: tuple[str, ...] = ()) -> None:
        self.holders = holders
        super().__init__(message)

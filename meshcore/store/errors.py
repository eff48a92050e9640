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


class NotAStore(StoreError):
    """The store path exists but is not an ambient-mesh store (another file or another database)."""


class StoreSchemaTooNew(StoreError):
    """The store was written by a newer version whose schema this version cannot read."""


class StoreUnavailable(StoreError):
    """The store could not be opened or written (permissions, disk, lock held too long)."""

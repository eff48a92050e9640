"""Cluster state as Kubernetes-shaped resources: the store interface and its embedded SQLite backend.

Who uses it: ambientctl (apply/get/delete/namespace enable), istiod_lite (snapshot + watch, the input
of its registry) and the local cluster (registers pods). Flow: YAML -> ``load`` (parse) -> ``schema``
(validate into ``Resource``) -> ``Store.apply`` (atomic) -> change log -> ``Store.watch``. A Kubernetes
backend will implement the same ``Store`` protocol. Errors are ``errors.StoreError`` subclasses.

The names below are loaded on first use (PEP 562), so importing one light submodule (``resource``,
``errors``, ``paths``, ``sqlite_read``) does not load the rest: the CNI plugin, a process per pod, reads
one pod through ``sqlite_read`` without paying for YAML, the schema, asyncio or structlog.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import ApplyAction, ApplyResult, EventType, Store, WatchEvent
    from .errors import (
        InvalidResource,
        NotAStore,
        ResourceError,
        ResourceNotFound,
        ResourceTooLarge,
        SourceNotReadable,
        StoreDamaged,
        StoreError,
        StoreLocked,
        StoreSchemaTooNew,
        StoreUnavailable,
        UnknownKind,
    )
    from .kinds import is_namespaced, plural, resolve_kind, supported_kinds
    from .load import Loaded, collect_paths, load_documents, load_paths
    from .paths import STATE_DIR_ENV, resolve_state_dir, store_path
    from .resource import KINDS, OwnerReference, Resource, ResourceRef
    from .schema import build_resource, name_problem, spec_as, status_as
    from .sqlite import SqliteStore

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ApplyAction", "ApplyResult", "EventType", "Store", "WatchEvent"), "base"),
    **dict.fromkeys(
        (
            "InvalidResource",
            "NotAStore",
            "ResourceError",
            "ResourceNotFound",
            "ResourceTooLarge",
            "SourceNotReadable",
            "StoreDamaged",
            "StoreError",
            "StoreLocked",
            "StoreSchemaTooNew",
            "StoreUnavailable",
            "UnknownKind",
        ),
        "errors",
    ),
    **dict.fromkeys(("is_namespaced", "plural", "resolve_kind", "supported_kinds"), "kinds"),
    **dict.fromkeys(("Loaded", "collect_paths", "load_documents", "load_paths"), "load"),
    **dict.fromkeys(("STATE_DIR_ENV", "resolve_state_dir", "store_path"), "paths"),
    **dict.fromkeys(("KINDS", "OwnerReference", "Resource", "ResourceRef"), "resource"),
    **dict.fromkeys(("build_resource", "name_problem", "spec_as", "status_as"), "schema"),
    "SqliteStore": "sqlite",
}

__all__ = [
    "KINDS",
    "STATE_DIR_ENV",
    "ApplyAction",
    "ApplyResult",
    "EventType",
    "InvalidResource",
    "Loaded",
    "NotAStore",
    "OwnerReference",
    "Resource",
    "ResourceError",
    "ResourceNotFound",
    "ResourceRef",
    "ResourceTooLarge",
    "SourceNotReadable",
    "SqliteStore",
    "Store",
    "StoreDamaged",
    "StoreError",
    "StoreLocked",
    "StoreSchemaTooNew",
    "StoreUnavailable",
    "UnknownKind",
    "WatchEvent",
    "build_resource",
    "collect_paths",
    "is_namespaced",
    "load_documents",
    "load_paths",
    "name_problem",
    "open_store",
    "plural",
    "resolve_kind",
    "resolve_state_dir",
    "spec_as",
    "status_as",
    "store_path",
    "supported_kinds",
]

if not TYPE_CHECKING:  # mypy sees the imports above; an unknown name stays an error for it

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later lookups are plain module attributes
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def open_store(state_dir: str | None = None) -> SqliteStore:
    """The embedded store of a state directory (resolved as ``resolve_state_dir`` does)."""
    from .paths import resolve_state_dir, store_path
    from .sqlite import SqliteStore

    return SqliteStore(store_path(resolve_state_dir(state_dir)))

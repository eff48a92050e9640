"""Cluster state as Kubernetes-shaped resources: the store interface and its embedded SQLite backend.

Who uses it: ambientctl (apply/get/delete/namespace enable), istiod_lite (snapshot + watch, the input
of its registry) and the local cluster (registers pods). Flow: YAML -> ``load`` (parse) -> ``schema``
(validate into ``Resource``) -> ``Store.apply`` (atomic) -> change log -> ``Store.watch``. A Kubernetes
backend will implement the same ``Store`` protocol. Errors are ``errors.StoreError`` subclasses.
"""

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
from .resource import KINDS, Resource, ResourceRef
from .schema import build_resource, name_problem, spec_as, status_as
from .sqlite import SqliteStore

__all__ = [
    "KINDS",
    "STATE_DIR_ENV",
    "ApplyAction",
    "ApplyResult",
    "EventType",
    "InvalidResource",
    "Loaded",
    "NotAStore",
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
    "plural",
    "resolve_kind",
    "resolve_state_dir",
    "spec_as",
    "status_as",
    "store_path",
    "supported_kinds",
]


def open_store(state_dir: str | None = None) -> SqliteStore:
    """The embedded store of a state directory (resolved as ``resolve_state_dir`` does)."""
    return SqliteStore(store_path(resolve_state_dir(state_dir)))


__all__ += ["open_store"]

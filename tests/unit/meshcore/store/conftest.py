"""Fixtures for the store's unit tests: ``store`` runs a test once on each ``Store`` implementation (the
embedded SQLite store in ``tmp_path``, and the Kubernetes store against the test kit's API server
stand-in), so both keep one contract. A module with a store of another shape defines its own ``store``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcore.store import SqliteStore, Store
from meshcore.store.kubernetes import KubernetesStore
from meshcore.testing.kube_api import ThreadedKubeApi


@pytest.fixture(params=["sqlite", "kubernetes"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        with SqliteStore(tmp_path / "store.db") as s:
            yield s
        return
    with (
        ThreadedKubeApi() as api,
        KubernetesStore.connect(host=api.url, sync_timeout=10, write_timeout=10) as k,
    ):
        yield k

"""Fixtures shared by the in-process tier: a real istiod_lite on loopback, on an embedded SQLite store or on
the Kubernetes store against the test kit's API server stand-in.

``plane``: a started ``ControlPlane`` (xDS and monitoring on free loopback ports, a 20 ms debounce) in the
test's ``tmp_path``, stopped at teardown even when the test failed. A module adds config fields by
overriding ``istiod_overrides`` (both planes read it), or post-start setup by overriding ``plane`` and
requesting it. ``api``: the stand-in with the ambient namespace ``demo`` and ``istio-system`` (where the
leader Lease lives). ``kube_plane``: the same istiod on the Kubernetes store through a kubeconfig for
``api``; ``token_ca_plane``: that with its token CA port open. Modules with a plane of another shape
(several replicas, a fixed xDS port) define their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig
from meshcore.testing.kube_api import ThreadedKubeApi, write_kubeconfig


@pytest.fixture
def istiod_overrides() -> dict[str, Any]:
    """IstiodConfig fields a module sets beyond the loopback defaults (override in the module)."""
    return {}


@asynccontextmanager
async def _running(config: IstiodConfig) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(config)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


def _loopback(state_dir: Path, **fields: Any) -> IstiodConfig:
    return IstiodConfig(
        state_dir=state_dir,
        xds_host="127.0.0.1",
        xds_port=0,
        monitoring_host="127.0.0.1",
        monitoring_port=0,
        debounce_seconds=0.02,
        **fields,
    )


@pytest.fixture
async def plane(tmp_path: Path, istiod_overrides: dict[str, Any]) -> AsyncIterator[ControlPlane]:
    async with _running(_loopback(tmp_path, **istiod_overrides)) as cp:
        yield cp


@pytest.fixture
def api() -> Iterator[ThreadedKubeApi]:
    with ThreadedKubeApi() as server:
        server.call(
            server.server.put_object,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}},
            },
        )
        server.call(
            server.server.put_object,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}},
        )
        yield server


def _on_kubernetes(api: ThreadedKubeApi, state_dir: Path, **fields: Any) -> IstiodConfig:
    kubeconfig = write_kubeconfig(state_dir / "kubeconfig", api.url)
    return _loopback(
        state_dir, store="kubernetes", kubeconfig=str(kubeconfig), kube_context="standin", **fields
    )


@pytest.fixture
async def kube_plane(
    api: ThreadedKubeApi, tmp_path: Path, istiod_overrides: dict[str, Any]
) -> AsyncIterator[ControlPlane]:
    async with _running(_on_kubernetes(api, tmp_path, **istiod_overrides)) as cp:
        yield cp


@pytest.fixture
async def token_ca_plane(api: ThreadedKubeApi, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """``kube_plane`` with its token CA port (TokenReview-verified pod tokens) on loopback."""
    async with _running(_on_kubernetes(api, tmp_path, token_ca_host="127.0.0.1", token_ca_port=0)) as cp:
        yield cp

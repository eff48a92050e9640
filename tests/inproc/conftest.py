"""Fixtures shared by the in-process tier: a real istiod_lite on loopback with an embedded SQLite store.

``plane``: a started ``ControlPlane`` (xDS and monitoring on free loopback ports, a 20 ms debounce) in the
test's ``tmp_path``, stopped at teardown even when the test failed. A module adds config fields by
overriding ``istiod_overrides``, or post-start setup by overriding ``plane`` and requesting it. Modules
with a plane of another shape (the Kubernetes store, several replicas) define their own ``plane``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.app import ControlPlane
from istiod_lite.config import IstiodConfig


@pytest.fixture
def istiod_overrides() -> dict[str, Any]:
    """IstiodConfig fields a module sets beyond the loopback defaults (override in the module)."""
    return {}


@pytest.fixture
async def plane(tmp_path: Path, istiod_overrides: dict[str, Any]) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(
        IstiodConfig(
            state_dir=tmp_path,
            xds_host="127.0.0.1",
            xds_port=0,
            monitoring_host="127.0.0.1",
            monitoring_port=0,
            debounce_seconds=0.02,
            **istiod_overrides,
        )
    )
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)

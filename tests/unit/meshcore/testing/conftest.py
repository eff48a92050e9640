"""Fixtures for the test kit's own tests: ``http``, an aiohttp session on the module's ``api`` (a
``KubeApiServer`` fixture each module defines with the objects it starts from), closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from meshcore.testing.kube_api import KubeApiServer


@pytest.fixture
async def http(api: KubeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(api.url) as session:
        yield session

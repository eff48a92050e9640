"""Shared pytest configuration: tier markers and the rule that netns tests run (not skip) in CI."""

from __future__ import annotations

import os

import pytest
import structlog


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/tests/inproc/" in path:
            item.add_marker(pytest.mark.inproc)
        if "/tests/netns/" in path:
            item.add_marker(pytest.mark.netns)
            if os.geteuid() != 0 and not os.environ.get("CI"):
                item.add_marker(pytest.mark.skip(reason="netns tests need root (they run in CI)"))


@pytest.fixture(autouse=True)
def _reset_structlog():
    """A test (or a CLI it runs in-process) may configure structlog; never let that leak into the next."""
    yield
    structlog.reset_defaults()

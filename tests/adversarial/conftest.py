"""The adversarial tier: every test under tests/adversarial/ gets the ``adversarial`` marker.

Tests here replay a probe that once broke something (floods, malformed or oversized input, peers that
vanish) against real listeners on loopback, each bounded in count and time.
Select them with ``-m adversarial``, leave them out with ``-m "not adversarial"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.adversarial)

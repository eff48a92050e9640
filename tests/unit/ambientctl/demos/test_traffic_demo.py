"""The traffic demo's pieces without a cluster: its YAML is what the store accepts (strict decoding), its
split tolerance is exact at the ends and about four standard deviations between, and an unknown demo name
is refused with the choices."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from ambientctl.cli import app
from ambientctl.demos.traffic import RETRY_VS, canary_route, manifests, split_bounds
from meshcore.store import load_documents


def test_the_demo_manifests_and_routes_load_as_valid_resources() -> None:
    kinds = [r.kind for r in load_documents(manifests(sys.executable), "manifests")]
    assert kinds == ["Namespace", "Pod", "Pod", "Pod", "Pod", "Service", "Service", "Service", "Service"]
    for v1, v2 in ((100, 0), (90, 10), (50, 50)):
        (route,) = load_documents(canary_route(v1, v2), "route")
        weights = [b["weight"] for b in route.spec["rules"][1]["backendRefs"]]
        assert (route.kind, weights) == ("HTTPRoute", [v1, v2])
    assert [r.kind for r in load_documents(RETRY_VS, "retry")] == ["VirtualService"]


@pytest.mark.parametrize(
    ("n", "share", "bounds"),
    [
        pytest.param(100, 0.0, (0, 0), id="no share allows exactly none"),
        pytest.param(100, 1.0, (100, 100), id="the whole share allows exactly all"),
        pytest.param(100, 0.5, (30, 70), id="half of 100 allows 4 sd of 5 either side"),
        pytest.param(100, 0.1, (0, 22), id="a tenth of 100 allows 4 sd of 3 either side"),
    ],
)
def test_split_bounds(n: int, share: float, bounds: tuple[int, int]) -> None:
    assert split_bounds(n, share) == bounds


def test_an_unknown_demo_is_refused_with_the_choices() -> None:
    result = CliRunner().invoke(app, ["demo", "nope"])
    assert result.exit_code == 1
    assert "no demo 'nope': choose one of mesh, traffic" in result.output

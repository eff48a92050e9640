"""Host checks: every missing prerequisite is reported at once, each with how to get it."""

from __future__ import annotations

import pytest

from ambientctl.cluster.errors import HostNotSupported
from ambientctl.cluster.preflight import find_host_problems


def which_all(tool: str) -> str | None:
    return f"/usr/sbin/{tool}"


def which_none(tool: str) -> str | None:
    return None


def which_no_nft(tool: str) -> str | None:
    return None if tool == "nft" else f"/usr/sbin/{tool}"


@pytest.mark.parametrize(
    ("euid", "has_netns", "which", "expected"),
    [
        (0, True, which_all, []),
        (1000, True, which_all, ["not running as root"]),
        (0, False, which_all, ["no network namespaces"]),
        (0, True, which_no_nft, ["`nft` not found on PATH: install with `apt-get install nftables`"]),
        (
            1000,
            False,
            which_none,
            [
                "not running as root",
                "no network namespaces",
                "`ip` and `nft` not found on PATH: install with `apt-get install iproute2 nftables`",
            ],
        ),
    ],
    ids=[
        "root with netns, ip and nft has no problem",
        "a normal user is told to use root",
        "a kernel without netns is named",
        "missing nft says which package to install",
        "every problem is listed together",
    ],
)
def test_host_problems(euid: int, has_netns: bool, which, expected: list[str]) -> None:
    problems = find_host_problems(euid, has_netns, which)
    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


def test_the_error_joins_the_problems_in_one_line() -> None:
    error = HostNotSupported(["a", "b"])
    assert str(error) == "this machine cannot run the local cluster: a; b"
    assert "\n" not in str(error)

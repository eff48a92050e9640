"""Targets and locations of ``ambientctl fetch``: what is accepted, and the message for what is not."""

from __future__ import annotations

import pytest

from ambientctl.troubleshoot.reach import ReachError, Target, parse_location, parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("istiod", Target("istiod")),
        ("node/node-1", Target("node", node="node-1")),
        ("ztunnel/node-2", Target("node", node="node-2")),
        ("node-agent/node-2", Target("node", node="node-2")),
        ("pod/shop/waypoint-abc", Target("pod", namespace="shop", name="waypoint-abc")),
    ],
    ids=[
        "istiod is the control plane",
        "a node names its netns",
        "ztunnel of a node is the node's netns",
        "node agent of a node is the node's netns",
        "a pod is namespace and name",
    ],
)
def test_targets_are_parsed(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert str(parse_target(str(expected))) == str(expected)


@pytest.mark.parametrize(
    "text",
    ["", "node/", "pod/shop", "pod//x", "service/echo", "istiod/x"],
    ids=["empty", "node without name", "pod without name", "pod without namespace", "unknown kind", "istiod with a suffix"],
)
def test_bad_targets_say_what_to_write(text: str) -> None:
    with pytest.raises(ReachError, match=r"istiod, node/<node> .*pod/<namespace>/<name>"):
        parse_target(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":15014/debug/syncz", (15014, "/debug/syncz")),
        ("15000/config_dump", (15000, "/config_dump")),
        (":15021", (15021, "/")),
        (":15000/config_dump?x=1", (15000, "/config_dump?x=1")),
    ],
    ids=["colon port and path", "port without colon", "port alone means the root path", "query kept"],
)
def test_locations_are_parsed(text: str, expected: tuple[int, str]) -> None:
    assert parse_location(text) == expected


@pytest.mark.parametrize("text", ["/config_dump", ":0/x", ":70000/x", ":abc/x"],
                         ids=["no port", "port zero", "port too large", "port not a number"])
def test_bad_locations_show_an_example(text: str) -> None:
    with pytest.raises(ReachError, match=r":PORT/PATH, for example :15000/config_dump"):
        parse_location(text)

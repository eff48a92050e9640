"""Readiness decision (pure): what must hold before /healthz/ready answers 200."""

from __future__ import annotations

import pytest

from meshcore.aio.httpserver import Request
from meshcore.identity import SpiffeId
from meshcore.readiness import check_readiness, readiness_handler

A = SpiffeId("cluster.local", "default", "a")
B = SpiffeId("cluster.local", "default", "b")


@pytest.mark.parametrize(
    ("synced", "wanted", "held", "pending", "ready", "mentions"),
    [
        (True, {A}, {A}, {}, True, []),
        (True, set(), set(), {}, True, []),
        (False, set(), set(), {}, False, ["configuration not synced"]),
        (True, {A, B}, {A}, {}, False, ["certificates for spiffe://cluster.local/ns/default/sa/b"]),
        (True, {A}, {A}, {"Kubernetes//Pod/default/a": "cannot listen"}, False, ["proxy for Kubernetes//Pod/default/a (cannot listen)"]),
        (False, {A}, set(), {"x": "starting"}, False, ["configuration", "certificates", "proxy for x"]),
    ],
    ids=[
        "synced with every certificate and proxy is ready",
        "a node with no local workloads is ready once synced",
        "unsynced config is not ready",
        "a missing certificate is not ready and named",
        "a proxy not listening is not ready and named",
        "every missing piece is listed",
    ],
)
def test_readiness(synced, wanted, held, pending, ready, mentions):
    report = check_readiness(config_synced=synced, wanted_identities=wanted, held_identities=held, pending_proxies=pending)
    assert report.ready is ready
    for text in mentions:
        assert text in report.text()


async def test_the_handler_answers_200_or_503_with_the_pending_list():
    request = Request("GET", "/healthz/ready", {}, {}, b"")
    ok = await readiness_handler(lambda: check_readiness(
        config_synced=True, wanted_identities=(), held_identities=(), pending_proxies={}
    ))(request)
    assert (ok.status, ok.body) == (200, b"ready\n")
    not_ok = await readiness_handler(lambda: check_readiness(
        config_synced=False, wanted_identities=(), held_identities=(), pending_proxies={}
    ))(request)
    assert not_ok.status == 503 and not_ok.body.startswith(b"not ready, pending: configuration")

"""meshcore.aio.netns without root: handles on our own namespace (/proc/self/ns/net), and a worker that
cannot enter its namespace (setns refused at the pyroute2 boundary) failing every job with a typed error."""

from __future__ import annotations

import errno
import os

import pytest

from meshcore.aio import netns
from meshcore.aio.netns import (
    NetnsEnterFailed,
    NetnsHandle,
    NetnsId,
    NotANetns,
    current_netns_id,
    in_netns,
    run_in_netns,
)


def test_a_handle_on_our_own_namespace_has_its_identity() -> None:
    with NetnsHandle.from_pid(os.getpid()) as handle:
        assert handle.id == current_netns_id() == NetnsId.of_path("/proc/self/ns/net")
        assert run_in_netns(handle, lambda x: x + 1, 41) == 42


def test_a_namespace_of_another_kind_is_refused() -> None:
    with pytest.raises(NotANetns, match="CLONE_NEWNET"):
        NetnsHandle.open("/proc/self/ns/uts")


@pytest.fixture
def setns_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, flags: int = 0) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(netns._pyroute2_netns, "setns", refuse)


@pytest.mark.usefixtures("setns_refused")
def test_a_worker_that_cannot_enter_fails_jobs_with_the_reason() -> None:
    with NetnsHandle.open("/proc/self/ns/net") as handle:
        with pytest.raises(NetnsEnterFailed, match="Operation not permitted"):
            run_in_netns(handle, current_netns_id)
        with pytest.raises(NetnsEnterFailed):
            run_in_netns(handle, current_netns_id)


@pytest.mark.usefixtures("setns_refused")
async def test_in_netns_reports_a_failed_enter_too() -> None:
    with NetnsHandle.open("/proc/self/ns/net") as handle:
        with pytest.raises(NetnsEnterFailed):
            await in_netns(handle, current_netns_id)


def test_a_job_may_close_its_own_handle() -> None:
    handle = NetnsHandle.open("/proc/self/ns/net")
    run_in_netns(handle, handle.close)
    assert handle.closed

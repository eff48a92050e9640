"""meshcore.aio.netns against the real kernel: jobs run inside the namespace, the caller never moves,
sockets made there stay there (a listener in a pod netns is reachable from that netns only)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from meshcore.aio.netns import (
    INPOD_MARK,
    NetnsClosed,
    NetnsGone,
    NetnsHandle,
    NetnsId,
    NotANetns,
    current_netns_id,
    in_netns,
    make_marked_socket,
    run_in_netns,
    socket_in_netns,
)


def test_jobs_run_inside_the_namespace_and_the_caller_stays_home(make_netns):
    ns = make_netns("h9nh")
    home = current_netns_id()
    with NetnsHandle.open(ns.path) as handle:
        assert handle.id == NetnsId.of_path(ns.path)
        assert handle.id != home
        assert run_in_netns(handle, current_netns_id) == handle.id
        assert current_netns_id() == home


def test_the_worker_thread_is_entered_once_and_reused(make_netns):
    ns = make_netns("h9nh")
    with NetnsHandle.open(ns.path) as handle:
        idents = {run_in_netns(handle, threading.get_ident) for _ in range(20)}
        assert len(idents) == 1
        assert threading.get_ident() not in idents


def test_a_job_that_runs_another_job_does_not_deadlock(make_netns):
    ns = make_netns("h9nh")
    with NetnsHandle.open(ns.path) as handle:
        assert run_in_netns(handle, lambda: run_in_netns(handle, current_netns_id)) == handle.id


async def test_in_netns_awaits_the_job_and_the_loop_thread_never_moves(make_netns):
    ns = make_netns("h9nh")
    home = current_netns_id()
    with NetnsHandle.open(ns.path) as handle:
        assert await in_netns(handle, current_netns_id) == handle.id
        with pytest.raises(ZeroDivisionError):
            await in_netns(handle, lambda: 1 / 0)
        assert current_netns_id() == home


def test_a_listener_made_in_the_netns_is_reachable_there_and_not_from_the_host(make_netns):
    ns = make_netns("h9nh")
    # Hold the same port bound (not listening) on the host, so a host connect is refused for certain.
    host_guard = socket.socket()
    listener = client = None
    try:
        host_guard.bind(("127.0.0.1", 0))
        port = host_guard.getsockname()[1]
        with NetnsHandle.open(ns.path) as handle:
            listener = socket_in_netns(handle, socket.AF_INET, socket.SOCK_STREAM)
            assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == INPOD_MARK
            # bind/listen on the calling thread: the socket already belongs to the pod namespace
            listener.bind(("127.0.0.1", port))
            listener.listen(1)
            listener.settimeout(5)

            client = socket_in_netns(handle, mark=0)
            assert client.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0
            client.settimeout(5)
            client.connect(("127.0.0.1", port))
            accepted, _ = listener.accept()
            with accepted:
                client.sendall(b"ping")
                assert accepted.recv(4) == b"ping"

            with socket.socket() as host:
                host.settimeout(5)
                with pytest.raises(ConnectionRefusedError):
                    host.connect(("127.0.0.1", port))
    finally:
        for s in (host_guard, listener, client):
            if s is not None:
                s.close()


def test_open_a_missing_namespace_raises_netns_gone():
    with pytest.raises(NetnsGone, match="no such file"):
        NetnsHandle.open("h9-never-created-namespace")


def test_a_file_that_is_not_a_namespace_is_refused_and_its_fd_closed(tmp_path):
    path = tmp_path / "plain"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(NotANetns):
        NetnsHandle.adopt_fd(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # the handle took ownership and closed it


def test_a_closed_handle_refuses_jobs_and_close_is_idempotent(make_netns):
    ns = make_netns("h9nh")
    handle = NetnsHandle.open(ns.path)
    run_in_netns(handle, current_netns_id)
    handle.close()
    handle.close()
    with pytest.raises(NetnsClosed):
        run_in_netns(handle, current_netns_id)


def test_make_marked_socket_sets_the_requested_mark():
    with make_marked_socket(socket.AF_INET, socket.SOCK_STREAM, 0, 0x123) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x123


def test_the_veth_fixture_joins_two_namespaces(make_netns, make_veth):
    left, right = make_netns("h9nh"), make_netns("h9nh")
    make_veth(left, right, "10.239.0.1/30", "10.239.0.2/30")
    with NetnsHandle.open(left.path) as lh, NetnsHandle.open(right.path) as rh:
        listener = socket_in_netns(rh, mark=0)
        client = socket_in_netns(lh, mark=0)
        with listener, client:
            listener.bind(("10.239.0.2", 0))
            listener.listen(1)
            client.settimeout(5)
            client.connect(listener.getsockname())
            accepted, peer = listener.accept()
            accepted.close()
            assert peer[0] == "10.239.0.1"

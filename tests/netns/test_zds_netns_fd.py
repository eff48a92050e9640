"""A pod netns fd handed over ZDS (SCM_RIGHTS) is usable by ztunnel: adopted into a NetnsHandle, jobs and
sockets land in that pod's namespace. This is the in-pod hand-off, minus the proxies."""

from __future__ import annotations

import os

from meshcore.aio.netns import NetnsHandle, NetnsId, current_netns_id, socket_in_netns
from ztunnel.inpod.protocol import AddWorkload, WorkloadInfo, ZdsClientConnection, ZdsServerConnection
from ztunnel.inpod.transport import recv_packet, send_packet, seqpacket_pair


def test_a_pod_netns_passed_over_zds_runs_jobs_inside_that_pod(make_netns) -> None:
    pod = make_netns("h9zds")
    agent_sock, ztunnel_sock = seqpacket_pair()
    agent, ztunnel = ZdsServerConnection(), ZdsClientConnection()
    try:
        send_packet(ztunnel_sock, ztunnel.hello())
        agent.receive_hello(*recv_packet(agent_sock))
        pod_fd = os.open(pod.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            send_packet(
                agent_sock, *agent.send(AddWorkload("pod-uid", WorkloadInfo("p", "ns", "sa"), pod_fd))
            )
        finally:
            os.close(pod_fd)
        event = ztunnel.receive_request(*recv_packet(ztunnel_sock))
        assert isinstance(event, AddWorkload)
        with NetnsHandle.adopt_fd(event.netns_fd, "pod-uid") as handle:
            assert handle.id == NetnsId.of_path(pod.path) != current_netns_id()
            with socket_in_netns(handle) as listener:
                listener.bind(("127.0.0.1", 15008))  # free in the pod even if the host uses it
                listener.listen(1)
        send_packet(ztunnel_sock, ztunnel.ack())
        assert agent.receive_ack(*recv_packet(agent_sock)).ok
    finally:
        agent_sock.close()
        ztunnel_sock.close()

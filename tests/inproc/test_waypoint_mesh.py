"""The waypoint in the real mesh, in one event loop: istiod_lite (store, registry, waypoint controller,
push, CA and token CA), two ztunnels (node-1: the client; node-2: two servers) and the waypoint process's
``Waypoint`` app, each configured as its binary would be. Only the kubelet is played by the test: it writes
the waypoint pod's status and the waypoint Service's VIP, as the local cluster's kubelet does.

Proves: a per-service-account Gateway binds the servers' Service to the waypoint; the waypoint gets its
certificate with its service-account token and its config over mTLS xDS; a request the client sends to the
Service VIP goes source ztunnel -> HBONE -> waypoint -> HBONE -> destination ztunnel -> server, balanced
across both servers on one keep-alive connection; the destination ztunnel's L4 policy sees the waypoint's
principal; an L7 policy (targetRefs the Service) answers POST with 403 while GET goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from prometheus_client import generate_latest

from ambientctl.cluster.deployments import DeploymentController
from istiod_lite.app import ControlPlane
from istiod_lite.ca.storage import write_credential
from istiod_lite.config import IstiodConfig
from meshcore import satoken
from meshcore.config import HostPort
from meshcore.satoken import BoundObject
from meshcore.store import ResourceRef
from meshcore.store.load import load_documents
from waypoint.app import Waypoint
from waypoint.config import WaypointConfig
from ztunnel.app import Ztunnel
from ztunnel.testing import loopback_block, make_config, socks5_connect

pytestmark = [pytest.mark.inproc, pytest.mark.timeout(90)]

VIP = "10.96.77.10"
WAYPOINT_VIP = "10.96.77.20"
MESH = """
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: demo, labels: {{app: client}}}}
spec: {{nodeName: node-1, serviceAccountName: client, containers: [{{name: c, image: x}}]}}
status: {{phase: Running, podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server-1, namespace: demo, labels: {{app: server}}}}
spec: {{nodeName: node-2, serviceAccountName: server, containers: [{{name: s, image: x}}]}}
status: {{phase: Running, podIP: {s1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server-2, namespace: demo, labels: {{app: server}}}}
spec: {{nodeName: node-2, serviceAccountName: server, containers: [{{name: s, image: x}}]}}
status: {{phase: Running, podIP: {s2}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec: {{selector: {{app: server}}, clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: server-waypoint
  namespace: demo
  annotations: {{istio.io/for-service-account: server}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
"""
GET_ONLY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


async def _http_server(host: str) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                peer = writer.get_extra_info("peername")[0]
                body = json.dumps({"server": host, "peer": peer}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, host, 8080)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str) -> tuple[int, bytes]:
    body = b"payload" if method == "POST" else b""
    writer.write(f"{method} / HTTP/1.1\r\nhost: echo.demo\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                      if k.strip().lower() == b"content-length")
        return int(lines[0].split()[1]), await reader.readexactly(length)


async def _kubelet_programs_the_waypoint(cp: ControlPlane, waypoint_ip: str) -> str:
    """What the local cluster's Deployment controller and kubelet do for the controller's objects; returns
    the pod's name."""
    deployments = DeploymentController(cp.store)
    async with asyncio.timeout(10):
        while True:
            deployments.sync()
            pods = [p for p in cp.store.list("Pod", "demo")
                    if p.labels.get("gateway.networking.k8s.io/gateway-name") == "server-waypoint"]
            svc = cp.store.get(ResourceRef("Service", "demo", "server-waypoint"))
            if pods and svc is not None:
                break
            await asyncio.sleep(0.02)
    (pod,) = pods
    cp.store.apply([msgspec.structs.replace(pod, spec={**pod.spec, "nodeName": "node-1"})])  # scheduled
    cp.store.set_status(ResourceRef("Pod", "demo", pod.name), {
        "phase": "Running", "podIP": waypoint_ip, "conditions": [{"type": "Ready", "status": "True"}],
    })
    cp.store.apply([msgspec.structs.replace(svc, spec={**svc.spec, "clusterIP": WAYPOINT_VIP})])
    return pod.name


async def test_requests_to_a_service_with_a_per_sa_waypoint_go_through_it(tmp_path: Path):
    net = loopback_block()
    client_ip, s1, s2, wp_ip = net + "11", net + "21", net + "22", net + "31"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cp = ControlPlane(IstiodConfig(
        state_dir=state, xds_host="127.0.0.1", xds_port=0, monitoring_host="127.0.0.1", monitoring_port=0,
        debounce_seconds=0.01, token_ca_host="127.0.0.1", token_ca_port=0,
    ))
    cp.store.apply(load_documents(MESH.format(client=client_ip, s1=s1, s2=s2, vip=VIP), "mesh"))
    apps = [await _http_server(s1), await _http_server(s2)]
    ztunnels: list[Ztunnel] = []
    waypoint: Waypoint | None = None
    try:
        await cp.start()
        for node, socks in (("node-1", net + "1"), ("node-2", None)):
            cred = cp.ca.issue_node_credential(node, datetime.now(UTC))
            write_credential(tmp_path / node, cred.key_pem, cred.chain_pem, cred.roots_pem)
            ztunnels.append(Ztunnel(dataclasses.replace(
                make_config(node, socks), xds_address=f"127.0.0.1:{cp.xds_port}",
                ca_address=f"127.0.0.1:{cp.xds_port}", node_credential_dir=tmp_path / node,
            )))
        for zt in ztunnels:
            await zt.start()

        pod_name = await _kubelet_programs_the_waypoint(cp, wp_ip)
        pod = cp.store.get(ResourceRef("Pod", "demo", pod_name))
        assert pod is not None
        token = satoken.issue_token(
            satoken.ensure_issuer_key(state), namespace="demo", service_account="server-waypoint",
            pod=BoundObject(pod_name, pod.uid), node=BoundObject(pod.spec["nodeName"]), now=datetime.now(UTC),
        )
        satoken.write_private_file(tmp_path / "istio-token", token.encode())
        (tmp_path / "root-cert.pem").write_text(cp.ca.roots_pem)
        waypoint = Waypoint(WaypointConfig(
            pod_name=pod_name, namespace="demo", service_account="server-waypoint", gateway_name="server-waypoint",
            pod_ip=wp_ip, xds_address=f"127.0.0.1:{cp.xds_port}", ca_address=f"127.0.0.1:{cp.token_ca_port}",
            token_path=tmp_path / "istio-token", root_cert_path=tmp_path / "root-cert.pem",
            admin_addr=HostPort("127.0.0.1", 0), stats_addr=HostPort("127.0.0.1", 0),
            readiness_addr=HostPort("127.0.0.1", 0),
        ))
        await waypoint.start()
        await waypoint.wait_ready(15)
        for zt in ztunnels:
            await zt.wait_ready(15)
        z1 = ztunnels[0]
        assert z1.socks5 is not None

        def bound_to_waypoint(state) -> bool:
            svc = state.find_service("demo/echo.demo.svc.cluster.local")
            return svc is not None and svc.waypoint is not None

        await z1.cell.wait_for(bound_to_waypoint, timeout=15)
        reader, writer = await socks5_connect(tuple(z1.socks5.address), client_ip, VIP, 80)
        try:
            answers = [await _exchange(reader, writer, "GET") for _ in range(4)]
        finally:
            writer.close()
        assert {status for status, _ in answers} == {200}
        bodies = [json.loads(body) for _, body in answers]
        assert {b["server"] for b in bodies} == {s1, s2}  # one keep-alive connection, both servers
        # The destination ztunnel saw the waypoint's principal on the connections it accepted.
        opened = [line for line in generate_latest(ztunnels[1].registry).decode().splitlines()
                  if line.startswith("istio_tcp_connections_opened_total{") and 'reporter="destination"' in line]
        assert opened and all(
            'source_principal="spiffe://cluster.local/ns/demo/sa/server-waypoint"' in line for line in opened
        ), opened

        cp.store.apply(load_documents(GET_ONLY, "policy"))
        await waypoint.cell.wait_for(lambda state: bool(state.l7_policies), timeout=15)
        reader, writer = await socks5_connect(tuple(z1.socks5.address), client_ip, VIP, 80)
        try:
            assert await _exchange(reader, writer, "POST") == (403, b"RBAC: access denied")
            assert (await _exchange(reader, writer, "GET"))[0] == 200
        finally:
            writer.close()
        assert waypoint.handler.denied >= 1
    finally:
        if waypoint is not None:
            await waypoint.stop()
        for zt in ztunnels:
            await zt.stop()
        for app in apps:
            app.close()
        await cp.stop(grace=0)

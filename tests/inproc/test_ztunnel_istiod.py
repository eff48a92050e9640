"""Two ztunnels against a real istiod_lite: node credentials, delta xDS over mTLS, the CA's node
authorization for impersonated workload identities, then a request through SOCKS5 -> HBONE -> echo.

Nothing is faked: the store, the registry, the push server and the CA are istiod_lite's own, and the
ztunnels are configured exactly as the ``ztunnel`` binary would be (XDS_ADDRESS + NODE_CREDENTIAL_DIR).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from istiod_lite.app import ControlPlane
from istiod_lite.ca.storage import write_credential
from istiod_lite.config import IstiodConfig
from meshcore.store.load import load_documents
from ztunnel.app import Ztunnel
from ztunnel.testing import loopback_block, make_config, socks5_connect

MESH = """
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: client, namespace: demo}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: server, namespace: demo}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: demo, labels: {{app: client}}}}
spec: {{nodeName: node-1, serviceAccountName: client, containers: [{{name: c, image: x}}]}}
status: {{phase: Running, podIP: {client}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: demo, labels: {{app: server}}}}
spec: {{nodeName: node-2, serviceAccountName: server, containers: [{{name: s, image: x}}]}}
status: {{phase: Running, podIP: {server}}}
"""


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    writer.close()


async def test_two_ztunnels_on_istiod_lite_carry_a_request_with_ca_issued_identities(tmp_path: Path):
    net = loopback_block()
    client_ip, server_ip = net + "11", net + "12"
    cp = ControlPlane(IstiodConfig(
        state_dir=tmp_path, xds_host="127.0.0.1", xds_port=0, monitoring_host="127.0.0.1",
        monitoring_port=0, debounce_seconds=0.01,
    ))
    cp.store.apply(load_documents(MESH.format(client=client_ip, server=server_ip), "mesh"))
    app = await asyncio.start_server(echo, server_ip, 0)
    port = app.sockets[0].getsockname()[1]
    ztunnels: list[Ztunnel] = []
    try:
        await cp.start()
        for node, socks in (("node-1", net + "1"), ("node-2", None)):
            cred = cp.ca.issue_node_credential(node, datetime.now(UTC))
            write_credential(tmp_path / node, cred.key_pem, cred.chain_pem, cred.roots_pem)
            config = dataclasses.replace(
                make_config(node, socks), xds_address=f"127.0.0.1:{cp.xds_port}",
                ca_address=f"127.0.0.1:{cp.xds_port}", node_credential_dir=tmp_path / node,
            )
            ztunnels.append(Ztunnel(config))
        for zt in ztunnels:
            await zt.start()
        for zt in ztunnels:
            await zt.wait_ready(15)
        z1, z2 = ztunnels
        assert [str(i) for i in z2.secrets.identities] == ["spiffe://cluster.local/ns/demo/sa/server"]
        assert z1.socks5 is not None
        reader, writer = await socks5_connect(tuple(z1.socks5.address), client_ip, server_ip, port)
        writer.write(b"through the mesh")
        writer.write_eof()
        assert await reader.read() == b"through the mesh"
        writer.close()
        stats = z1.pool.stats()
        assert (stats.handshakes, stats.connections) == (1, 1)
    finally:
        for zt in ztunnels:
            await zt.stop()
        app.close()
        await cp.stop(grace=0)

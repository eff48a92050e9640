"""``ambientctl demo --control-plane``: the mesh's control plane end to end, with real processes, no root.

Steps (each printed, each checked; any failure prints what went wrong and exits 1):
1. apply the demo mesh (two pods on two nodes, a service, two policies) to a fresh embedded store while
   no control plane runs;
2. start ``istiod-lite`` as a real process on loopback and wait for ``/ready``;
3. connect to it as node-2's ztunnel would: node credential (mTLS), delta xDS; show the workloads,
   services and policies it pushes (the L7-only ALLOW rule is dropped: fail closed);
4. ``namespace enable demo`` and show the pods switch to HBONE in the pushed state;
5. ask the CA for the server pod's certificate as node-2 (granted: the pod runs there) and as node-1
   (refused: node authorization);
6. stop istiod-lite and print a summary.
The local-cluster demo (``ambientctl demo``: pods in network namespaces, HBONE traffic) grew from this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import resources as importlib_resources
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ambientctl.commands.common import CliError
from meshcore.store import SqliteStore, load_documents, store_path

console = Console()
POD = "Kubernetes//Pod/demo/{}"


def run_control_plane_demo(keep: bool, xds_port: int, monitoring_port: int) -> None:
    """Run the demo: control plane, delta xDS, policies and the CA's node authorization, for real."""
    state_dir = Path(tempfile.mkdtemp(prefix="ambient-demo-"))
    try:
        proc, creds = _start_control_plane(state_dir, xds_port, monitoring_port)
        try:
            ok = asyncio.run(_run(state_dir, xds_port, creds))
        finally:
            _stop(proc)
    finally:
        if keep:
            console.print(f"state directory kept: {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    if not ok:
        raise typer.Exit(1)


def _step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan]{n}.[/] [bold]{text}[/]")


def _istiod_binary() -> list[str]:
    exe = shutil.which("istiod-lite", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "istiod_lite"]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"istiod-lite exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback URL we built
                if r.status == 200:
                    return
        time.sleep(0.05)
    raise CliError(f"istiod-lite not ready after {deadline_s}s; see {log}")


def _start_control_plane(state_dir: Path, xds_port: int, monitoring_port: int) -> tuple[subprocess.Popen[bytes], dict[str, tuple[str, str, str]]]:
    from meshcore.aio.ca_client import load_node_credential

    _step(1, "Apply the demo mesh to the embedded store (no control plane running yet)")
    text = importlib_resources.files("ambientctl.data").joinpath("demo-mesh.yaml").read_text()
    with SqliteStore(store_path(state_dir)) as store:
        for r in store.apply(load_documents(text, "demo-mesh.yaml")):
            console.print(f"  {r.ref.kind.lower()}/{r.ref.name} {r.action}")

    _step(2, "Start istiod-lite (xDS + CA over mTLS, monitoring)")
    log_path = state_dir / "istiod-lite.log"
    env = {**os.environ, "AMBIENT_STATE_DIR": str(state_dir)}
    base = _istiod_binary()
    argv = [*base, "--xds-address", f"127.0.0.1:{xds_port}", "--monitoring-address", f"127.0.0.1:{monitoring_port}",
            "--token-ca-address", "off"]  # this demo has no pods with tokens; do not hold 15011
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{monitoring_port}/ready", proc, log_path)
        console.print(f"  istiod-lite pid {proc.pid} ready: xDS/CA 127.0.0.1:{xds_port}, monitoring :{monitoring_port}")
        creds = {}
        for node in ("node-1", "node-2"):
            out = state_dir / "nodes" / node
            subprocess.run([*base, "node-credential", node, "--out", str(out)], env=env, check=True, capture_output=True)
            creds[node] = load_node_credential(out)
        console.print("  node credentials issued for node-1 and node-2 (client certificates bound to the node)")
    except BaseException:
        _stop(proc)
        raise
    return proc, creds


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _run(state_dir: Path, xds_port: int, creds: dict[str, tuple[str, str, str]]) -> bool:
    from meshcore.aio.ca_client import CaCertificateProvider, CaClient, CaRefused
    from meshcore.aio.state_cell import StateCell
    from meshcore.aio.xds_client import XdsClient
    from meshcore.identity import SpiffeId
    from meshcore.model import TunnelProtocol
    from meshcore.state import ProxyState
    from meshcore.tls.contexts import channel_credentials, channel_options

    checks: list[tuple[str, bool]] = []
    _step(3, "Connect as node-2's ztunnel: delta xDS over mTLS")
    key, chain, roots = creds["node-2"]
    cell: StateCell[ProxyState] = StateCell(ProxyState.empty())
    xds = XdsClient(
        f"127.0.0.1:{xds_port}",
        channel_credentials(roots, key, chain),
        node_id="ztunnel~172.30.0.2~ztunnel-node-2.istio-system~istio-system.svc.cluster.local",
        metadata={"NODE_NAME": "node-2"},
        cell=cell,
        channel_options=channel_options(),
    )
    task = asyncio.create_task(xds.run())
    try:
        await asyncio.wait_for(xds.ready.wait(), 10)
        state = await cell.wait_for(lambda s: s.find_workload(POD.format("server")) is not None, timeout=5)
        _print_state(state)
        server = state.find_workload(POD.format("server"))
        checks.append(("pods pushed, not in the mesh yet", server.tunnel_protocol == TunnelProtocol.NONE))
        get_only = state.policies.get("demo/server-get-only")
        checks.append(("L7-only ALLOW rule dropped (fails closed)", get_only is not None and get_only.rules == ()))

        _step(4, "ambientctl namespace enable demo")
        with SqliteStore(store_path(state_dir)) as store:
            from meshcore.store.resource import ResourceRef

            store.set_labels(ResourceRef("Namespace", "", "demo"), {"istio.io/dataplane-mode": "ambient"}, [])
        started = time.perf_counter()
        state = await cell.wait_for(
            lambda s: all(
                (w := s.find_workload(POD.format(n))) is not None and w.tunnel_protocol == TunnelProtocol.HBONE
                for n in ("client", "server")
            ),
            timeout=5,
        )
        took = (time.perf_counter() - started) * 1000
        console.print(f"  both pods pushed as HBONE (in the mesh) {took:.0f} ms after the label was set")
        checks.append(("namespace enable pushed HBONE", True))
    finally:
        xds.close()
        await task

    _step(5, "Certificates: node authorization at the CA")
    server_id = SpiffeId("cluster.local", "demo", "server")
    for node, expect in (("node-2", True), ("node-1", False)):
        key, chain, roots = creds[node]
        async with CaClient(f"127.0.0.1:{xds_port}", roots, key, chain) as ca:
            try:
                bundle = await CaCertificateProvider(ca).fetch(server_id)
                console.print(
                    f"  {node} -> {server_id}: [green]granted[/] serial {bundle.serial:x}, valid until "
                    f"{bundle.not_after:%Y-%m-%d %H:%M} UTC"
                )
                checks.append((f"{node} may get the server pod's certificate", expect))
            except CaRefused as e:
                console.print(f"  {node} -> {server_id}: [red]refused[/] {e.code.name}: {e.message}")
                checks.append((f"{node} refused the server pod's certificate", not expect))
    _step(6, "Summary")
    for what, ok in checks:
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'} {what}")
    return all(ok for _, ok in checks)


def _print_state(state: object) -> None:
    from meshcore.model import TunnelProtocol

    t = Table(title="workloads pushed to node-2", title_justify="left")
    for col in ("NAMESPACE", "NAME", "IP", "NODE", "IDENTITY", "PROTOCOL"):
        t.add_column(col)
    for w in sorted(state.workloads.values(), key=lambda w: w.uid):  # type: ignore[attr-defined]
        t.add_row(w.namespace, w.name, ",".join(w.addresses), w.node, str(w.identity), TunnelProtocol(w.tunnel_protocol).name)
    console.print(t)
    t = Table(title="services", title_justify="left")
    for col in ("KEY", "VIP", "PORTS"):
        t.add_column(col)
    for s in state.services.values():  # type: ignore[attr-defined]
        t.add_row(s.key, ",".join(a.address for a in s.addresses), ",".join(f"{p.service_port}" for p in s.ports))
    console.print(t)
    t = Table(title="L4 policies", title_justify="left")
    for col in ("KEY", "ACTION", "RULES"):
        t.add_column(col)
    for p in state.policies.values():  # type: ignore[attr-defined]
        t.add_row(p.key, p.action.name, str(len(p.rules)) + ("" if p.rules else " (matches nothing: fails closed)"))
    console.print(t)

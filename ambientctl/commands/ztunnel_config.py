"""``ztunnel-config`` (alias ``zc``): one ztunnel's view of the mesh, read from its admin endpoint.

Sub-commands mirror ``istioctl ztunnel-config``: ``workloads``, ``services``, ``policies``,
``certificates``, ``connections`` and ``all``, with Istio's aliases and table columns, or the raw
items with ``-o json|yaml``. The data comes from ``GET <admin>/config_dump`` (live connections from its
``workloadState``, or ``/connections`` when a dump has none), or from a saved dump with ``-f``; nothing here talks to the store or imports
ztunnel: the admin HTTP endpoint is ztunnel's public face. Turning a dump into rows is done by pure
functions (``*_table``) that tolerate both Istio's spellings (``"Allow"``, ``"Healthy"``) and enum
numbers, and never fail on a missing field (it prints ``NA``). An unreachable or non-ztunnel endpoint
is one actionable error line. ``--node NAME`` reads the ztunnel of that node of the local cluster
(its admin port listens on 127.0.0.1 inside the node's network namespace, so the request is made there).
With ``--kubeconfig``/``--context``, ``--node NAME`` reads the ztunnel pod on that Kubernetes node (label
``app=ztunnel`` in ``istio-system``) through the API server's pod port-forward: a WebSocket with the
``v4.channel.k8s.io`` subprotocol to ``pods/NAME/portforward?ports=15000``, one HTTP/1.1 request on its
data channel, the answer read until complete; anything on the error channel is the error shown (the
port-forward lives in ``ambientctl.troubleshoot.remote``, shared with the troubleshooting commands).
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from meshcore.model.authorization import Action, Scope
from meshcore.model.workload import TunnelProtocol, WorkloadStatus

from .common import CliError, print_table

DEFAULT_ADMIN = "http://127.0.0.1:15000"
ADMIN_TIMEOUT_S = 5.0
NA = "NA"

Row = list[str]
Table = tuple[list[str], list[Row]]

WORKLOAD_HEADERS = ["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"]
SERVICE_HEADERS = ["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"]
POLICY_HEADERS = ["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"]
CERTIFICATE_HEADERS = [
    "CERTIFICATE NAME",
    "TYPE",
    "STATUS",
    "VALID CERT",
    "SERIAL NUMBER",
    "NOT AFTER",
    "NOT BEFORE",
]
CONNECTION_HEADERS = ["WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL"]


class Output(StrEnum):
    short = "short"
    json = "json"
    yaml = "yaml"


class Direction(StrEnum):
    inbound = "inbound"
    outbound = "outbound"


# --- where the dump comes from ----------------------------------------------------------------------


NODE_SCHEME = "node://"


def node_admin_address(node: str) -> str | None:
    """The admin "address" of the local cluster's ztunnel on ``node``: ``node://NAME``, read in its netns."""
    return f"{NODE_SCHEME}{node}"


def _local_cluster_dump(node: str) -> Any:
    """GET /config_dump on the node's ztunnel from inside the node's netns (admin is 127.0.0.1 there)."""
    from typer._click.globals import get_current_context

    from ambientctl.cluster import ClusterError
    from ambientctl.cluster.cluster import Cluster
    from ambientctl.cluster.mesh import Mesh

    from .common import cli_state

    ctx = get_current_context(silent=True)
    state_dir = cli_state(ctx).state_dir() if ctx is not None else None
    if state_dir is None:
        raise CliError("--node needs the local cluster's state directory (--state-dir)")
    try:
        status, body = Mesh(Cluster(state_dir)).ztunnel_get(node, "/config_dump")
    except (ClusterError, OSError) as e:
        raise CliError(f"cannot read the ztunnel of node {node!r} in the local cluster: {e}") from None
    if status != 200:
        raise CliError(f"the ztunnel of node {node!r} answered HTTP {status} for /config_dump")
    try:
        return json.loads(body)
    except ValueError as e:
        raise CliError(f"the ztunnel of node {node!r} did not return JSON ({e})") from None


# --- through the Kubernetes API server's port-forward ---------------------------------------------------

KUBE_SCHEME = "kube-node://"
ZTUNNEL_ADMIN_PORT = 15000


def _cli_state() -> Any:
    """The invocation's ``CliState`` (None outside a command)."""
    from typer._click.globals import get_current_context

    from .common import cli_state

    ctx = get_current_context(silent=True)
    return cli_state(ctx) if ctx is not None else None


def _on_kubernetes() -> bool:
    state = _cli_state()
    return bool(state is not None and state.on_kubernetes)


def _kube_admin_json(node: str, path: str) -> Any:
    """GET ``path`` of the ztunnel admin on Kubernetes node ``node`` through the API server (the shared
    ``troubleshoot.remote.KubeReach``)."""
    from ambientctl.troubleshoot.reach import ReachError, Target
    from ambientctl.troubleshoot.remote import KubeReach

    if not node:
        raise CliError("with --kubeconfig/--context, name the node whose ztunnel to read: --node NAME (reached "
                       "through the API server's pod port-forward), or pass --admin URL")
    state = _cli_state()
    try:
        reach = KubeReach.connect(state.kubeconfig, state.kube_context, timeout=ADMIN_TIMEOUT_S * 2)
        answer = reach.get(Target("node", node=node), ZTUNNEL_ADMIN_PORT, path)
    except ReachError as e:
        raise CliError(str(e)) from None
    where = f"on node {node!r} (through the API server's port-forward)"
    if answer.status != 200:
        raise CliError(f"the ztunnel {where} answered HTTP {answer.status} for {path}: is this a ztunnel's admin port?")
    try:
        return json.loads(answer.body)
    except ValueError as e:
        raise CliError(f"the ztunnel {where} did not return JSON for {path} ({e})") from None


def _admin_json(base: str, path: str) -> Any:
    if base.startswith(KUBE_SCHEME):
        return _kube_admin_json(base[len(KUBE_SCHEME):], path)
    return fetch_json(base, path)


def admin_base(admin: str | None, node: str | None) -> str:
    """``--admin`` / ``--node`` to a base URL (``http://host:port``), or a ``CliError`` saying what to pass.
    With ``--kubeconfig``/``--context`` and no ``--admin``: ``kube-node://NODE`` (read through the API server)."""
    if admin and node:
        raise CliError("pass either --admin or --node, not both")
    if not admin and _on_kubernetes():
        return f"{KUBE_SCHEME}{node or ''}"
    if node:
        found = node_admin_address(node)
        if found is None:
            raise CliError(
                f"cannot find the ztunnel of node {node!r}: node names are resolved by the local cluster, "
                f"which knows no such node here; pass --admin http://<ztunnel address>:15000 instead"
            )
        admin = found
    url = (admin or DEFAULT_ADMIN).rstrip("/")
    if url.startswith(NODE_SCHEME):
        return url
    if "://" not in url:
        url = "http://" + url
    if not url.startswith("http://"):
        raise CliError(f"--admin {admin!r}: the ztunnel admin endpoint speaks plain http (http://HOST:PORT)")
    return url


def fetch_json(base: str, path: str, *, timeout: float = ADMIN_TIMEOUT_S) -> Any:
    """GET ``base + path`` and decode JSON; every failure is a ``CliError`` an operator can act on."""
    url = base + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise CliError(
            f"ztunnel admin endpoint {base} answered HTTP {e.code} for {path}: is this a ztunnel's admin port?"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CliError(
            f"cannot reach the ztunnel admin endpoint at {base} ({reason}): is ztunnel running there? "
            f"Its admin port listens on 127.0.0.1:15000 of its node; pass --admin URL or --node NAME"
        ) from None
    try:
        return json.loads(body)
    except ValueError as e:
        raise CliError(f"ztunnel admin endpoint {base}{path} did not return JSON ({e})") from None


def load_dump(base: str, file: Path | None) -> dict[str, Any]:
    if file is not None:
        try:
            dump = json.loads(file.read_text())
        except OSError as e:
            raise CliError(f"cannot read config dump {file}: {e.strerror}") from None
        except ValueError as e:
            raise CliError(f"{file} is not a JSON config dump ({e})") from None
    elif base.startswith(NODE_SCHEME):
        dump = _local_cluster_dump(base[len(NODE_SCHEME):])
    else:
        dump = _admin_json(base, "/config_dump")
    if not isinstance(dump, dict):
        raise CliError("the config dump is not a JSON object: is this a ztunnel's /config_dump?")
    return dump


def load_connections(base: str, dump: Mapping[str, Any], file: Path | None) -> list[dict[str, Any]]:
    """Live connections: the dump's ``workloadState`` (what istioctl reads), else ``/connections``."""
    if isinstance(dump.get("workloadState"), dict) or file is not None:
        return connections_from_workload_state(dump)
    live = _admin_json(base, "/connections")
    if not isinstance(live, list):
        raise CliError(f"ztunnel admin endpoint {base}/connections did not return a list")
    return [connection_from_admin(c) for c in live if isinstance(c, dict)]


def connection_from_admin(c: Mapping[str, Any]) -> dict[str, Any]:
    """A ``/connections`` entry in istioctl's terms: inbound LOCAL is the app the tunnel was delivered
    to; outbound LOCAL is the app that opened it and REMOTE the next hop; REMOTE TARGET the original
    destination."""
    inbound = str(c.get("direction", "")).lower() == "inbound"
    return {
        "workload": c.get("workload", ""),
        "direction": "inbound" if inbound else "outbound",
        "local": c.get("target", "") if inbound else c.get("remote", ""),
        "remote": c.get("remote", "") if inbound else c.get("target", ""),
        "target": c.get("originalDst", ""),
        "protocol": c.get("protocol", ""),
    }


def connections_from_workload_state(dump: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Istio's shape: ``workloadState[uid] = {info: {name, namespace}, connections: {inbound, outbound}}``."""
    out: list[dict[str, Any]] = []
    states = dump.get("workloadState")
    if not isinstance(states, dict):
        return out
    for state in states.values():
        if not isinstance(state, dict):
            continue
        info = state.get("info") or {}
        workload = f"{info.get('name', '')}.{info.get('namespace', '')}"
        conns = state.get("connections") or {}
        for c in conns.get("inbound") or ():
            out.append(
                {
                    "workload": workload,
                    "direction": "inbound",
                    "local": c.get("actualDst") or c.get("dst", ""),
                    "remote": c.get("src", ""),
                    "target": c.get("originalDst", ""),
                    "protocol": c.get("protocol", ""),
                }
            )
        for c in conns.get("outbound") or ():
            out.append(
                {
                    "workload": workload,
                    "direction": "outbound",
                    "local": c.get("src", ""),
                    "remote": c.get("actualDst", ""),
                    "target": c.get("originalDst", ""),
                    "protocol": c.get("protocol", ""),
                }
            )
    return out


# --- pure: dump -> rows -----------------------------------------------------------------------------


def _items(dump: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """A list section; older ztunnels sent maps keyed by address, so take their values."""
    value = dump.get(key)
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict)]


def _strip_network(address: str) -> str:
    """``network/10.0.0.1`` -> ``10.0.0.1`` (ztunnel's NetworkAddress rendering)."""
    return address.rsplit("/", 1)[-1] if "/" in address else address


def _label(value: Any, enum: Callable[[int], Any], names: Mapping[str, str]) -> str:
    """Istio's display word for an enum given as its number, its proto name or already the word."""
    if isinstance(value, bool) or value is None or value == "":
        return NA
    if isinstance(value, int):
        try:
            value = enum(value).name
        except ValueError:
            return str(value)
    key = str(value).upper().replace("_", "").replace("-", "")
    return names.get(key, str(value))


_PROTOCOLS = {"HBONE": "HBONE", "NONE": "TCP", "TCP": "TCP", "LEGACYISTIOMTLS": "LEGACY_ISTIO_MTLS"}
_STATUSES = {"HEALTHY": "Healthy", "UNHEALTHY": "Unhealthy"}
_ACTIONS = {"ALLOW": "Allow", "DENY": "Deny"}
_SCOPES = {"GLOBAL": "Global", "NAMESPACE": "Namespace", "WORKLOADSELECTOR": "WorkloadSelector"}


def _waypoint_destination(waypoint: Any) -> str:
    """The dump's waypoint as one string: ztunnel writes ``{"destination": "network/ip"}`` or
    ``{"destination": "namespace/hostname"}``; older shapes nest an address or hostname object."""
    if not isinstance(waypoint, dict):
        return str(waypoint)
    dest = waypoint.get("destination") or waypoint.get("address") or waypoint.get("hostname") or ""
    if isinstance(dest, dict):
        host = dest.get("hostname")
        if isinstance(host, dict):  # {"hostname": {"namespace": ..., "hostname": ...}}
            return f"{host.get('namespace', '')}/{host.get('hostname', '')}"
        dest = dest.get("address") or host or ""
    return str(dest)


def _waypoint_name(waypoint: Any, services: Sequence[Mapping[str, Any]]) -> str:
    """istioctl's WAYPOINT: ``None`` when unset; else the name of the service the waypoint points at
    (one of its VIPs, whatever the network, or its ``namespace/hostname``); else the bare address or
    hostname (istioctl prints ``NA`` there, which hides what ztunnel was told)."""
    if not waypoint:
        return "None"
    dest = _waypoint_destination(waypoint)
    bare = _strip_network(dest)
    if not bare:
        return NA
    for svc in services:
        vips = {_strip_network(str(v)) for v in svc.get("vips") or ()}
        hostname = svc.get("hostname")
        by_host = bool(hostname) and dest in (hostname, f"{svc.get('namespace', '')}/{hostname}")
        if by_host or bare in vips:
            return str(svc.get("name") or bare)
    return bare


def _matches(value: Any, wanted: str | None) -> bool:
    return wanted is None or str(value or "").lower() == wanted.lower()


def filter_workloads(
    dump: Mapping[str, Any],
    *,
    namespace: str | None = None,
    address: str | None = None,
    node: str | None = None,
) -> list[dict[str, Any]]:
    out = []
    for w in _items(dump, "workloads"):
        ips = [_strip_network(str(ip)) for ip in w.get("workloadIps") or ()]
        if _matches(w.get("namespace"), namespace) and _matches(w.get("node"), node):
            if address is None or address in ips:
                out.append(w)
    return sorted(
        out, key=lambda w: (str(w.get("namespace", "")), str(w.get("name", "")), str(w.get("node", "")))
    )


def workload_table(workloads: Iterable[Mapping[str, Any]], services: Sequence[Mapping[str, Any]]) -> Table:
    rows = []
    for w in workloads:
        ips = [_strip_network(str(ip)) for ip in w.get("workloadIps") or ()]
        rows.append(
            [
                str(w.get("namespace") or NA),
                str(w.get("name") or NA),
                ips[0] if ips else "None",
                str(w.get("node") or NA),
                _waypoint_name(w.get("waypoint"), services),
                _label(w.get("protocol"), TunnelProtocol, _PROTOCOLS),
            ]
        )
    return WORKLOAD_HEADERS, rows


def filter_services(dump: Mapping[str, Any], *, namespace: str | None = None) -> list[dict[str, Any]]:
    out = [s for s in _items(dump, "services") if _matches(s.get("namespace"), namespace)]
    return sorted(
        out, key=lambda s: (str(s.get("namespace", "")), str(s.get("name", "")), str(s.get("hostname", "")))
    )


def service_table(services: Iterable[Mapping[str, Any]], dump: Mapping[str, Any]) -> Table:
    """ENDPOINTS is healthy/total: healthy means the workload is known and Healthy (the endpoint's own
    ``status`` when the dump gives one)."""
    all_services = _items(dump, "services")
    status_by_uid = {str(w.get("uid")): w.get("status") for w in _items(dump, "workloads")}
    rows = []
    for s in services:
        endpoints = s.get("endpoints") or {}
        eps = list(endpoints.values()) if isinstance(endpoints, dict) else list(endpoints)
        healthy = 0
        for ep in eps:
            if not isinstance(ep, dict):
                continue
            uid = str(ep.get("workloadUid"))
            if uid not in status_by_uid:  # an endpoint whose workload this ztunnel does not know
                continue
            status = ep.get("status", status_by_uid[uid])
            if _label(status, WorkloadStatus, _STATUSES) == "Healthy":
                healthy += 1
        vips = ",".join(_strip_network(str(v)) for v in s.get("vips") or ()) or "None"
        rows.append(
            [
                str(s.get("namespace") or NA),
                str(s.get("name") or NA),
                vips,
                _waypoint_name(s.get("waypoint"), all_services),
                f"{healthy}/{len(eps)}",
            ]
        )
    return SERVICE_HEADERS, rows


def filter_policies(dump: Mapping[str, Any], *, namespace: str | None = None) -> list[dict[str, Any]]:
    out = [p for p in _items(dump, "policies") if _matches(p.get("namespace"), namespace)]
    return sorted(out, key=lambda p: (str(p.get("namespace", "")), str(p.get("name", ""))))


def policy_table(policies: Iterable[Mapping[str, Any]]) -> Table:
    rows = [
        [
            str(p.get("namespace") or NA),
            str(p.get("name") or NA),
            _label(p.get("action"), Action, _ACTIONS),
            _label(p.get("scope"), Scope, _SCOPES),
        ]
        for p in policies
    ]
    return POLICY_HEADERS, rows


def _serial_hex(value: Any) -> str:
    """Istio prints serials in hex; dumps carry them in decimal (ztunnel) or already hex."""
    if value is None or value == "":
        return NA
    if isinstance(value, int):
        return format(value, "x")
    text = str(value)
    return format(int(text), "x") if text.isdigit() else text.lower().removeprefix("0x").replace(":", "")


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def certificate_table(certificates: Iterable[Mapping[str, Any]], *, now: datetime) -> Table:
    """One row per certificate: the leaf, its intermediates, its roots; ``NA`` rows while none is held."""
    rows: list[Row] = []
    for entry in certificates:
        identity = str(entry.get("identity") or NA)
        state = str(entry.get("state") or NA)
        if state.startswith("Unavailable"):
            state = "Unavailable"  # ztunnel appends the error ("Unavailable: ...")
        chain = [c for c in entry.get("certChain") or () if isinstance(c, dict)]
        roots = [c for c in entry.get("rootCerts") or () if isinstance(c, dict)]
        typed = [("Leaf", c) for c in chain[:1]] + [("Intermediate", c) for c in chain[1:]]
        typed += [("Root", c) for c in roots]
        if not typed:
            rows.append([identity, NA, state, "false", NA, NA, NA])
            continue
        for kind, cert in typed:
            start, end = _parse_time(cert.get("validFrom")), _parse_time(cert.get("expirationTime"))
            valid = start is not None and end is not None and start <= now <= end
            rows.append(
                [
                    identity,
                    kind,
                    state,
                    "true" if valid else "false",
                    _serial_hex(cert.get("serialNumber")),
                    str(cert.get("expirationTime") or NA),
                    str(cert.get("validFrom") or NA),
                ]
            )
    return CERTIFICATE_HEADERS, rows


def _names_by_ip(dump: Mapping[str, Any]) -> dict[str, str]:
    """IP -> service hostname, else workload ``name.namespace`` (services win, as in istioctl)."""
    names: dict[str, str] = {}
    for w in _items(dump, "workloads"):
        for ip in w.get("workloadIps") or ():
            names[_strip_network(str(ip))] = f"{w.get('name', '')}.{w.get('namespace', '')}"
    for s in _items(dump, "services"):
        for vip in s.get("vips") or ():
            names[_strip_network(str(vip))] = str(s.get("hostname") or s.get("name") or "")
    return names


def _split_host_port(addr: str) -> tuple[str, str] | None:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


def filter_connections(
    connections: Iterable[Mapping[str, Any]], *, direction: str | None = None, namespace: str | None = None
) -> list[Mapping[str, Any]]:
    out = []
    for c in connections:
        if direction is not None and str(c.get("direction", "")).lower() != direction:
            continue
        if namespace is not None and str(c.get("workload", "")).rsplit(".", 1)[-1] != namespace:
            continue
        out.append(c)
    return sorted(
        out, key=lambda c: (str(c.get("workload", "")), str(c.get("direction", "")).lower() != "inbound")
    )


def connection_table(
    connections: Iterable[Mapping[str, Any]], dump: Mapping[str, Any], *, raw: bool
) -> Table:
    """Addresses are shown by name (service hostname or workload) unless ``raw``, as ``istioctl zc cons``."""
    names = {} if raw else _names_by_ip(dump)

    def show(addr: Any) -> str:
        text = str(addr or "")
        if not text:
            return ""
        split = _split_host_port(text)
        if split is None or split[0] not in names:
            return text
        return f"{names[split[0]]}:{split[1]}"

    rows = [
        [
            str(c.get("workload") or NA),
            str(c.get("direction") or NA).capitalize(),
            show(c.get("local")),
            show(c.get("remote")),
            show(c.get("target")),
            str(c.get("protocol") or NA).upper(),
        ]
        for c in connections
    ]
    return CONNECTION_HEADERS, rows


# --- commands ---------------------------------------------------------------------------------------

AdminOption = Annotated[
    str | None,
    typer.Option(
        "--admin", help=f"The ztunnel's admin endpoint (default {DEFAULT_ADMIN}).", show_default=False
    ),
]
NodeOption = Annotated[
    str | None, typer.Option("--node", help="Read the ztunnel of this node (local cluster).")
]
FileOption = Annotated[
    Path | None,
    typer.Option("-f", "--file", help="Read a saved /config_dump JSON file instead.", dir_okay=False),
]
OutputOption = Annotated[Output, typer.Option("-o", "--output", help="Output format.")]


def _emit(items: Any, output: Output) -> None:
    if output is Output.json:
        typer.echo(json.dumps(items, indent=4))
    else:
        typer.echo(yaml.safe_dump(items, sort_keys=False, default_flow_style=False).rstrip("\n"))


def _show(table: Table) -> None:
    headers, rows = table
    print_table(headers, rows)


def workloads(
    admin: AdminOption = None,
    node: NodeOption = None,
    file: FileOption = None,
    output: OutputOption = Output.short,
    workload_namespace: Annotated[
        str | None, typer.Option("--workload-namespace", help="Only this namespace.")
    ] = None,
    address: Annotated[str | None, typer.Option("--address", help="Only the workload with this IP.")] = None,
    workload_node: Annotated[
        str | None, typer.Option("--workload-node", help="Only workloads on this node.")
    ] = None,
) -> None:
    """Workloads this ztunnel knows (NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL)."""
    dump = load_dump(admin_base(admin, node), file)
    items = filter_workloads(dump, namespace=workload_namespace, address=address, node=workload_node)
    if output is not Output.short:
        return _emit(items, output)
    _show(workload_table(items, _items(dump, "services")))


def services(
    admin: AdminOption = None,
    node: NodeOption = None,
    file: FileOption = None,
    output: OutputOption = Output.short,
    service_namespace: Annotated[
        str | None, typer.Option("--service-namespace", help="Only this namespace.")
    ] = None,
) -> None:
    """Services this ztunnel knows (NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS)."""
    dump = load_dump(admin_base(admin, node), file)
    items = filter_services(dump, namespace=service_namespace)
    if output is not Output.short:
        return _emit(items, output)
    _show(service_table(items, dump))


def policies(
    admin: AdminOption = None,
    node: NodeOption = None,
    file: FileOption = None,
    output: OutputOption = Output.short,
    policy_namespace: Annotated[
        str | None, typer.Option("--policy-namespace", help="Only this namespace.")
    ] = None,
) -> None:
    """Authorization policies this ztunnel enforces (NAMESPACE POLICY NAME ACTION SCOPE)."""
    dump = load_dump(admin_base(admin, node), file)
    items = filter_policies(dump, namespace=policy_namespace)
    if output is not Output.short:
        return _emit(items, output)
    _show(policy_table(items))


def certificates(
    admin: AdminOption = None,
    node: NodeOption = None,
    file: FileOption = None,
    output: OutputOption = Output.short,
) -> None:
    """Certificates this ztunnel holds for its local workloads' identities."""
    dump = load_dump(admin_base(admin, node), file)
    items = _items(dump, "certificates")
    if output is not Output.short:
        return _emit(items, output)
    _show(certificate_table(items, now=datetime.now(UTC)))


def connections(
    admin: AdminOption = None,
    node: NodeOption = None,
    file: FileOption = None,
    output: OutputOption = Output.short,
    direction: Annotated[Direction | None, typer.Option("--direction", help="Only this direction.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Show IP addresses instead of names.")] = False,
    workload_namespace: Annotated[
        str | None, typer.Option("--workload-namespace", help="Only this namespace.")
    ] = None,
) -> None:
    """Live connections through this ztunnel (WORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL)."""
    base = admin_base(admin, node)
    dump = load_dump(base, file)
    items = filter_connections(
        load_connections(base, dump, file),
        direction=direction.value if direction else None,
        namespace=workload_namespace,
    )
    if output is not Output.short:
        return _emit(items, output)
    _show(connection_table(items, dump, raw=raw))


def all_(
    admin: AdminOption = None,
    node: NodeOption = None,
    file: FileOption = None,
    output: OutputOption = Output.short,
) -> None:
    """Everything: workloads, services, policies, certificates and connections."""
    base = admin_base(admin, node)
    dump = load_dump(base, file)
    conns = filter_connections(load_connections(base, dump, file))
    if output is not Output.short:
        return _emit({**dump, "connections": list(conns)}, output)
    sections: list[tuple[str, Table]] = [
        ("WORKLOAD INFO", workload_table(filter_workloads(dump), _items(dump, "services"))),
        ("SERVICE INFO", service_table(filter_services(dump), dump)),
        ("POLICY INFO", policy_table(filter_policies(dump))),
        ("SECRET INFO", certificate_table(_items(dump, "certificates"), now=datetime.now(UTC))),
        ("CONNECTIONS INFO", connection_table(conns, dump, raw=False)),
    ]
    for i, (title, table) in enumerate(sections):
        if i:
            typer.echo("")
        typer.echo(f"------ {title} ------")
        _show(table)


_COMMANDS: list[tuple[Callable[..., None], str, tuple[str, ...]]] = [
    (workloads, "workloads", ("workload", "w")),
    (services, "services", ("service", "svc", "s")),
    (policies, "policies", ("policy", "pol", "p")),
    (certificates, "certificates", ("certificate", "certs", "cert")),
    (connections, "connections", ("cons",)),
    (all_, "all", ()),
]


def _build() -> typer.Typer:
    group = typer.Typer(
        help="Show one ztunnel's workloads, services, policies, certificates and connections (short: zc).",
        no_args_is_help=True,
    )
    for func, name, aliases in _COMMANDS:
        group.command(name)(func)
        for alias in aliases:
            group.command(alias, hidden=True)(func)
    return group


def register(app: typer.Typer) -> None:
    group = _build()
    app.add_typer(group, name="ztunnel-config")
    app.add_typer(group, name="zc", hidden=True)

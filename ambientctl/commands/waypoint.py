"""``waypoint generate|apply|list|status|delete``: istioctl's waypoint commands, on the store.

A waypoint is a Gateway API ``Gateway`` of class ``istio-waypoint`` with the one listener
``{name: mesh, port: 15008, protocol: HBONE}``. istiod_lite's waypoint controller deploys it and reports
back in the Gateway's ``status`` (``addresses``; conditions ``Accepted`` and ``Programmed``); these
commands write the Gateway and read that status, so they work whether or not istiod_lite runs.
``--service-account SA`` makes this project's per-service-account waypoint (Istio 1.21's shape: the
annotation ``istio.io/for-service-account: SA`` and, unless ``--name`` is given, the name SA).

Invariants: every Gateway written passes the store's own schema (``build_resource``; kubernetes-validate
ships no Gateway API schemas) and has a name that can become its Service's name (a DNS-1123 label, never
the reserved ``none``); ``apply`` never writes ``status`` (the controller owns it), keeps labels and
annotations it does not manage, and refuses to turn a Gateway of another class into a waypoint; every
wait is bounded by ``--waypoint-timeout``. Result lines are istioctl's (stdout); warnings go to stderr.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml

from meshcore.store import (
    ApplyResult,
    InvalidResource,
    Resource,
    ResourceRef,
    SqliteStore,
    build_resource,
    name_problem,
)

from .columns import gateway_condition, gateway_programmed
from .common import CliError, OutputFormat, cli_state, note, print_documents, print_table

GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
WAYPOINT_CLASS = "istio-waypoint"
MESH_LISTENER: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
DEFAULT_NAME = "waypoint"
# istio.io/use-waypoint=none opts a resource out of its namespace's waypoint: no waypoint may be named so.
RESERVED_NAME = "none"
DEFAULT_NAMESPACE = "default"
DEFAULT_REVISION = "default"

WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"
REVISION_LABEL = "istio.io/rev"
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
FOR_SERVICE_ACCOUNT_ANNOTATION = "istio.io/for-service-account"
# On what the waypoint controller makes for a Gateway (its pod and Service).
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
# What this command owns on a Gateway (as istioctl's server-side apply field manager does); other
# labels and annotations are left as they are.
MANAGED_LABELS = (WAYPOINT_FOR_LABEL, REVISION_LABEL)
MANAGED_ANNOTATIONS = (FOR_SERVICE_ACCOUNT_ANNOTATION,)

DEFAULT_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.1

PROGRAMMED = "Programmed"
# What a Gateway's status says before any controller acted (the Gateway API CRD's default status).
PENDING_CONDITION: dict[str, str] = {
    "type": PROGRAMMED,
    "status": "Unknown",
    "reason": "Pending",
    "message": "Waiting for controller",
}


class TrafficType(StrEnum):
    """``--for``: which traffic the waypoint takes (label ``istio.io/waypoint-for``)."""

    service = "service"
    workload = "workload"
    all = "all"
    none = "none"


# --- pure: the Gateway document and what its status says ---------------------------------------------


def resolve_name(name: str | None, service_account: str | None) -> str:
    """The waypoint's name: ``--name``, else ``<sa>-waypoint`` (per-SA), else ``waypoint``.

    The per-SA default is not the service account's own name: the waypoint's pod runs as a service account
    named after its Gateway, and sharing the served account would give the waypoint the identity of the
    workloads it serves (their policies would apply to it, and theirs to its traffic)."""
    if not name:  # istioctl: an empty --name means the default
        name = f"{service_account}-waypoint" if service_account else DEFAULT_NAME
    if name == RESERVED_NAME:
        raise CliError(
            "invalid name provided for waypoint, 'none' is a reserved value "
            f"({USE_WAYPOINT_LABEL}=none opts a namespace, service or pod out of waypoints); "
            "choose another --name"
        )
    problem = name_problem(name, label=True)
    if problem:
        where = "--name" if service_account is None or name != f"{service_account}-waypoint" else (
            "the service account name (pass --name)"
        )
        raise CliError(f"waypoint {problem}; a waypoint's name becomes its Service's name: fix {where}")
    return name


def build_waypoint(
    name: str,
    namespace: str | None,
    *,
    traffic_type: TrafficType | None = None,
    revision: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """The waypoint Gateway as a document (``namespace`` None: left out, as ``istioctl waypoint
    generate`` without ``-n`` does), checked against the store's schema; raises ``CliError``."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    labels: dict[str, str] = {}
    # Only label what the user asked for: without --for, istiod_lite applies the class's default.
    if traffic_type is not None:
        labels[WAYPOINT_FOR_LABEL] = traffic_type.value
    if revision:
        labels[REVISION_LABEL] = revision
    if labels:
        metadata["labels"] = labels
    if service_account:
        problem = name_problem(service_account, label=False)
        if problem:
            raise CliError(f"--service-account: service account {problem}")
        metadata["annotations"] = {FOR_SERVICE_ACCOUNT_ANNOTATION: service_account}
    doc: dict[str, Any] = {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {"gatewayClassName": WAYPOINT_CLASS, "listeners": [dict(MESH_LISTENER)]},
    }
    to_resource(doc)  # validation only: what generate prints must apply
    return doc


def to_resource(doc: Mapping[str, Any]) -> Resource:
    """``doc`` validated by the store's schema; a failure is a ``CliError`` naming the field."""
    try:
        return build_resource(doc, source="waypoint")
    except InvalidResource as e:
        raise CliError(f"the generated waypoint is invalid: {e}") from None


def render_yaml(doc: Mapping[str, Any]) -> str:
    """YAML as istioctl prints it (keys sorted, block style)."""
    return yaml.safe_dump(dict(doc), sort_keys=True, default_flow_style=False)


def is_waypoint(gateway: Resource) -> bool:
    return gateway.kind == "Gateway" and gateway.spec.get("gatewayClassName") == WAYPOINT_CLASS


def is_programmed(gateway: Resource | None) -> bool:
    return gateway is not None and gateway_programmed(gateway) == "True"


def traffic_type(gateway: Resource) -> str:
    """TRAFFIC TYPE: the ``istio.io/waypoint-for`` label, else what istiod_lite applies without it:
    ``all`` for a per-service-account waypoint (it serves its SA's workloads and services), else
    ``service``."""
    label = gateway.labels.get(WAYPOINT_FOR_LABEL)
    if label:
        return label
    return TrafficType.all.value if FOR_SERVICE_ACCOUNT_ANNOTATION in gateway.annotations else "service"


def revision_of(gateway: Resource) -> str:
    return gateway.labels.get(REVISION_LABEL) or DEFAULT_REVISION


def list_table(gateways: Iterable[Resource], *, all_namespaces: bool) -> tuple[list[str], list[list[str]]]:
    """``waypoint list``: NAME REVISION TRAFFIC TYPE PROGRAMMED (NAMESPACE first with ``-A``)."""
    headers = ["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"]
    rows = []
    for gw in sorted(gateways, key=lambda g: (g.namespace, g.name)):
        row = [gw.name, revision_of(gw), traffic_type(gw), gateway_programmed(gw)]
        rows.append([gw.namespace, *row] if all_namespaces else row)
    return (["NAMESPACE", *headers] if all_namespaces else headers), rows


def status_table(gateways: Iterable[Resource], *, all_namespaces: bool) -> tuple[list[str], list[list[str]]]:
    """``waypoint status``: the ``Programmed`` condition per waypoint (the CRD's pending default when
    no controller has written one): NAME STATUS TYPE REASON MESSAGE (NAMESPACE first with ``-A``)."""
    headers = ["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]
    rows = []
    for gw in sorted(gateways, key=lambda g: (g.namespace, g.name)):
        cond = gateway_condition(gw, PROGRAMMED) or PENDING_CONDITION
        row = [gw.name, *(str(cond.get(k) or "") for k in ("status", "type", "reason", "message"))]
        rows.append([gw.namespace, *row] if all_namespaces else row)
    return (["NAMESPACE", *headers] if all_namespaces else headers), rows


def describe_condition(gateway: Resource | None) -> str:
    """One phrase for an error: what the Gateway's Programmed condition says now."""
    if gateway is None:
        return "the Gateway is gone"
    found = gateway_condition(gateway, PROGRAMMED)
    if found is None:
        return "no status yet: no waypoint controller has acted on it"
    parts = [f"Programmed={found.get('status', 'Unknown')}"]
    for key in ("reason", "message"):
        if found.get(key):
            parts.append(str(found[key]))
    return ", ".join(parts)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration as istioctl takes it (``90s``, ``2m``, ``1m30s``, ``500ms``), or a
    plain number of seconds; raises ``ValueError`` with the accepted forms."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 2m, 1m30s, 500ms") from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds):  # float() also reads "nan" and "inf"
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 2m, 1m30s, 500ms")
    if seconds <= 0:
        raise ValueError(f"{text!r}: the timeout must be more than zero")
    return seconds


# --- store operations (what the commands, and the demo, call) -----------------------------------------


def merge_for_apply(existing: Resource | None, wanted: Resource) -> Resource:
    """What ``apply`` writes: ``wanted``, keeping from ``existing`` the labels, annotations, spec fields
    and listeners (by name) that this command does not manage, and never a status (the store keeps the
    stored one). Refuses to take over a Gateway of another class."""
    if existing is None:
        return wanted
    if not is_waypoint(existing):
        raise CliError(
            f"gateway {existing.namespace}/{existing.name} exists and is not a waypoint "
            f"(gatewayClassName {existing.spec.get('gatewayClassName')!r}); choose another --name"
        )
    labels = {k: v for k, v in existing.labels.items() if k not in MANAGED_LABELS} | wanted.labels
    annotations = {
        k: v for k, v in existing.annotations.items() if k not in MANAGED_ANNOTATIONS
    } | wanted.annotations
    ours = [lst for lst in wanted.spec.get("listeners", [])]
    names = {lst.get("name") for lst in ours}
    theirs = [
        lst
        for lst in existing.spec.get("listeners") or ()
        if isinstance(lst, dict) and lst.get("name") not in names
    ]
    spec = {**existing.spec, **wanted.spec, "listeners": ours + theirs}
    return Resource(
        kind=wanted.kind,
        name=wanted.name,
        namespace=wanted.namespace,
        api_version=wanted.api_version,
        labels=labels,
        annotations=annotations,
        spec=spec,
    )


def apply_waypoint(store: SqliteStore, waypoint: Resource) -> ApplyResult:
    """Create or update the waypoint Gateway (see ``merge_for_apply``). Refuses a second per-SA
    waypoint for the same service account in the namespace (which one would serve it is ambiguous) and
    a name already taken by a Service other than the waypoint's own (the controller names the
    waypoint's Service after the Gateway)."""
    sa = waypoint.annotations.get(FOR_SERVICE_ACCOUNT_ANNOTATION)
    if sa:
        for other in store.list("Gateway", waypoint.namespace):
            if other.name != waypoint.name and other.annotations.get(FOR_SERVICE_ACCOUNT_ANNOTATION) == sa:
                raise CliError(
                    f"service account {waypoint.namespace}/{sa} already has waypoint {other.name!r} "
                    f"({FOR_SERVICE_ACCOUNT_ANNOTATION}: {sa}); apply with --name {other.name}, or delete it "
                    f"first with `ambientctl waypoint delete {other.name} -n {waypoint.namespace}`"
                )
    service = store.get(ResourceRef("Service", waypoint.namespace, waypoint.name))
    if service is not None and service.labels.get(GATEWAY_NAME_LABEL) != waypoint.name:
        # The controller names the waypoint's Service after the Gateway (<name>.<ns>.svc...:15008).
        raise CliError(
            f"service {waypoint.namespace}/{waypoint.name} already exists and is not this waypoint's: the "
            f"waypoint's Service takes the waypoint's name; pass another --name "
            f"(e.g. --name {waypoint.name}-waypoint)"
        )
    merged = merge_for_apply(store.get(waypoint.ref), waypoint)
    return store.apply([to_resource(merged.to_dict())])[0]


def wait_programmed(
    store: SqliteStore,
    refs: Sequence[ResourceRef],
    timeout: float,
    *,
    poll_interval: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, dict[ResourceRef, Resource | None]]:
    """Poll the store until every Gateway in ``refs`` has ``Programmed=True`` or ``timeout`` seconds
    pass. Returns ``(all programmed, the Gateways as last read)``."""
    deadline = clock() + timeout
    while True:
        seen = {ref: store.get(ref) for ref in refs}
        if all(is_programmed(gw) for gw in seen.values()):
            return True, seen
        remaining = deadline - clock()
        if remaining <= 0:
            return False, seen
        sleep(min(poll_interval, remaining))


def waypoints_in(store: SqliteStore, namespace: str | None) -> list[Resource]:
    """The waypoint Gateways of ``namespace`` (None: all namespaces), by namespace then name."""
    return [gw for gw in store.list("Gateway", namespace) if is_waypoint(gw)]


# --- commands -------------------------------------------------------------------------------------------

NamespaceOption = Annotated[
    str | None, typer.Option("-n", "--namespace", help="Namespace of the waypoint (default: default).")
]
NameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        help=f"Name of the waypoint (default: {DEFAULT_NAME}, or the service account's name with "
        "--service-account); 'none' is reserved.",
        show_default=False,
    ),
]
ForOption = Annotated[
    TrafficType | None,
    typer.Option(
        "--for",
        help=f"Traffic the waypoint takes (label {WAYPOINT_FOR_LABEL}); unset: service "
        "(all for a per-service-account waypoint).",
        show_default=False,
    ),
]
RevisionOption = Annotated[
    str | None,
    typer.Option("-r", "--revision", help=f"The revision to label the waypoint with ({REVISION_LABEL})."),
]
ServiceAccountOption = Annotated[
    str | None,
    typer.Option(
        "--service-account",
        help=f"A waypoint for this service account only (annotation {FOR_SERVICE_ACCOUNT_ANNOTATION}); "
        "named after it unless --name is given.",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    str,
    typer.Option(
        "--waypoint-timeout", help="How long --wait waits for Programmed=True (e.g. 90s, 2m, 500ms)."
    ),
]
AllNamespacesOption = Annotated[
    bool, typer.Option("-A", "--all-namespaces", help="Waypoints of all namespaces.")
]


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Manage waypoints: L7 proxies per namespace, service or service account.", no_args_is_help=True
    )
    group.command("generate")(generate)
    group.command("apply")(apply)
    group.command("list")(list_)
    group.command("status")(status)
    group.command("delete")(delete)
    app.add_typer(group, name="waypoint")


def _timeout(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--waypoint-timeout") from None


def _seconds(value: float) -> str:
    return f"{value:g}s"


def generate(
    namespace: NamespaceOption = None,
    name: NameOption = None,
    for_: ForOption = None,
    revision: RevisionOption = None,
    service_account: ServiceAccountOption = None,
) -> None:
    """Print a waypoint Gateway as YAML (apply it later with `ambientctl apply -f -`)."""
    gw_name = resolve_name(name, service_account)
    doc = build_waypoint(
        gw_name, namespace, traffic_type=for_, revision=revision, service_account=service_account
    )
    typer.echo(render_yaml(doc), nl=False)


def apply(
    ctx: typer.Context,
    namespace: NamespaceOption = None,
    name: NameOption = None,
    for_: ForOption = None,
    revision: RevisionOption = None,
    service_account: ServiceAccountOption = None,
    enroll_namespace: Annotated[
        bool,
        typer.Option(
            "--enroll-namespace", help=f"Label the namespace {USE_WAYPOINT_LABEL}=<name> once applied."
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="With --enroll-namespace: replace the namespace's current waypoint."
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option("-w", "--wait", help="Wait until the waypoint is Programmed.")
    ] = False,
    waypoint_timeout: TimeoutOption = "90s",
) -> None:
    """Create or update a waypoint (a Gateway of class istio-waypoint) in the store."""
    timeout = _timeout(waypoint_timeout)
    ns = namespace or DEFAULT_NAMESPACE
    gw_name = resolve_name(name, service_account)
    waypoint = to_resource(
        build_waypoint(gw_name, ns, traffic_type=for_, revision=revision, service_account=service_account)
    )
    store = cli_state(ctx).store()
    ns_ref = ResourceRef("Namespace", "", ns)
    if enroll_namespace:
        # Checked before anything is written, as istioctl does: a refusal leaves the store unchanged.
        ns_obj = store.get(ns_ref)
        if ns_obj is None:
            raise CliError(
                f"namespace: {ns} not found; create it and enrol it in ambient with "
                f"`ambientctl namespace enable {ns}`, then apply again"
            )
        current = ns_obj.labels.get(USE_WAYPOINT_LABEL)
        if current and current != gw_name and not overwrite:
            raise CliError(
                f"namespace ({ns}) already has an enrolled waypoint ({USE_WAYPOINT_LABEL}={current}); "
                "add --overwrite to enrol it with this one instead"
            )
        if ns_obj.labels.get(DATAPLANE_MODE_LABEL) != "ambient":
            note(
                "⚠️ Warning: namespace is not enrolled in ambient. Consider running "
                f"`ambientctl namespace enable {ns}` "
                f"(on Kubernetes: kubectl label namespace {ns} {DATAPLANE_MODE_LABEL}=ambient)"
            )
    apply_waypoint(store, waypoint)
    typer.echo(f"✅ waypoint {ns}/{gw_name} applied")
    if wait:
        ready, seen = wait_programmed(store, [waypoint.ref], timeout)
        if not ready:
            raise CliError(
                f"timed out after {_seconds(timeout)} while waiting for waypoint {ns}/{gw_name} "
                f"({describe_condition(seen[waypoint.ref])}); is istiod-lite running? Its waypoint "
                f"controller programs the Gateway: see `ambientctl waypoint status -n {ns}`"
            )
        typer.echo(f"✅ waypoint {ns}/{gw_name} is ready!")
    if enroll_namespace:
        store.set_labels(ns_ref, {USE_WAYPOINT_LABEL: gw_name}, [])
        typer.echo(f'✅ namespace {ns} labeled with "{USE_WAYPOINT_LABEL}: {gw_name}"')


def list_(
    ctx: typer.Context,
    namespace: NamespaceOption = None,
    all_namespaces: AllNamespacesOption = False,
    output: Annotated[
        OutputFormat, typer.Option("-o", "--output", help="Output format.")
    ] = OutputFormat.table,
) -> None:
    """List waypoints (NAME REVISION TRAFFIC TYPE PROGRAMMED)."""
    found = waypoints_in(cli_state(ctx).store(), None if all_namespaces else namespace or DEFAULT_NAMESPACE)
    if output is not OutputFormat.table:
        print_documents([gw.to_dict() for gw in found], output, single=False)
        return
    if not found:
        note("No waypoints found.")
        return
    headers, rows = list_table(found, all_namespaces=all_namespaces)
    print_table(headers, rows)


def status(
    ctx: typer.Context,
    namespace: NamespaceOption = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Only this waypoint.", show_default=False)
    ] = None,
    all_namespaces: AllNamespacesOption = False,
    wait: Annotated[
        bool, typer.Option("-w", "--wait", help="Wait until the waypoints are Programmed.")
    ] = False,
    waypoint_timeout: TimeoutOption = "90s",
) -> None:
    """Show each waypoint's Programmed condition (NAME STATUS TYPE REASON MESSAGE)."""
    timeout = _timeout(waypoint_timeout)
    if name and all_namespaces:
        raise CliError("a waypoint cannot be selected by name across all namespaces (drop -A)")
    store = cli_state(ctx).store()
    ns = None if all_namespaces else namespace or DEFAULT_NAMESPACE
    found = [gw for gw in waypoints_in(store, ns) if not name or gw.name == name]
    if name and not found:
        raise CliError(f"waypoint {ns}/{name} not found; see `ambientctl waypoint list -n {ns}`")
    if not found:
        note("No waypoints found.")
        return
    ready = True
    if wait:
        ready, seen = wait_programmed(store, [gw.ref for gw in found], timeout)
        found = [gw for gw in seen.values() if gw is not None]
    headers, rows = status_table(found, all_namespaces=all_namespaces)
    print_table(headers, rows)
    if not ready:
        pending = ", ".join(f"{gw.namespace}/{gw.name}" for gw in found if not is_programmed(gw))
        raise CliError(
            f"timed out after {_seconds(timeout)} while retrieving status for waypoint {pending}: "
            "not Programmed; is istiod-lite running?"
        )


def delete(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Waypoint names.", show_default=False)] = None,
    namespace: NamespaceOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete all waypoints in the namespace.")] = False,
    revision: Annotated[
        str | None,
        typer.Option("-r", "--revision", help="Delete the waypoints of this revision in the namespace."),
    ] = None,
) -> None:
    """Delete waypoints by name, all of a namespace (--all) or of a revision (-r)."""
    if (all_ or revision) and names:
        raise CliError("cannot specify waypoint names when deleting all waypoints")
    if not (all_ or revision or names):
        raise CliError(
            "must specify a waypoint name or delete all using --all or delete specific revision "
            "using --revision"
        )
    ns = namespace or DEFAULT_NAMESPACE
    store = cli_state(ctx).store()
    present = {gw.name: gw for gw in waypoints_in(store, ns)}
    if names:
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if n not in present]
        targets = [n for n in wanted if n in present]
    else:
        missing = []
        targets = [
            n for n, gw in present.items() if not revision or gw.labels.get(REVISION_LABEL) == revision
        ]
        if not targets:
            note(
                f"No waypoints found in namespace {ns}" + (f" with revision {revision}." if revision else ".")
            )
    deleted = {ref.name for ref in store.delete([ResourceRef("Gateway", ns, n) for n in targets])}
    for n in targets:
        if n in deleted:
            typer.echo(f"waypoint {ns}/{n} deleted")
        else:  # deleted by someone else between our read and our write
            missing.append(n)
    _warn_still_used(store, ns, deleted)
    if missing:
        raise CliError(
            "; ".join(f"waypoint {ns}/{n} not found" for n in missing)
            + f" (see `ambientctl waypoint list -n {ns}`)"
        )


def _warn_still_used(store: SqliteStore, namespace: str, deleted: set[str]) -> None:
    """Istio leaves istio.io/use-waypoint labels in place on delete; say which now point nowhere."""
    ns_obj = store.get(ResourceRef("Namespace", "", namespace))
    users = []
    if ns_obj is not None and ns_obj.labels.get(USE_WAYPOINT_LABEL) in deleted:
        users.append(f"namespace {namespace}")
    for kind in ("Service", "Pod"):
        for r in store.list(kind, namespace):
            if r.labels.get(USE_WAYPOINT_LABEL) in deleted:
                users.append(f"{kind.lower()} {namespace}/{r.name}")
    if users:
        verb = "is" if len(users) == 1 else "are"
        note(
            f"⚠️ Warning: {', '.join(users)} {verb} still labeled {USE_WAYPOINT_LABEL} with a deleted "
            "waypoint; "
            "remove the label (re-apply them without it; on Kubernetes: kubectl label <kind> <name> "
            f"{USE_WAYPOINT_LABEL}-) or apply a waypoint of that name again"
        )

"""``ambientctl describe KIND [NAME...]``: kubectl's describe layout, plus what the mesh knows of a pod.

The text is built by pure functions (``describe_pod``, ``describe_service``, ``describe_policy``,
``describe_generic``) from stored resources and a ``MeshView`` (the pod's node's ztunnel and node
agent as the local cluster records them, the trust domain); the command only gathers those and prints.
Layout as kubectl's: ``Key:`` then the value, keys of a block aligned, nested blocks indented two blanks,
``<none>`` for nothing, and ``Events:`` last: the Events about the object (the local cluster's kubelet
and Deployment controller record them), oldest first, in kubectl's Type/Reason/Age/From/Message table
(``Age`` with ``(xN over D)`` for a repeated one).

For a pod, beyond Kubernetes' fields: whether it is enrolled in ambient (``meshcore.enrollment``, the
rule the node agent and istiod-lite share) and the node agent's redirection mark, its SPIFFE identity
``spiffe://<trust domain>/ns/<ns>/sa/<sa>``, its waypoint as the labels bind it (``waypoint_for_pod``),
its node's ztunnel process, and every AuthorizationPolicy that applies to it with ALLOW/DENY.
``policy_applies`` follows istiod's scope rules: a policy with ``targetRef(s)`` is a waypoint's; one
without a selector covers its namespace, or every namespace when it is in the root namespace
(``istio-system``); a ``selector.matchLabels`` narrows that to the pods carrying those labels (empty:
every pod); a selector istiod cannot read widens the policy to the whole namespace, as istiod does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from meshcore.enrollment import REDIRECTION_ANNOTATION, in_ambient_mesh
from meshcore.store import KINDS, Resource, ResourceNotFound, ResourceRef, Store, is_namespaced, resolve_kind

from .columns import age, conditions, dataplane_mode, labels_text, policy_status
from .common import CliError, cli_state, note
from .selector import SelectorError, parse_selector, selector_matches

DEFAULT_NAMESPACE = "default"
ROOT_NAMESPACE = "istio-system"
DEFAULT_TRUST_DOMAIN = "cluster.local"
TRUST_DOMAIN_ENV = "TRUST_DOMAIN"
NONE = "<none>"
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
FOR_SERVICE_ACCOUNT = "istio.io/for-service-account"
WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_FOR = "istio.io/waypoint-for"


def register(app: typer.Typer) -> None:
    app.command("describe")(describe)


# --- the layout -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    level: int
    key: str
    value: str = ""
    # "kv": ``Key:  value``; "header": ``Key:`` opening a nested block; "text": the key as it is.
    form: str = "kv"


class Writer:
    """Collects kubectl-style lines; ``text()`` aligns the values of each run of same-level keys."""

    def __init__(self) -> None:
        self.lines: list[Line] = []

    def kv(self, level: int, key: str, value: object) -> None:
        self.lines.append(Line(level, key, str(value) if value not in (None, "") else NONE))

    def header(self, level: int, key: str) -> None:
        self.lines.append(Line(level, key, form="header"))

    def text_line(self, level: int, text: str) -> None:
        self.lines.append(Line(level, text, form="text"))

    def multi(self, level: int, key: str, values: Sequence[str]) -> None:
        """``Labels:`` style: the first value on the key's line, the others under it."""
        if not values:
            self.kv(level, key, NONE)
            return
        self.kv(level, key, values[0])
        for value in values[1:]:
            self.lines.append(Line(level, "", value))

    def text(self) -> str:
        """Values of a run of consecutive ``Key: value`` lines (any depth) start in one column, as
        kubectl's tab writer lines them up; a header or text line ends the run."""
        out: list[str] = []
        i = 0
        while i < len(self.lines):
            line = self.lines[i]
            if line.form != "kv":
                text = f"{line.key}:" if line.form == "header" else line.key
                out.append("  " * line.level + text)
                i += 1
                continue
            j = i
            while j < len(self.lines) and self.lines[j].form == "kv":
                j += 1
            width = max(2 * run.level + len(run.key) for run in self.lines[i:j]) + 3
            for run in self.lines[i:j]:
                label = "  " * run.level + (f"{run.key}:" if run.key else "")
                out.append(f"{label.ljust(width)}{run.value}".rstrip())
            i = j
        return "\n".join(out)


def _label_lines(labels: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(labels.items())]


def _metadata(w: Writer, r: Resource) -> None:
    w.kv(0, "Name", r.name)
    if is_namespaced(r.kind):
        w.kv(0, "Namespace", r.namespace)
    w.multi(0, "Labels", _label_lines(r.labels))
    w.multi(0, "Annotations", [f"{k}: {v}" for k, v in sorted(r.annotations.items())])


def _events(w: Writer, events: Sequence[Mapping[str, Any]], now: datetime | None = None) -> None:
    if not events:
        w.kv(0, "Events", NONE)
        return
    now = now or datetime.now(UTC)
    w.header(0, "Events")
    rows = [["Type", "Reason", "Age", "From", "Message"], ["----", "------", "----", "----", "-------"]]
    for e in sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("firstTimestamp") or "")):
        last = age(e.get("lastTimestamp") or e.get("firstTimestamp"), now)
        count = e.get("count")
        if isinstance(count, int) and count > 1:
            last += f" (x{count} over {age(e.get('firstTimestamp'), now)})"
        source = e.get("source")
        origin = source.get("component") if isinstance(source, Mapping) else e.get("reportingComponent")
        rows.append(
            [
                str(e.get("type") or "Normal"),
                str(e.get("reason") or ""),
                last,
                str(origin or ""),
                str(e.get("message") or ""),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        w.text_line(
            1, ("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]).rstrip()
        )


def _title(key: str) -> str:
    """kubectl's rendering of a CRD field name: ``matchLabels`` -> ``Match Labels``."""
    words, current = [], ""
    for ch in key:
        if ch.isupper() and current and not current[-1].isupper():
            words.append(current)
            current = ch
        else:
            current += ch
    words.append(current)
    return " ".join(word[:1].upper() + word[1:] for word in words if word)


_VERBATIM_KEYS = frozenset({"matchLabels", "labels", "annotations", "selector"})


def _tree(w: Writer, level: int, value: Any, *, verbatim: bool = False) -> None:
    """A spec/status subtree as kubectl describes custom resources (nested, keys title-cased; label
    maps keep their keys)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key) if verbatim else _title(str(key))
            if isinstance(item, Mapping | list) and item:
                w.header(level, name)
                _tree(w, level + 1, item, verbatim=str(key) in _VERBATIM_KEYS)
            else:
                w.kv(level, name, _scalar(item))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping | list) and item:
                w.text_line(level, "-")
                _tree(w, level + 1, item)
            else:
                w.text_line(level, f"- {_scalar(item)}")


def _scalar(value: Any) -> str:
    if value is None or value == {} or value == []:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe_generic(r: Resource, events: Sequence[Mapping[str, Any]] = ()) -> str:
    w = Writer()
    _metadata(w, r)
    w.kv(0, "API Version", r.api_version or KINDS.get(r.kind, ("v1", True))[0])
    w.kv(0, "Kind", r.kind)
    for name, part in (("Spec", r.spec), ("Status", r.status)):
        if part:
            w.header(0, name)
            _tree(w, 1, part)
    _events(w, events)
    return w.text()


# --- which policies apply to a pod (istiod's scope rules, pure) -------------------------------------------


def policy_applies(policy: Resource, pod: Resource, *, root_namespace: str = ROOT_NAMESPACE) -> str | None:
    """Why ztunnel enforces ``policy`` at ``pod`` (``namespace``, ``mesh-wide``, ``selector ...``), or
    None when it does not: another namespace, a selector that does not match, or ``targetRef(s)`` (a
    waypoint's policy: see ``policy_via_waypoint``)."""
    spec = policy.spec
    if spec.get("targetRef") or spec.get("targetRefs"):
        return None
    if policy.namespace != root_namespace and policy.namespace != pod.namespace:
        return None
    scope = "mesh-wide (root namespace)" if policy.namespace == root_namespace else "namespace-wide"
    if "selector" not in spec or spec.get("selector") is None:
        return scope
    selector = spec["selector"]
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    if not isinstance(selector, Mapping) or not (labels is None or _string_map(labels)):
        return f"{scope} (its selector is unreadable, so istiod widens it)"
    if not labels:
        return f"{scope} (empty selector)"
    if all(pod.labels.get(k) == v for k, v in labels.items()):
        return f"selector {labels_text(labels)}"
    return None


def policy_via_waypoint(
    policy: Resource, pod: Resource, waypoint: str | None, services: Iterable[Resource]
) -> str | None:
    """Why ``policy``'s ``targetRef(s)`` reach ``pod`` through its waypoint (``waypoint`` = ``ns/name``
    of the Gateway that binds it, or None) or through a Service selecting it; None otherwise."""
    spec = policy.spec
    refs = [r for r in (spec.get("targetRef"), *(spec.get("targetRefs") or ())) if isinstance(r, Mapping)]
    selecting = {s.name for s in services if s.namespace == pod.namespace and _selects(s, pod)}
    for ref in refs:
        kind, name = ref.get("kind"), ref.get("name")
        if kind == "Gateway" and waypoint == f"{policy.namespace}/{name}":
            return f"targetRef Gateway/{name} (its waypoint)"
        if kind == "Service" and policy.namespace == pod.namespace and name in selecting:
            return f"targetRef Service/{name} (at the Service's waypoint)"
    return None


def _string_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _selects(service: Resource, pod: Resource) -> bool:
    selector = service.spec.get("selector")
    if not _string_map(selector) or not selector:
        return False
    return all(pod.labels.get(k) == v for k, v in selector.items())


# --- waypoint binding (the label rules, in istiod's order) ------------------------------------------------


def waypoint_for_pod(
    pod: Resource, namespace_labels: Mapping[str, str], gateways: Iterable[Resource]
) -> tuple[str | None, str]:
    """(``ns/name`` of the waypoint the labels bind ``pod`` to, how), in istiod's order: the pod's
    ``istio.io/use-waypoint`` (``none`` opts out), a per-service-account waypoint of its namespace
    (``istio.io/for-service-account``), the namespace's ``istio.io/use-waypoint``. Whether that waypoint
    takes workload-addressed traffic and is ready is istiod's call (``ambientctl waypoint status``)."""
    waypoints = {
        (g.namespace, g.name): g for g in gateways if g.spec.get("gatewayClassName") == WAYPOINT_CLASS
    }

    def by_label(labels: Mapping[str, str], whose: str) -> tuple[str | None, str] | None:
        use = labels.get(USE_WAYPOINT)
        if not use:
            return None
        if use == "none":
            return None, f"opted out ({whose} {USE_WAYPOINT}=none)"
        ns = labels.get(USE_WAYPOINT_NAMESPACE) or pod.namespace
        if (ns, use) not in waypoints:
            return None, f"{whose} {USE_WAYPOINT}={use} names no waypoint in namespace {ns}"
        return (
            f"{ns}/{use}",
            f"{whose} {USE_WAYPOINT} label; {_serves(waypoints[(ns, use)], per_account=False)}",
        )

    found = by_label(pod.labels, "the pod's")
    if found is not None:
        return found
    account = pod.spec.get("serviceAccountName") or "default"
    for (ns, name), gw in sorted(waypoints.items()):
        if (
            ns == pod.namespace
            and (gw.annotations.get(FOR_SERVICE_ACCOUNT) or gw.labels.get(FOR_SERVICE_ACCOUNT)) == account
        ):
            return f"{ns}/{name}", f"{FOR_SERVICE_ACCOUNT}={account}; {_serves(gw, per_account=True)}"
    found = by_label(namespace_labels, "the namespace's")
    if found is not None:
        return found
    return None, ""


def _serves(gateway: Resource, *, per_account: bool) -> str:
    """What traffic the waypoint takes (``istio.io/waypoint-for``; ``service`` by default, ``all`` for a
    per-service-account one), which decides whether traffic addressed to the pod itself goes through it."""
    kind = gateway.labels.get(WAYPOINT_FOR) or ("all" if per_account else "service")
    return f"{WAYPOINT_FOR}={kind}"


# --- pods -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessView:
    name: str
    pid: int | None
    running: bool


@dataclass(frozen=True, slots=True)
class MeshView:
    """What the local cluster knows beyond the store: its state and the node's mesh processes."""

    cluster_up: bool
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # Node name -> (ztunnel, node agent); a node missing here has none recorded.
    node_processes: Mapping[str, tuple[ProcessView | None, ProcessView | None]] | None = None


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def _state_lines(w: Writer, level: int, title: str, state: Any) -> None:
    if not isinstance(state, Mapping) or not state:
        w.kv(level, title, "Waiting")
        return
    (which, detail), *_ = state.items()
    w.kv(level, title, str(which).capitalize())
    detail = detail if isinstance(detail, Mapping) else {}
    for key, label in (
        ("reason", "Reason"),
        ("message", "Message"),
        ("exitCode", "Exit Code"),
        ("startedAt", "Started"),
        ("finishedAt", "Finished"),
    ):
        if key in detail:
            w.kv(level + 1, label, detail[key])


def _process(view: ProcessView | None, what: str) -> str:
    if view is None:
        return f"no {what} recorded on this node"
    return f"{view.name} ({'running' if view.running else 'NOT running'}{f', pid {view.pid}' if view.pid else ''})"


def describe_pod(
    pod: Resource,
    *,
    namespace: Resource | None,
    policies: Sequence[Resource],
    services: Sequence[Resource],
    gateways: Sequence[Resource],
    mesh: MeshView,
    events: Sequence[Mapping[str, Any]] = (),
) -> str:
    spec, status = pod.spec, pod.status
    w = Writer()
    w.kv(0, "Name", pod.name)
    w.kv(0, "Namespace", pod.namespace)
    account = spec.get("serviceAccountName") or "default"
    w.kv(0, "Service Account", account)
    node = spec.get("nodeName")
    host_ip = status.get("hostIP")
    w.kv(0, "Node", f"{node}/{host_ip}" if node and host_ip else node)
    w.kv(0, "Start Time", status.get("startTime"))
    w.multi(0, "Labels", _label_lines(pod.labels))
    w.multi(0, "Annotations", [f"{k}: {v}" for k, v in sorted(pod.annotations.items())])
    w.kv(0, "Status", status.get("phase") or "Pending")
    w.kv(0, "IP", status.get("podIP"))
    ips = [e.get("ip") for e in status.get("podIPs") or () if isinstance(e, Mapping) and e.get("ip")]
    if ips:
        w.header(0, "IPs")
        for ip in ips:
            w.kv(1, "IP", ip)
    else:
        w.kv(0, "IPs", NONE)
    if pod.controller is not None:  # kubectl's line: the owner reference with controller: true
        w.kv(0, "Controlled By", f"{pod.controller.kind}/{pod.controller.name}")
    _containers(w, "Init Containers", spec.get("initContainers"), status.get("initContainerStatuses"))
    _containers(w, "Containers", spec.get("containers"), status.get("containerStatuses"))
    w.kv(0, "Restart Policy", spec.get("restartPolicy") or "Always")
    found = conditions(pod)
    if found:
        w.header(0, "Conditions")
        w.kv(1, "Type", "Status")
        for c in found:
            w.kv(1, str(c["type"]), c.get("status", "Unknown"))
    else:
        w.kv(0, "Conditions", NONE)

    # The mesh's view of the pod.
    ns_labels = namespace.labels if namespace is not None else {}
    w.header(0, "Mesh")
    enrolled = in_ambient_mesh(
        pod.labels, pod.annotations, ns_labels, host_network=bool(spec.get("hostNetwork"))
    )
    mode = dataplane_mode(pod, {namespace.name: namespace} if namespace is not None else {})
    w.kv(
        1,
        "Ambient",
        f"enrolled (istio.io/dataplane-mode={mode})"
        if enrolled
        else f"not enrolled (dataplane mode {mode or NONE})",
    )
    if enrolled:
        w.kv(
            1,
            "Redirection",
            pod.annotations.get(REDIRECTION_ANNOTATION) or "not yet reported by the node agent",
        )
    w.kv(1, "Identity", spiffe_id(mesh.trust_domain, pod.namespace, account))
    waypoint, how = waypoint_for_pod(pod, ns_labels, gateways)
    w.kv(1, "Waypoint", f"{waypoint} ({how})" if waypoint else (how or NONE))
    if not mesh.cluster_up:
        w.kv(1, "Ztunnel", "the local cluster is not up")
    elif not node:
        w.kv(1, "Ztunnel", "the pod has no node")
    else:
        ztunnel, agent = (mesh.node_processes or {}).get(node, (None, None))
        w.kv(1, "Ztunnel", _process(ztunnel, "ztunnel"))
        w.kv(1, "Node Agent", _process(agent, "node agent"))
    applied = [
        (p, why)
        for p in policies
        if (why := policy_applies(p, pod) or policy_via_waypoint(p, pod, waypoint, services))
    ]
    if applied:
        w.header(1, "Authorization Policies")
        for p, why in applied:
            action = str(p.spec.get("action") or "ALLOW")
            note = "" if action in ("ALLOW", "DENY") else " (ztunnel does not enforce this action)"
            w.text_line(2, f"{action:<6} {p.namespace}/{p.name}: {why}{note}; status {policy_status(p)}")
    else:
        w.kv(1, "Authorization Policies", f"{NONE} (every connection allowed)")
    _events(w, events)
    return w.text()


def _containers(w: Writer, title: str, specs: Any, statuses: Any) -> None:
    specs = [c for c in specs or () if isinstance(c, Mapping)]
    if not specs:
        if title == "Containers":
            w.kv(0, title, NONE)
        return
    by_name = {s.get("name"): s for s in statuses or () if isinstance(s, Mapping)}
    w.header(0, title)
    for c in specs:
        name = str(c.get("name"))
        st = by_name.get(name, {})
        w.header(1, name)
        w.kv(2, "Image", c.get("image"))
        ports = [
            f"{p.get('containerPort')}/{p.get('protocol', 'TCP')}"
            for p in c.get("ports") or ()
            if isinstance(p, Mapping)
        ]
        w.kv(2, "Port" + ("s" if len(ports) > 1 else ""), ", ".join(ports))
        for key, label in (("command", "Command"), ("args", "Args")):
            if c.get(key):
                w.header(2, label)
                for part in c[key]:
                    w.text_line(3, str(part))
        _state_lines(w, 2, "State", st.get("state"))
        if st.get("lastState"):
            _state_lines(w, 2, "Last State", st.get("lastState"))
        w.kv(2, "Ready", "True" if st.get("ready") is True else "False")
        w.kv(2, "Restart Count", st.get("restartCount", 0))
        env = [e for e in c.get("env") or () if isinstance(e, Mapping)]
        if env:
            w.header(2, "Environment")
            for e in env:
                w.kv(
                    3, str(e.get("name")), e.get("value") if "value" in e else _value_from(e.get("valueFrom"))
                )
        else:
            w.kv(2, "Environment", NONE)


def _value_from(source: Any) -> str:
    ref = source.get("fieldRef") if isinstance(source, Mapping) else None
    if isinstance(ref, Mapping):
        return f"({ref.get('apiVersion', 'v1')}:{ref.get('fieldPath')})"
    return "(valueFrom)"


# --- services ---------------------------------------------------------------------------------------------


def service_endpoints(service: Resource, pods: Iterable[Resource]) -> list[str]:
    """``ip:port`` of every Ready pod the Service selects, per Service port in order (a named
    targetPort resolved through the pod's containerPorts, as kube-proxy does)."""
    ready = [
        p
        for p in pods
        if p.namespace == service.namespace
        and _selects(service, p)
        and p.status.get("podIP")
        and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions(p))
    ]
    out: list[str] = []
    for port in service.spec.get("ports") or ():
        if not isinstance(port, Mapping):
            continue
        target = port.get("targetPort", port.get("port"))
        for pod in ready:
            number = _resolve_port(pod, target)
            if number is not None:
                out.append(f"{pod.status['podIP']}:{number}")
    return list(dict.fromkeys(out))


def _resolve_port(pod: Resource, target: Any) -> int | None:
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in pod.spec.get("containers") or ():
        for p in (c.get("ports") or ()) if isinstance(c, Mapping) else ():
            if isinstance(p, Mapping) and p.get("name") == target:
                return int(p["containerPort"])
    return None


def describe_service(
    service: Resource, pods: Sequence[Resource], events: Sequence[Mapping[str, Any]] = ()
) -> str:
    spec = service.spec
    w = Writer()
    _metadata(w, service)
    selector = spec.get("selector")
    w.kv(0, "Selector", labels_text(selector) if _string_map(selector) and selector else NONE)
    w.kv(0, "Type", spec.get("type") or "ClusterIP")
    w.kv(0, "IP", spec.get("clusterIP"))
    endpoints = service_endpoints(service, pods)
    ports = [p for p in spec.get("ports") or () if isinstance(p, Mapping)]
    for port in ports:
        protocol = port.get("protocol", "TCP")
        w.kv(0, "Port", f"{port.get('name') or '<unset>'}  {port.get('port')}/{protocol}")
        w.kv(0, "TargetPort", f"{port.get('targetPort', port.get('port'))}/{protocol}")
        one = service_endpoints(
            Resource(
                kind="Service", name=service.name, namespace=service.namespace, spec={**spec, "ports": [port]}
            ),
            pods,
        )
        w.kv(0, "Endpoints", ",".join(one) or NONE)
    if not ports:
        w.kv(0, "Endpoints", ",".join(endpoints) or NONE)
    _events(w, events)
    return w.text()


# --- AuthorizationPolicy ----------------------------------------------------------------------------------


def describe_policy(
    policy: Resource, pods: Sequence[Resource], events: Sequence[Mapping[str, Any]] = ()
) -> str:
    w = Writer()
    _metadata(w, policy)
    w.kv(0, "API Version", policy.api_version or KINDS["AuthorizationPolicy"][0])
    w.kv(0, "Kind", "AuthorizationPolicy")
    w.header(0, "Spec")
    _tree(w, 1, policy.spec or {"action": "ALLOW"})
    summary = policy_status(policy)
    w.kv(0, "Accepted", summary if summary != "-" else "not yet reported by istiod-lite")
    found = conditions(policy)
    if found:
        w.header(0, "Status")
        w.header(1, "Conditions")
        for c in found:
            w.kv(2, "Type", c["type"])
            for key, label in (("status", "Status"), ("reason", "Reason"), ("message", "Message")):
                if key in c:
                    w.kv(3, label, c[key])
    else:
        w.kv(0, "Status", NONE)
    selected = [f"{p.namespace}/{p.name}" for p in pods if policy_applies(policy, p)]
    if policy.spec.get("targetRef") or policy.spec.get("targetRefs"):
        w.kv(0, "Selects Pods", "<none> (bound by targetRefs: a waypoint enforces it)")
    else:
        w.multi(0, "Selects Pods", selected)
    _events(w, events)
    return w.text()


# --- the command ------------------------------------------------------------------------------------------


def _mesh_view(ctx: typer.Context) -> MeshView:
    from ambientctl.cluster import Cluster
    from ambientctl.cluster.mesh import agent_name, ztunnel_name

    trust_domain = os.environ.get(TRUST_DOMAIN_ENV) or DEFAULT_TRUST_DOMAIN
    state = cli_state(ctx)
    if getattr(state, "on_kubernetes", False):
        return MeshView(cluster_up=False, trust_domain=trust_domain)
    cluster = Cluster(state.state_dir())
    if not cluster.is_up():
        return MeshView(cluster_up=False, trust_domain=trust_domain)
    status = cluster.status()
    procs = {p.name: ProcessView(p.name, p.pid, p.running) for p in status.processes}
    nodes = {n.name: (procs.get(ztunnel_name(n.name)), procs.get(agent_name(n.name))) for n in status.nodes}
    return MeshView(cluster_up=True, trust_domain=trust_domain, node_processes=nodes)


def _events_for(store: Store, r: Resource) -> list[dict[str, Any]]:
    """The Events about ``r`` (their fields), as kubectl selects them: the involved object's kind and name,
    and its uid when both have one (an earlier object of the same name has other Events)."""
    if "Event" not in KINDS:
        return []
    return [
        e.spec for e in store.list("Event", r.namespace or None) if _about(e.spec.get("involvedObject"), r)
    ]


def _about(obj: object, r: Resource) -> bool:
    if not isinstance(obj, Mapping) or obj.get("kind") != r.kind or obj.get("name") != r.name:
        return False
    uid = obj.get("uid")
    return not (uid and r.uid) or uid == r.uid


def describe_one(store: Store, r: Resource, mesh_view: Callable[[], MeshView]) -> str:
    events = _events_for(store, r)
    if r.kind == "Pod":
        return describe_pod(
            r,
            namespace=store.get(ResourceRef("Namespace", "", r.namespace)),
            policies=store.list("AuthorizationPolicy"),
            services=store.list("Service", r.namespace),
            gateways=store.list("Gateway"),
            mesh=mesh_view(),
            events=events,
        )
    if r.kind == "Service":
        return describe_service(r, store.list("Pod", r.namespace), events)
    if r.kind == "AuthorizationPolicy":
        return describe_policy(r, store.list("Pod"), events)
    return describe_generic(r, events)


def describe(
    ctx: typer.Context,
    kind: Annotated[
        str, typer.Argument(help="Kind: pods (po), services (svc), ap, deploy, ... or KIND/NAME.")
    ],
    names: Annotated[
        list[str] | None, typer.Argument(help="Names (none: every object).", show_default=False)
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option("-n", "--namespace", help="Namespace of namespaced kinds (default: default)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("-A", "--all-namespaces", help="Across all namespaces.")
    ] = False,
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="Label selector (as for get).", show_default=False)
    ] = None,
) -> None:
    """Show one or more resources in detail: status, containers, and for pods their mesh view (identity,
    enrolment, waypoint, node ztunnel, which AuthorizationPolicies apply)."""
    kind_text, slash, first = kind.partition("/")
    wanted = list(dict.fromkeys(([first] if slash else []) + list(names or [])))
    store_kind = resolve_kind(kind_text)
    if all_namespaces and wanted:
        raise CliError("a resource cannot be described by name across all namespaces (drop -A)")
    try:
        requirements = parse_selector(selector or "")
    except SelectorError as e:
        raise CliError(f"invalid selector: {e}") from None
    ns = (namespace or DEFAULT_NAMESPACE) if is_namespaced(store_kind) else ""
    store = cli_state(ctx).store(with_events=True)  # the Events: section
    if wanted:
        found = []
        for name in wanted:
            got = store.get(ResourceRef(store_kind, ns, name))
            if got is None:
                where = f' in namespace "{ns}"' if ns else ""
                raise ResourceNotFound(f'{store_kind.lower()} "{name}"{where}')
            found.append(got)
    else:
        found = [
            r
            for r in store.list(store_kind, None if all_namespaces or not ns else ns)
            if selector_matches(requirements, r.labels)
        ]
        if not found:
            note(
                f"No resources found in {ns} namespace."
                if ns and not all_namespaces
                else "No resources found"
            )
            return
    cached: list[MeshView] = []

    def mesh_view() -> MeshView:
        if not cached:
            cached.append(_mesh_view(ctx))
        return cached[0]

    typer.echo("\n\n".join(describe_one(store, r, mesh_view) for r in found))

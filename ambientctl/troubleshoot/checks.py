"""``ambientctl check``: is this machine ready for the mesh (``--pre``), and is the mesh healthy?

Every check is a pure function from facts to ``CheckResult`` values (what was checked, passed or not,
what was seen, and on failure the remediation an operator can run), so results and remediation texts
are table-tested without a cluster. ``gather_pre`` and ``gather_mesh`` collect the facts on this
machine and on the local cluster (through ``reach``: istiod's ``/ready``, ``/debug/registryz`` and
``/debug/syncz``, each node's ztunnel ``/healthz/ready`` and ``/config_dump``, each node agent's
``/readyz`` and ``/debug/pods``) and run the checks. Redirection drift is the node agent's own verdict:
its ``/debug/pods`` reports, for every pod it captured, whether each nftables table, chain and rule and
the ip rule and route it installed are in the pod's netns now (rule by rule, worded by the agent), so
``check`` names the rule that is missing and the fix that repairs it (restarting that node agent, which
installs every enrolled pod's rules again when it starts). Clock skew
is read from times istiod-lite wrote (when each proxy's stream started, each certificate's start):
none may be ahead of this machine's clock. A check whose facts cannot be gathered fails with the reason; nothing is skipped silently.
``components_check`` reads the cluster supervisor's restarts and last exits: a component not running
fails, one restarted within the last hour warns with how it last exited.
Order and categories follow ``linkerd check``: host, control plane, CA, data plane, config sync,
certificates.

On Kubernetes (``gather_kubernetes``, through ``remote.KubeReach``: the API server's pod list and pod
port-forward, nothing else) the subset that means something for a cluster runs: the mesh's pods are
there, every istiod replica is Ready and answers ``/ready``, istiod serves config, the CA root (as the
ztunnels hold it) and its days left, every node's ztunnel pod is Ready and answers ``/healthz/ready``,
sync state over every replica, clocks. The checks that are about this machine or need what only the
local cluster exposes (host tools, processes, the node agents' redirection, per-identity certificates)
are each one ``skipped`` line saying why, never a failure and never silently left out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any

from cryptography import x509

from ambientctl.cluster import Cluster, ClusterError
from ambientctl.cluster.cluster import ProcessStatus
from ambientctl.cluster.mesh import ISTIOD, agent_name, ztunnel_name
from ambientctl.cluster.supervision import describe_exit
from meshcore.enrollment import REDIRECTION_ANNOTATION, REDIRECTION_ENABLED, in_ambient_mesh
from meshcore.store import SqliteStore

from .reach import (
    AGENT_ADMIN,
    AGENT_MONITORING,
    ISTIOD_MONITORING,
    ZTUNNEL_ADMIN,
    ZTUNNEL_READINESS,
    Reach,
    ReachError,
    Target,
)
from .syncstatus import ProxyRow, proxy_rows

if TYPE_CHECKING:
    from .remote import KubeReach

# tool -> Debian package that provides it
REQUIRED_TOOLS = {"ip": "iproute2", "nft": "nftables"}
# Times istiod-lite wrote may be this far ahead of ours before it is called skew (clock steps, rounding).
CLOCK_TOLERANCE_S = 5.0
ROOT_WARN_DAYS = 30
# A leaf with less than this share of its lifetime left should have been renewed (ztunnel renews at 1/2).
LEAF_MIN_REMAINING = 0.25
SYNC_SETTLE_S = 2.0
NFT_TIMEOUT_S = 5.0
# At most this many pods get a result line of their own; the rest are counted in one.
MAX_POD_RESULTS = 10
# A mesh component restarted this recently (seconds) makes ``components_check`` warn.
RESTART_WARN_S = 3600.0


class Category(StrEnum):
    host = "host"
    cluster = "local cluster"
    kubernetes = "Kubernetes cluster"
    control_plane = "control plane (istiod-lite)"
    ca = "certificate authority"
    data_plane = "data plane (node agents and ztunnels)"
    redirection = "traffic redirection"
    sync = "config sync"
    certificates = "workload certificates"


@dataclass(frozen=True, slots=True)
class CheckResult:
    category: Category
    description: str  # what holds when the check passes ("istiod-lite is ready")
    ok: bool
    detail: str = ""  # what was seen (always set on failure)
    remediation: str = ""  # what to do (set on failure and warning)
    warning: bool = False  # passed, but something needs attention soon
    skipped: bool = False  # not run here; ``detail`` says why (counts as no failure)

    def to_json(self) -> dict[str, Any]:
        result = "skipped" if self.skipped else "warning" if self.ok and self.warning else (
            "success" if self.ok else "error")
        return {
            "category": self.category.value,
            "description": self.description,
            "result": result,
            "detail": self.detail,
            "remediation": self.remediation,
        }


def passed(category: Category, description: str, detail: str = "") -> CheckResult:
    return CheckResult(category, description, True, detail)


def failed(category: Category, description: str, detail: str, remediation: str) -> CheckResult:
    return CheckResult(category, description, False, detail, remediation)


def warned(category: Category, description: str, detail: str, remediation: str) -> CheckResult:
    return CheckResult(category, description, True, detail, remediation, warning=True)


def skipped(category: Category, description: str, why: str) -> CheckResult:
    return CheckResult(category, description, True, why, skipped=True)


# --- pure checks ----------------------------------------------------------------------------------------


def host_checks(
    euid: int, has_netns: bool, which: Callable[[str], str | None], nft_error: str | None
) -> list[CheckResult]:
    """Root, network namespaces, the tools, and whether the kernel's nf_tables answers ``nft``."""
    c = Category.host
    out = [
        passed(c, "running as root")
        if euid == 0
        else failed(
            c, "running as root", f"effective uid is {euid}",
            "network namespaces, veth links and nftables need root: run it again with sudo",
        ),
        passed(c, "kernel supports network namespaces")
        if has_netns
        else failed(
            c, "kernel supports network namespaces", "/proc/self/ns/net is missing",
            "use a Linux kernel built with CONFIG_NET_NS (every distribution kernel is)",
        ),
    ]  # fmt: skip
    for tool, package in REQUIRED_TOOLS.items():
        found = which(tool)
        out.append(
            passed(c, f"`{tool}` is installed ({package})", found or "")
            if found
            else failed(c, f"`{tool}` is installed ({package})", f"`{tool}` not found on PATH",
                        f"install it: apt-get install {package}")
        )  # fmt: skip
    if which("nft"):
        out.append(
            passed(c, "nftables works in this kernel")
            if nft_error is None
            else failed(
                c, "nftables works in this kernel", nft_error,
                "load nf_tables (modprobe nf_tables nft_chain_nat); in a container, grant CAP_NET_ADMIN",
            )
        )  # fmt: skip
    return out


def cluster_check(phase: str | None, problems: Sequence[str]) -> CheckResult:
    c, what = Category.cluster, "the local cluster is up"
    if phase is None or phase == "down":
        return failed(c, what, "no local cluster in this state directory", "create it: ambientctl cluster up")
    if phase != "up" or problems:
        return failed(
            c, what, f"phase {phase}: " + "; ".join(problems),
            "recreate what is missing: ambientctl cluster down && ambientctl cluster up",
        )  # fmt: skip
    return passed(c, what)


def components_check(processes: Sequence[ProcessStatus], now: float) -> CheckResult:
    """The cluster supervisor's view of the mesh components (``ClusterStatus.processes``): one not running
    fails (with its state and last exit, and the fix); ones that restarted within ``RESTART_WARN_S`` are a
    warning naming each, how often it restarted and how it last exited. ``now``: wall clock (time.time())."""
    c, what = Category.cluster, "mesh components running"
    down = [p for p in processes if not p.running]
    if down:
        seen = "; ".join(
            f"{p.name} not running ({p.state}"
            + (f", {describe_exit(p.last_exit, now)}" if p.last_exit else "")
            + (f", restart due in {max(0.0, p.restart_at - now):.0f}s" if p.restart_at else "")
            + ")"
            for p in down
        )
        return failed(
            c, what, seen,
            f"read why: ambientctl cluster logs {down[0].name}; start it again: ambientctl cluster up (the "
            "supervisor also restarts a dead component with back-off: ambientctl cluster status shows it)",
        )  # fmt: skip
    recent = [
        p for p in processes
        if p.restarts and p.last_exit is not None and now - p.last_exit.at <= RESTART_WARN_S
    ]  # fmt: skip
    if recent:
        seen = "; ".join(
            f"{p.name} restarted {p.restarts} time{'s' if p.restarts != 1 else ''}, last "
            f"{describe_exit(p.last_exit, now)}"
            for p in recent
            if p.last_exit is not None
        )
        return warned(c, what, seen, f"read why it exited: ambientctl cluster logs {recent[0].name}")
    return passed(c, what, f"{len(processes)} running")


def process_check(category: Category, component: str, running: bool | None) -> CheckResult:
    what = f"{component} is running"
    if running:
        return passed(category, what)
    seen = "it was never started" if running is None else "its process exited"
    return failed(
        category, what, seen,
        f"read why: ambientctl cluster logs {component}; start it again: ambientctl cluster up",
    )  # fmt: skip


def ready_check(category: Category, component: str, probe: str | None, remediation: str) -> CheckResult:
    """``probe`` is None when the readiness endpoint answered 200, else what it answered."""
    what = f"{component} is ready"
    if probe is None:
        return passed(category, what)
    return failed(category, what, probe, remediation)


def registry_check(registry: Mapping[str, Any] | str) -> CheckResult:
    """istiod serves config: its registry answered; resources it refused are a warning with the reasons."""
    c, what = Category.control_plane, "istiod-lite is serving configuration"
    if isinstance(registry, str):
        return failed(
            c, what, registry, "read why: ambientctl cluster logs istiod; start it again: ambientctl cluster up"
        )
    counts = {k: len(registry.get(k) or ()) for k in ("workloads", "services", "policies")}
    seen = ", ".join(f"{n} {k}" for k, n in counts.items())
    problems = [p for p in registry.get("problems") or () if isinstance(p, Mapping)]
    if problems:
        first = problems[0]
        return warned(
            c, what, f"{seen}; {len(problems)} resource problem(s), first: {first.get('resource')}: "
            f"{first.get('message')}",
            "fix or delete the resources named: ambientctl get <kind> -n <namespace> <name> -o yaml",
        )  # fmt: skip
    return passed(c, what, seen)


def root_check(root_pem: bytes | str | None, now: datetime, warn_days: int = ROOT_WARN_DAYS) -> CheckResult:
    """The mesh's root certificate: readable, valid now, and how many days it has left."""
    c, what = Category.ca, "the CA root certificate is valid"
    fix = "rotate the root: plug a new root into istiod-lite (docs/operations.md) and restart the mesh"
    if root_pem is None or isinstance(root_pem, str):
        return failed(c, what, root_pem or "no root certificate found", "start the mesh: ambientctl cluster up")
    try:
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError as e:
        return failed(c, what, f"the root certificate cannot be read: {e}", fix)
    start, end = root.not_valid_before_utc, root.not_valid_after_utc
    if now < start:
        return failed(c, what, f"not valid before {start:%Y-%m-%d %H:%M}Z: check this machine's clock", fix)
    if now >= end:
        return failed(c, what, f"expired on {end:%Y-%m-%d %H:%M}Z", fix)
    days = (end - now).days
    seen = f"{root.subject.rfc4514_string()}, valid until {end:%Y-%m-%d}Z ({days} days left)"
    if days < warn_days:
        return warned(c, what, seen, fix)
    return passed(c, what, seen)


def agent_check(node: str, pods: Mapping[str, Any] | str) -> CheckResult:
    """The node agent's view: connected to its ztunnel, no pod it failed to capture."""
    c, what = Category.data_plane, f"node agent on {node} has handed every pod to ztunnel"
    if isinstance(pods, str):
        return failed(c, what, pods, f"read why: ambientctl cluster logs {agent_name(node)}")
    if not pods.get("ztunnel_connected"):
        return failed(
            c, what, "ztunnel is not connected to the node agent",
            f"read why: ambientctl cluster logs {ztunnel_name(node)}; start it again: ambientctl cluster up",
        )  # fmt: skip
    failing = pods.get("failing") or {}
    if failing:
        shown = "; ".join(f"{uid}: {err}" for uid, err in list(failing.items())[:3])
        return failed(c, what, f"{len(failing)} pod(s) not captured: {shown}",
                      f"read why: ambientctl cluster logs {agent_name(node)}")  # fmt: skip
    captured = pods.get("captured") or {}
    waiting = [str(p.get("pod")) for p in captured.values() if isinstance(p, Mapping) and not p.get("handed_over")]
    if waiting:
        return failed(c, what, f"not handed over to ztunnel: {', '.join(waiting)}",
                      f"read why: ambientctl cluster logs {ztunnel_name(node)}")  # fmt: skip
    return passed(c, what, f"{len(captured)} pod(s) captured")


@dataclass(frozen=True, slots=True)
class PodRedirection:
    """One enrolled pod as the store has it: where it runs and the node agent's annotation."""

    namespace: str
    name: str
    node: str
    annotation: str | None
    uid: str = ""


def restart_agent_fix(node: str, pid: int | None = None) -> str:
    """How to make the node agent on ``node`` install every enrolled pod's rules again."""
    stop = f"kill {pid}" if pid else f"stop {agent_name(node)} (its pid: ambientctl cluster status)"
    return (
        f"restart the node agent on {node}: when it starts it installs every enrolled pod's rules again, one "
        f"nft transaction per pod, without cutting traffic ({stop}, then once it has exited: ambientctl cluster up)"
    )


def _pod_problem(p: PodRedirection, view: Mapping[str, Any], pid: int | None) -> tuple[str, str] | None:
    """(what is wrong, the fix) for one pod in its node agent's ``/debug/pods``, or None."""
    logs = f"read why: ambientctl cluster logs {agent_name(p.node)}"
    captured = view.get("captured") or {}
    entry = captured.get(p.uid) if isinstance(captured, Mapping) else None
    if not isinstance(entry, Mapping):
        failing = view.get("failing") or {}
        reason = failing.get(p.uid) if isinstance(failing, Mapping) else None
        return (f"not captured by the node agent on {p.node}: {reason}" if reason
                else f"not captured by the node agent on {p.node} (yet)", logs)  # fmt: skip
    if p.annotation != REDIRECTION_ENABLED:
        return f"{REDIRECTION_ANNOTATION} is {p.annotation or 'not set'}", logs
    if entry.get("check_error"):
        return f"the node agent cannot read its netns: {entry['check_error']}", logs
    if "redirected" not in entry:
        return f"the node agent on {p.node} does not report its rules (an older agent?)", restart_agent_fix(p.node, pid)
    if entry.get("redirected") is True:
        return None
    drift = [d for d in entry.get("drift") or () if isinstance(d, Mapping)]
    words = [str(d.get("text") or f"{d.get('kind')}: {d.get('subject')}") for d in drift]
    return "; ".join(words) or "not redirected (no detail given)", restart_agent_fix(p.node, pid)


def redirection_checks(
    pods: Sequence[PodRedirection], agents: Mapping[str, Mapping[str, Any] | str],
    pids: Mapping[str, int] | None = None, *, max_pods: int = MAX_POD_RESULTS,
) -> list[CheckResult]:  # fmt: skip
    """Each enrolled pod against its node agent's ``/debug/pods`` (``agents``: node -> the document, or
    why it could not be read; ``pids``: node -> the agent's pid). One failure per pod with a problem (at
    most ``max_pods``, then one for the rest), one per node whose agent could not be asked; else one pass."""
    c = Category.redirection
    out: list[CheckResult] = []
    unreadable: dict[str, list[str]] = {}
    bad = 0
    for p in pods:
        key = f"{p.namespace}/{p.name}"
        view = agents.get(p.node, f"no node agent answer for node {p.node or '?'}")
        if isinstance(view, str):
            unreadable.setdefault(p.node, []).append(key)
            continue
        problem = _pod_problem(p, view, (pids or {}).get(p.node))
        if problem is None:
            continue
        bad += 1
        if bad <= max_pods:
            out.append(failed(c, f"{key} is redirected to ztunnel as the node agent on {p.node} installed it",
                              problem[0], problem[1]))  # fmt: skip
    if bad > max_pods:
        out.append(failed(c, "every other enrolled pod is redirected to ztunnel", f"{bad - max_pods} more pod(s) "
                          "with a problem", "run ambientctl check -o json for all of them"))  # fmt: skip
    for node, keys in unreadable.items():
        out.append(failed(
            c, f"the node agent on {node} reports its pods' redirection",
            f"{agents.get(node, '')} ({len(keys)} pod(s) not verified: {', '.join(keys[:5])}"
            + (", ..." if len(keys) > 5 else "") + ")",
            f"read why: ambientctl cluster logs {agent_name(node)}",
        ))  # fmt: skip
    if not out:
        out.append(passed(c, "every enrolled pod's traffic is redirected to ztunnel as its node agent installed it",
                          f"{len(pods)} pod(s), checked rule by rule by the node agents"))  # fmt: skip
    return out


def _local_ztunnel_logs(node: str) -> str:
    return f"ambientctl cluster logs {ztunnel_name(node)}"


def sync_checks(rows: Sequence[ProxyRow], nodes: Sequence[str],
                ztunnel_logs: Callable[[str], str] = _local_ztunnel_logs) -> list[CheckResult]:  # fmt: skip
    """``ztunnel_logs(node)``: the command that shows that node's ztunnel log (local cluster or Kubernetes)."""
    c = Category.sync
    connected = {r.node for r in rows if r.kind == "ztunnel"}
    missing = [n for n in nodes if n not in connected]
    out = [
        passed(c, "every node's ztunnel is connected to istiod-lite", f"{len(nodes)} node(s)")
        if not missing
        else failed(
            c, "every node's ztunnel is connected to istiod-lite", f"not connected: {', '.join(missing)}",
            "read why: " + "; ".join(ztunnel_logs(n) for n in missing),
        )
    ]  # fmt: skip
    nacked = [r for r in rows if r.nacks or "NACKED" in r.statuses.values()]
    behind = [r for r in rows if not r.synced and r not in nacked]
    what = "every proxy's configuration is in sync (no NACK, nothing stale)"
    if nacked:
        shown = "; ".join(f"{r.name}: {r.last_nack or 'NACKED'}" for r in nacked[:3])
        out.append(failed(c, what, f"{len(nacked)} proxy(ies) rejected config: {shown}",
                          "fix the resource the message names (ambientctl get ...), then re-apply it"))  # fmt: skip
    elif behind:
        shown = "; ".join(
            f"{r.name}: " + ", ".join(f"{t} {s}" for t, s in r.statuses.items() if s != "SYNCED") for r in behind[:3]
        )
        out.append(failed(c, what, shown, "check the proxy is alive (ambientctl proxy-status) and read its log"))
    else:
        out.append(passed(c, what, f"{len(rows)} proxy(ies)"))
    return out


def certificate_check(node: str, certificates: Sequence[Mapping[str, Any]] | str,
                      identities: Iterable[str], now: datetime) -> CheckResult:  # fmt: skip
    """Every local identity has a certificate that is valid now with at least 1/4 of its life left."""
    c, what = Category.certificates, f"ztunnel on {node} holds a valid certificate for every local identity"
    fix = f"read why: ambientctl cluster logs {ztunnel_name(node)} (CA errors), and check istiod-lite is ready"
    if isinstance(certificates, str):
        return failed(c, what, certificates, fix)
    by_identity = {str(e.get("identity")): e for e in certificates if isinstance(e, Mapping)}
    wanted = sorted(set(identities))
    bad: list[str] = []
    soonest: tuple[float, str] | None = None
    for identity in wanted:
        entry = by_identity.get(identity)
        if entry is None:
            bad.append(f"{identity}: none held")
            continue
        chain = [x for x in entry.get("certChain") or () if isinstance(x, Mapping)]
        if not chain or not str(entry.get("state", "")).startswith("Available"):
            bad.append(f"{identity}: {entry.get('state') or 'no certificate'}")
            continue
        start, end = _time(chain[0].get("validFrom")), _time(chain[0].get("expirationTime"))
        if start is None or end is None:
            bad.append(f"{identity}: unreadable validity")
            continue
        if not start <= now < end:
            bad.append(f"{identity}: {'expired' if now >= end else 'not yet valid'} ({start:%H:%M}-{end:%H:%M}Z)")
            continue
        left = (end - now).total_seconds() / max((end - start).total_seconds(), 1.0)
        if left < LEAF_MIN_REMAINING:
            bad.append(f"{identity}: near expiry ({_hours(end - now)} left, renewal overdue)")
        if soonest is None or left < soonest[0]:
            soonest = (left, f"first expiry in {_hours(end - now)}")
    if bad:
        return failed(c, what, "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else ""), fix)
    return passed(c, what, f"{len(wanted)} identity(ies)" + (f", {soonest[1]}" if soonest else ""))


def clock_check(now: datetime, stamps: Sequence[tuple[str, datetime | None]],
                tolerance_s: float = CLOCK_TOLERANCE_S) -> CheckResult:  # fmt: skip
    """No time another component wrote (``stamps``: what it is, when) is ahead of this machine's ``now``
    by more than ``tolerance_s``: a clock behind the CA's makes its certificates not yet valid."""
    c, what = Category.certificates, "clocks agree (nothing istiod-lite stamped is in this machine's future)"
    ahead = sorted(((when - now).total_seconds(), label) for label, when in stamps if when is not None)
    ahead = [(s, label) for s, label in ahead if s > tolerance_s]
    if ahead:
        worst, label = ahead[-1]
        return failed(
            c, what,
            f"{label} is {worst:.0f}s ahead of this machine's clock ({now:%H:%M:%S}Z)"
            + (f", and {len(ahead) - 1} more stamp(s)" if len(ahead) > 1 else ""),
            "synchronise the clocks (timedatectl set-ntp true, or chronyc makestep); until then peers refuse "
            "certificates issued in their future",
        )  # fmt: skip
    return passed(c, what, f"{sum(1 for _, w in stamps if w is not None)} stamp(s) compared")


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _hours(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# --- gathering -----------------------------------------------------------------------------------------


def nft_problem(nft: str | None = None) -> str | None:
    """None when ``nft list tables`` works here, else what it said."""
    tool = nft or shutil.which("nft")
    if tool is None:
        return "nft not found"
    try:
        done = subprocess.run([tool, "list", "tables"], capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def gather_pre() -> list[CheckResult]:
    return host_checks(os.geteuid(), os.path.exists("/proc/self/ns/net"), shutil.which, nft_problem())


@dataclass
class MeshFacts:
    """What ``gather_mesh`` read, kept for the commands that want more than the verdicts."""

    nodes: list[str] = field(default_factory=list)
    rows: list[ProxyRow] = field(default_factory=list)
    dumps: dict[str, Mapping[str, Any] | str] = field(default_factory=dict)


def _probe(reach: Reach, target: Target, port: int, path: str) -> str | None:
    try:
        answer = reach.get(target, port, path)
    except ReachError as e:
        return str(e)
    return None if answer.status == 200 else f"{target} :{port}{path} answered {answer.status}: {answer.text.strip()[:200]}"


def _json_or_reason(fetch: Callable[[], Any]) -> Any:
    try:
        return fetch()
    except ReachError as e:
        return str(e)


def enrolled_pods(store: SqliteStore) -> list[Any]:
    """Running pods the mesh captures (pod label, else namespace label), as store resources."""
    namespaces = {ns.name: ns.labels for ns in store.list("Namespace")}
    out = []
    for pod in store.list("Pod"):
        if pod.status.get("phase") != "Running":
            continue
        if in_ambient_mesh(
            pod.labels, pod.annotations, namespaces.get(pod.namespace, {}),
            host_network=bool(pod.spec.get("hostNetwork")),
        ):  # fmt: skip
            out.append(pod)
    return sorted(out, key=lambda p: (p.namespace, p.name))


def gather_mesh(
    cluster: Cluster, store: SqliteStore, reach: Reach, *, now: Callable[[], datetime] | None = None
) -> tuple[list[CheckResult], MeshFacts]:
    """Run every mesh check on the local cluster (module docstring)."""
    clock = now or (lambda: datetime.now(UTC))
    facts = MeshFacts()
    try:
        status = cluster.status()
    except ClusterError as e:
        return [failed(Category.cluster, "the local cluster is up", str(e), "ambientctl cluster up")], facts
    results = [cluster_check(status.phase, status.problems)]
    if status.phase in ("down",):
        return results, facts
    results.append(components_check(status.processes, time.time()))
    running = {p.name: p.running for p in status.processes}
    facts.nodes = [n.name for n in status.nodes]
    istiod = Target(ISTIOD)

    cp = Category.control_plane
    results.append(process_check(cp, ISTIOD, running.get(ISTIOD)))
    results.append(ready_check(cp, ISTIOD, _probe(reach, istiod, ISTIOD_MONITORING, "/ready"),
                               "read why: ambientctl cluster logs istiod; start it again: ambientctl cluster up"))  # fmt: skip
    results.append(registry_check(_json_or_reason(lambda: reach.istiod("/debug/registryz"))))

    node_targets = {n: Target("node", node=n) for n in facts.nodes}
    with ThreadPoolExecutor(max_workers=max(4, len(facts.nodes) * 2)) as pool:
        dump_futures = {
            n: pool.submit(_json_or_reason, partial(reach.ztunnel, n, "/config_dump")) for n in facts.nodes
        }
        agent_futures = {
            n: pool.submit(_json_or_reason, partial(reach.json, node_targets[n], AGENT_ADMIN, "/debug/pods"))
            for n in facts.nodes
        }
        ready_futures = {
            n: pool.submit(_probe, reach, node_targets[n], ZTUNNEL_READINESS, "/healthz/ready") for n in facts.nodes
        }
        agent_ready = {n: pool.submit(_probe, reach, node_targets[n], AGENT_MONITORING, "/readyz") for n in facts.nodes}
        facts.dumps = {n: f.result() for n, f in dump_futures.items()}
        dp = Category.data_plane
        for n in facts.nodes:
            results.append(process_check(dp, agent_name(n), running.get(agent_name(n))))
            results.append(ready_check(dp, agent_name(n), agent_ready[n].result(),
                                       f"read why: ambientctl cluster logs {agent_name(n)}"))  # fmt: skip
            results.append(agent_check(n, agent_futures[n].result()))
            results.append(process_check(dp, ztunnel_name(n), running.get(ztunnel_name(n))))
            results.append(ready_check(dp, ztunnel_name(n), ready_futures[n].result(),
                                       f"read why: ambientctl cluster logs {ztunnel_name(n)}; "
                                       "start it again: ambientctl cluster up"))  # fmt: skip

        results.append(root_check(_root_pem(cluster, facts), clock()))

        pods = enrolled_pods(store)
        agents = {n: f.result() for n, f in agent_futures.items()}
        pids = {n: p.pid for p in status.processes if p.running and (n := _agent_node(p.name, facts.nodes))}
        results += redirection_checks(
            [PodRedirection(p.namespace, p.name, str(p.spec.get("nodeName") or ""),
                            p.annotations.get(REDIRECTION_ANNOTATION), p.uid) for p in pods],
            agents, pids,
        )  # fmt: skip

    rows = _settled_rows(reach)
    if isinstance(rows, str):
        results.append(failed(Category.sync, "istiod-lite reports its proxies' sync state", rows,
                              "read why: ambientctl cluster logs istiod"))  # fmt: skip
    else:
        facts.rows = rows
        results += sync_checks(rows, facts.nodes)

    stamps = clock_stamps(facts)

    identities_by_node: dict[str, set[str]] = {n: set() for n in facts.nodes}
    for p in pods:
        node = str(p.spec.get("nodeName") or "")
        if node in identities_by_node:
            sa = p.spec.get("serviceAccountName") or "default"
            identities_by_node[node].add(f"spiffe://{_trust_domain(facts)}/ns/{p.namespace}/sa/{sa}")
    for n in facts.nodes:
        dump = facts.dumps.get(n)
        certs: Any = dump if isinstance(dump, str) else (dump or {}).get("certificates") or []
        results.append(certificate_check(n, certs, identities_by_node[n], clock()))
    results.append(clock_check(clock(), stamps))
    return results, facts


def clock_stamps(facts: MeshFacts) -> list[tuple[str, datetime | None]]:
    """The times other components wrote that ``clock_check`` compares with this machine's: each proxy's
    xDS stream start (istiod's clock) and each held certificate's validFrom (the CA's)."""
    stamps: list[tuple[str, datetime | None]] = [
        (f"the start of {r.name}'s xDS stream", _time(r.connected_since)) for r in facts.rows
    ]
    for n, held in facts.dumps.items():
        for entry in held.get("certificates") or () if isinstance(held, Mapping) else ():
            for cert in (entry.get("certChain") or ())[:1] if isinstance(entry, Mapping) else ():
                if isinstance(cert, Mapping):
                    stamps.append((f"the certificate of {entry.get('identity')} on {n} (valid from)",
                                   _time(cert.get("validFrom"))))  # fmt: skip
    return stamps


def _trust_domain(facts: MeshFacts) -> str:
    for dump in facts.dumps.values():
        if isinstance(dump, Mapping):
            for w in dump.get("workloads") or ():
                if isinstance(w, Mapping) and w.get("trustDomain"):
                    return str(w["trustDomain"])
    return "cluster.local"


def _root_pem(cluster: Cluster, facts: MeshFacts) -> bytes | str | None:
    """The root the nodes were given (``nodes/<node>/credential/root-cert.pem``), as a pod would see it."""
    for n in facts.nodes:
        path = cluster.nodes_dir / n / "credential" / "root-cert.pem"
        try:
            return path.read_bytes()
        except OSError:
            continue
    return f"no node credential holds root-cert.pem under {cluster.nodes_dir}"


def _agent_node(process: str, nodes: Sequence[str]) -> str:
    """The node whose agent ``process`` is ("" for any other process)."""
    return next((n for n in nodes if agent_name(n) == process), "")


def _settled_rows(reach: Reach) -> list[ProxyRow] | str:
    """Sync rows; a response in flight (STALE) gets up to ``SYNC_SETTLE_S`` to be answered."""
    deadline = time.monotonic() + SYNC_SETTLE_S
    while True:
        try:
            rows = proxy_rows(reach.istiod("/debug/syncz"), "istiod-lite")
        except (ReachError, ValueError) as e:
            return str(e)
        if all(r.synced or r.nacks for r in rows) or time.monotonic() >= deadline:
            return rows
        time.sleep(0.1)


# --- on Kubernetes -------------------------------------------------------------------------------------------

KUBE_LOGS_HINT = "(with the same --kubeconfig/--context)"


def kube_ztunnel_logs(node: str) -> str:
    return f"ambientctl logs --component ztunnel --node {node} {KUBE_LOGS_HINT}"


def pod_ready(pod: Mapping[str, Any]) -> str | None:
    """None when the pod is Running with condition Ready True, else what its status shows (phase, a
    container's waiting or terminated reason)."""
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or () if isinstance(c, Mapping))  # fmt: skip
    if phase == "Running" and ready:
        return None
    reasons = []
    for c in status.get("containerStatuses") or ():
        state = (c.get("state") or {}) if isinstance(c, Mapping) else {}
        for kind in ("waiting", "terminated"):
            if isinstance(state.get(kind), Mapping):
                reasons.append(f"{c.get('name')}: {state[kind].get('reason') or kind}")
    return f"phase {phase}" + ("" if phase != "Running" else ", not Ready") + (f" ({'; '.join(reasons)})" if reasons else "")


def kube_pod_check(category: Category, what: str, pod: Mapping[str, Any], probe: str | None,
                   logs: str) -> CheckResult:  # fmt: skip
    """A mesh pod on Kubernetes: Ready as the kubelet reports it, and its own readiness endpoint answered
    200 through the port-forward (``probe`` None), else what was seen and where to look."""
    meta = pod.get("metadata") or {}
    ref = f"{meta.get('namespace')}/{meta.get('name')}"
    describe = f"kubectl -n {meta.get('namespace')} describe pod {meta.get('name')}"
    not_ready = pod_ready(pod)
    if not_ready is not None:
        return failed(category, what, f"pod {ref}: {not_ready}", f"see its events: {describe}; its log: {logs}")
    if probe is not None:
        return failed(category, what, probe, f"read why: {logs}")
    return passed(category, what, f"pod {ref}")


def kube_install_check(istiods: Sequence[Mapping[str, Any]], ztunnels: Sequence[Mapping[str, Any]]) -> CheckResult:
    c, what = Category.kubernetes, "the mesh is installed (istiod and ztunnel pods in istio-system)"
    missing = [name for name, found in (("istiod (app=istiod)", istiods), ("ztunnel (app=ztunnel)", ztunnels))
               if not found]  # fmt: skip
    if missing:
        return failed(c, what, f"no {' and no '.join(missing)} pod in istio-system",
                      "install the mesh: ambientctl install (with the same --kubeconfig/--context)")  # fmt: skip
    return passed(c, what, f"{len(istiods)} istiod, {len(ztunnels)} ztunnel pod(s)")


def root_from_dumps(dumps: Mapping[str, Mapping[str, Any] | str]) -> bytes | None:
    """The CA root a ztunnel holds (the first ``rootCerts`` PEM of its certificates), or None."""
    import base64
    import binascii

    for dump in dumps.values():
        if not isinstance(dump, Mapping):
            continue
        for entry in dump.get("certificates") or ():
            roots = entry.get("rootCerts") if isinstance(entry, Mapping) else None
            for root in roots or ():
                if isinstance(root, Mapping) and root.get("pem"):
                    try:
                        return base64.b64decode(str(root["pem"]), validate=True)
                    except (binascii.Error, ValueError):
                        continue
    return None


def kube_root_check(dumps: Mapping[str, Mapping[str, Any] | str], now: datetime) -> CheckResult:
    pem = root_from_dumps(dumps)
    if pem is None:
        return warned(Category.ca, "the CA root certificate is valid",
                      "no ztunnel holds a workload certificate yet, so the root could not be read through one",
                      "enroll a namespace (ambientctl namespace enable NS), or read it: kubectl -n istio-system "
                      "get configmap istio-ca-root-cert -o jsonpath='{.data.root-cert\\.pem}'")  # fmt: skip
    return root_check(pem, now)


def kube_rows(reach: KubeReach) -> tuple[list[ProxyRow], list[str]]:
    """Sync rows from every istiod replica (each proxy is connected to one), each row naming its replica;
    and the replicas that could not be read, with why. A ``ReachError`` when no replica answered."""
    from .remote import ISTIO_SYSTEM, ISTIOD_LABEL, labelled

    rows: list[ProxyRow] = []
    problems: list[str] = []
    replicas = [p for p in labelled(reach.pods(), ISTIOD_LABEL) if (p.get("status") or {}).get("phase") == "Running"]
    for pod in replicas:
        name = str((pod.get("metadata") or {}).get("name"))
        try:
            answer = reach.get_pod(ISTIO_SYSTEM, name, ISTIOD_MONITORING, "/debug/syncz", label=f"istiod {name}")
            if answer.status != 200:
                raise ReachError(f"istiod {name} :{ISTIOD_MONITORING}/debug/syncz answered HTTP {answer.status}")
            rows += proxy_rows(_json(answer.body), f"istiod-lite@{name}")
        except (ReachError, ValueError) as e:
            problems.append(str(e))
    if not replicas:
        raise ReachError("no Running istiod pod (app=istiod) in istio-system")
    if problems and not rows and len(problems) == len(replicas):
        raise ReachError("; ".join(problems))
    return sorted(rows, key=lambda r: (r.name, r.node_id)), problems


def _json(body: bytes) -> Any:
    import json

    return json.loads(body)


def _settled_kube_rows(reach: KubeReach) -> tuple[list[ProxyRow], list[str]] | str:
    deadline = time.monotonic() + SYNC_SETTLE_S
    while True:
        try:
            rows, problems = kube_rows(reach)
        except ReachError as e:
            return str(e)
        if all(r.synced or r.nacks for r in rows) or time.monotonic() >= deadline:
            return rows, problems
        time.sleep(0.1)


def gather_kubernetes(reach: KubeReach, *, now: Callable[[], datetime] | None = None
                      ) -> tuple[list[CheckResult], MeshFacts]:  # fmt: skip
    """The Kubernetes subset of the mesh checks (module docstring), through ``reach``."""
    from .remote import ISTIO_SYSTEM, ISTIOD_LABEL, ZTUNNEL_LABEL, labelled

    clock = now or (lambda: datetime.now(UTC))
    facts = MeshFacts()
    results = [skipped(Category.host, "this machine can host the mesh (root, network namespaces, ip, nft)",
                       "with --kubeconfig/--context the mesh runs on the cluster's nodes, not here; the node "
                       "agent DaemonSet's pods bring what a node needs")]  # fmt: skip
    try:
        pods = reach.pods()
    except ReachError as e:
        results.append(failed(Category.kubernetes, "the pods in istio-system can be listed", str(e),
                              "check the kubeconfig and context, and that the user may get and list pods in "
                              "istio-system (docs/kubernetes.md)"))  # fmt: skip
        return results, facts
    istiods, ztunnels = labelled(pods, ISTIOD_LABEL), labelled(pods, ZTUNNEL_LABEL)
    results.append(kube_install_check(istiods, ztunnels))

    def probe(pod: Mapping[str, Any], port: int, path: str) -> str | None:
        name = str((pod.get("metadata") or {}).get("name"))
        try:
            answer = reach.get_pod(ISTIO_SYSTEM, name, port, path)
        except ReachError as e:
            return str(e)
        return None if answer.status == 200 else f"pod {name} :{port}{path} answered {answer.status}: {answer.text.strip()[:200]}"

    def dump(pod: Mapping[str, Any]) -> Mapping[str, Any] | str:
        name = str((pod.get("metadata") or {}).get("name"))
        try:
            answer = reach.get_pod(ISTIO_SYSTEM, name, ZTUNNEL_ADMIN, "/config_dump")
            if answer.status != 200:
                return f"pod {name} :{ZTUNNEL_ADMIN}/config_dump answered {answer.status}"
            got = _json(answer.body)
        except (ReachError, ValueError) as e:
            return str(e)
        return got if isinstance(got, Mapping) else f"pod {name}: /config_dump is not a JSON object"

    by_node = {str((p.get("spec") or {}).get("nodeName")): p for p in reversed(ztunnels)}  # Running ones win
    facts.nodes = sorted(by_node)
    cp, dp = Category.control_plane, Category.data_plane
    with ThreadPoolExecutor(max_workers=4) as pool:
        istiod_ready = [pool.submit(probe, p, ISTIOD_MONITORING, "/ready") for p in istiods]
        registry = pool.submit(_json_or_reason, lambda: reach.istiod("/debug/registryz")) if istiods else None
        ztunnel_ready = {n: pool.submit(probe, p, ZTUNNEL_READINESS, "/healthz/ready") for n, p in by_node.items()}
        dumps = {n: pool.submit(dump, p) for n, p in by_node.items()}
        for pod, ready in zip(istiods, istiod_ready, strict=True):
            name = (pod.get("metadata") or {}).get("name")
            results.append(kube_pod_check(cp, f"istiod-lite {name} is ready", pod, ready.result(),
                                          f"ambientctl logs --component istiod {KUBE_LOGS_HINT}"))  # fmt: skip
        if registry is not None:
            results.append(registry_check(registry.result()))
        facts.dumps = {n: f.result() for n, f in dumps.items()}
        results.append(kube_root_check(facts.dumps, clock()))
        for n in facts.nodes:
            results.append(kube_pod_check(dp, f"ztunnel on {n} is ready", by_node[n], ztunnel_ready[n].result(),
                                          kube_ztunnel_logs(n)))  # fmt: skip
    results.append(skipped(Category.redirection, "every enrolled pod's traffic is redirected to ztunnel",
                           "the node agents' rule-by-rule view is read on the local cluster only, not yet "
                           "through the API server"))  # fmt: skip

    settled = _settled_kube_rows(reach) if istiods else "no istiod pod to ask"
    if isinstance(settled, str):
        results.append(failed(Category.sync, "istiod-lite reports its proxies' sync state", settled,
                              f"read why: ambientctl logs --component istiod {KUBE_LOGS_HINT}"))  # fmt: skip
    else:
        facts.rows, problems = settled
        for problem in problems:
            results.append(failed(Category.sync, "every istiod replica reports its proxies' sync state", problem,
                                  f"read why: ambientctl logs --component istiod {KUBE_LOGS_HINT}"))  # fmt: skip
        results += sync_checks(facts.rows, facts.nodes, kube_ztunnel_logs)

    results.append(skipped(Category.certificates, "every ztunnel holds a valid certificate for each local identity",
                           "needs every namespace's enrolled pods and their nodes, which the local cluster's "
                           "store gives; per node: ambientctl zc certificates --node NODE"))  # fmt: skip
    stamps = clock_stamps(facts)
    results.append(clock_check(clock(), stamps))
    return results, facts
